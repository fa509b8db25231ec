"""Envoy's jwt_authn and TLS in front of a real grpc.aio server: edge refusals and the way in."""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from services.auth.identity import Role, TokenVerifier
from services.auth.keys import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DevKeys,
    ensure_dev_keys,
    load_jwks,
    mint_token,
)
from services.ops.mesh.envoy_config import EnvoyJwt, EnvoyTls
from services.ops.mesh.envoy_proxy import EnvoyProxy
from tests.certs import ServerCert, make_server_cert
from tests.integration.auth_servers import WATCH_STEPS, start_echo_server

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Edge:
    """Envoy with jwt_authn and TLS in front of the echo server, and what clients need."""

    keys: DevKeys
    address: str
    cert: ServerCert
    url: str


@pytest.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    root = tmp_path_factory.mktemp("edge")
    keys = ensure_dev_keys(root / "keys")
    cert = make_server_cert(root / "tls")
    verifier = TokenVerifier(load_jwks(keys.jwks_path), issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    server, port = await start_echo_server(verifier)
    proxy = EnvoyProxy(
        root / "envoy",
        upstreams={"location": [port]},
        jwt=EnvoyJwt(DEV_ISSUER, [DEV_AUDIENCE], keys.jwks_path.read_text()),
        tls=EnvoyTls(cert.cert_path, cert.key_path),
    )
    # Off the loop: Envoy's first health checks need this loop's server to answer.
    await asyncio.to_thread(proxy.start)
    try:
        yield Edge(keys, proxy.address, cert, proxy.url)
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)


@pytest.fixture
async def channel(edge: Edge) -> AsyncIterator[aio.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=edge.cert.ca_pem)
    async with aio.secure_channel(edge.address, credentials) as channel:
        yield channel


def _bearer(
    keys: DevKeys, sub: str, *, audience: str = DEV_AUDIENCE, now: float | None = None
) -> tuple[tuple[str, str], ...]:
    token = mint_token(
        keys.private_pem(), keys.kid, sub=sub, role=Role.RIDER, ttl_s=60, audience=audience, now=now
    )
    return (("authorization", f"Bearer {token}"),)


async def _refusal(
    channel: aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
) -> str:
    stub = pb_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="d"), metadata=metadata)
    # Envoy answers a refused gRPC call with its HTTP status mapped: 401 to 16, 403 to 7.
    assert caught.value.code() == code
    return caught.value.details() or ""


async def test_no_token_is_refused_at_the_edge(channel: aio.Channel) -> None:
    # Envoy's own wording: the request never reached the service's interceptor.
    assert "Jwt is missing" in await _refusal(channel, ())


async def test_expired_token_is_refused_at_the_edge(channel: aio.Channel, edge: Edge) -> None:
    details = await _refusal(channel, _bearer(edge.keys, "r", now=time.time() - 3600))
    assert "Jwt is expired" in details


async def test_other_audience_is_forbidden_at_the_edge(channel: aio.Channel, edge: Edge) -> None:
    # Envoy's jwt_authn answers a good token for another audience with 403, not 401: the
    # caller is known but the token is not for us. The service's own check says UNAUTHENTICATED.
    metadata = _bearer(edge.keys, "r", audience="payments")
    details = await _refusal(channel, metadata, grpc.StatusCode.PERMISSION_DENIED)
    assert "Audiences in Jwt are not allowed" in details


async def test_alg_none_is_refused_at_the_edge(channel: aio.Channel, edge: Edge) -> None:
    expires = int(time.time()) + 60
    claims = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "r", "role": "ops", "exp": expires}
    token = jwt.encode(claims, "", algorithm="none", headers={"kid": edge.keys.kid})
    details = await _refusal(channel, (("authorization", f"Bearer {token}"),))
    assert "Jwt" in details


async def test_forged_token_is_refused_at_the_edge(
    channel: aio.Channel, edge: Edge, tmp_path: Path
) -> None:
    forger = ensure_dev_keys(tmp_path / "forger")
    token = mint_token(forger.private_pem(), edge.keys.kid, sub="r", role=Role.OPS, ttl_s=60)
    details = await _refusal(channel, (("authorization", f"Bearer {token}"),))
    assert "Jwt verification fails" in details


async def test_valid_token_reaches_the_service_over_tls(channel: aio.Channel, edge: Edge) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    response = await stub.GetDriverLocation(
        pb.GetDriverLocationRequest(driver_id="d"), metadata=_bearer(edge.keys, "rider-5")
    )
    # The service verified the forwarded token again and saw the same caller.
    assert response.location.driver_id == "rider-5"


async def test_server_stream_through_the_edge(channel: aio.Channel, edge: Edge) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    call = stub.WatchDriver(pb.WatchDriverRequest(), metadata=_bearer(edge.keys, "rider-6"))
    assert [r.location.driver_id async for r in call] == ["rider-6"] * WATCH_STEPS


async def test_health_is_open_without_a_token(channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_cannot_talk_to_the_tls_listener(edge: Edge) -> None:
    async with aio.insecure_channel(edge.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _client(edge: Edge) -> httpx.AsyncClient:
    context = ssl.create_default_context(cadata=edge.cert.ca_pem.decode())
    return httpx.AsyncClient(base_url=edge.url, verify=context, timeout=5)


async def test_grpc_web_without_token_is_refused(edge: Edge) -> None:
    frame = struct.pack(">BI", 0, 0)  # one empty message: flag byte, then 4-byte length
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    async with _client(edge) as client:
        response = await client.post(
            "/ridemesh.v1.LocationService/GetDriverLocation", content=frame, headers=headers
        )
    assert response.headers.get("grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


async def test_cors_preflight_needs_no_token(edge: Edge) -> None:
    headers = {
        "origin": "http://localhost:5173",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web",
    }
    async with _client(edge) as client:
        response = await client.options("/ridemesh.v1.LocationService/WatchDriver", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
