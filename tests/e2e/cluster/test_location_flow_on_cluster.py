"""tests/e2e/test_location_flow.py on the Redis Cluster and read-replica mesh
(conftest.py here)."""

from tests.e2e.test_location_flow import *  # noqa: F403  (the same tests, this directory's mesh)
