"""Authentication switched on across the mesh: Envoy refuses callers without a valid token, and
so does every replica reached directly (defence in depth)."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys, ensure_dev_keys, mint_token
from services.ops.mesh.supervisor import Mesh
from tests.e2e.clients import new_driver_id
from tests.tokens import bearer

pytestmark = pytest.mark.e2e

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def _get_location(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """The status of one GetDriverLocation call on a plain channel (no token unless given)."""
    async with aio.insecure_channel(target) as channel:
        stub = location_grpc.LocationServiceStub(channel)
        request = pb.GetDriverLocationRequest(driver_id=new_driver_id("auth"))
        try:
            await stub.GetDriverLocation(request, metadata=metadata, timeout=10)
        except aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _forged(keys: DevKeys, directory: Path) -> str:
    """A well-formed token naming the mesh's key id, signed with someone else's key."""
    forger = ensure_dev_keys(directory)
    return mint_token(forger.private_pem(), keys.kid, sub="ops-1", role=Role.OPS, ttl_s=600)


async def test_no_token_is_refused_at_envoy(envoy_address: str) -> None:
    assert await _get_location(envoy_address) == UNAUTHENTICATED


async def test_expired_token_is_refused_at_envoy(envoy_address: str, keys: DevKeys) -> None:
    expired = mint_token(
        keys.private_pem(), keys.kid, sub="ops-1", role=Role.OPS, ttl_s=60, now=time.time() - 3600
    )
    assert await _get_location(envoy_address, bearer(expired)) == UNAUTHENTICATED


async def test_a_valid_token_passes_envoy_and_the_service(
    envoy_address: str, token: Callable[..., str]
) -> None:
    # Nobody has sent a fix for this driver: NOT_FOUND comes from the service, past both checks.
    status = await _get_location(envoy_address, bearer(token("ops-1", Role.OPS)))
    assert status == grpc.StatusCode.NOT_FOUND


async def test_grpc_web_without_token_is_refused(envoy_address: str) -> None:
    frame = struct.pack(">BI", 0, 0)  # one empty message: flag byte, then 4-byte length
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    url = f"http://{envoy_address}/ridemesh.v1.LocationService/GetDriverLocation"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, content=frame, headers=headers)
    assert response.headers.get("grpc-status") == str(UNAUTHENTICATED.value[0])


async def _raw_call(target: str, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """The status name of one unary call with an empty request (the token is checked first)."""
    async with aio.insecure_channel(target) as channel:
        try:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            await call(b"", metadata=metadata, timeout=10)
        except aio.AioRpcError as error:
            return error.code().name
    return "OK"


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("location", "/ridemesh.v1.LocationService/GetDriverLocation"),
        ("ride", "/ridemesh.v1.RideService/GetRide"),
        ("geo", "/ridemesh.v1.GeoQueryService/SearchNearbyDrivers"),
    ],
)
async def test_a_replica_reached_directly_refuses_a_missing_or_forged_token(
    mesh: Mesh, keys: DevKeys, tmp_path: Path, service: str, method: str
) -> None:
    target = f"127.0.0.1:{mesh.services[service][0]}"
    assert await _raw_call(target, method) == "UNAUTHENTICATED"
    forged = bearer(_forged(keys, tmp_path))
    assert await _raw_call(target, method, forged) == "UNAUTHENTICATED"


async def test_health_needs_no_token_at_envoy_or_a_replica(mesh: Mesh, envoy_address: str) -> None:
    for target in (envoy_address, f"127.0.0.1:{mesh.services['ride'][0]}"):
        async with aio.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_ridemesh_token_command_mints_a_token_envoy_accepts(
    envoy_address: str, keys: DevKeys
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ops.cli", "token", "--sub", "ops-1", "--role", "ops",
        "--keys-dir", str(keys.directory),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    status = await _get_location(envoy_address, bearer(out.decode().strip()))
    assert status == grpc.StatusCode.NOT_FOUND
