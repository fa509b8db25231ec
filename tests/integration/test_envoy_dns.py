"""A deployment-shaped Envoy (STRICT_DNS upstreams, the Prometheus stats listener) on loopback:
`localhost` stands in for a headless Service."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.ops.mesh.envoy_proxy import EnvoyProxy
from services.ops.mesh.ports import free_port, http_get

pytestmark = pytest.mark.integration


@pytest.fixture
def health_server() -> Iterator[int]:
    """A bare grpc.health.v1 server saying SERVING on a loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    # Envoy's resolver gives `localhost` as ::1 first (AUTO: IPv6, then IPv4): listen on both.
    server.add_insecure_port(f"[::1]:{port}")
    server.start()
    yield port
    server.stop(None)


def test_a_dns_cluster_reaches_its_replicas_and_stats_are_scraped(
    tmp_path: Path, health_server: int
) -> None:
    # A deployment's config shape, on loopback: `localhost` stands in for a headless Service.
    proxy = EnvoyProxy(tmp_path, upstreams={"location": [health_server]}, rate_limit=None)
    stats_port = free_port()
    proxy.config = dataclasses.replace(
        proxy.config, upstream_dns={"location": "localhost"}, stats_port=stats_port
    )
    with proxy:
        with grpc.insecure_channel(proxy.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        status, body = http_get(stats_port, "/stats/prometheus")
        assert status == 200
        assert b"envoy_cluster_upstream_rq_total" in body
        # Nothing else of the admin is reachable there.
        assert http_get(stats_port, "/clusters")[0] == 404
