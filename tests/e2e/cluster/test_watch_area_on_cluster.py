"""tests/e2e/test_watch_area.py on the Redis Cluster and read-replica mesh
(conftest.py here)."""

from tests.e2e.test_watch_area import *  # noqa: F403  (the same tests, this directory's mesh)
