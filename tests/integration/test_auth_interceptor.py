"""AuthInterceptor on a real grpc.aio server: every RPC kind needs a token, health does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from services.auth.identity import Role, TokenVerifier
from services.auth.keys import DevKeys, ensure_dev_keys, load_jwks, mint_token
from tests.integration.auth_servers import WATCH_STEPS, WHOAMI, start_echo_server

pytestmark = pytest.mark.integration

ISSUER = "ridemesh-test"
AUDIENCE = "ridemesh"


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    return ensure_dev_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
async def address(dev_keys: DevKeys) -> AsyncIterator[str]:
    verifier = TokenVerifier(load_jwks(dev_keys.jwks_path), issuer=ISSUER, audience=AUDIENCE)
    server, port = await start_echo_server(verifier)
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def channel(address: str) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(address) as channel:
        yield channel


def _token(dev_keys: DevKeys, sub: str = "driver-7", role: Role = Role.DRIVER, **kw: str) -> str:
    return mint_token(
        dev_keys.private_pem(),
        dev_keys.kid,
        sub=sub,
        role=role,
        ttl_s=60,
        issuer=kw.get("issuer", ISSUER),
        audience=kw.get("audience", AUDIENCE),
    )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _expired(dev_keys: DevKeys) -> str:
    old = time.time() - 3600
    return mint_token(
        dev_keys.private_pem(),
        dev_keys.kid,
        sub="d",
        role=Role.DRIVER,
        ttl_s=60,
        issuer=ISSUER,
        audience=AUDIENCE,
        now=old,
    )


def _forged(dev_keys: DevKeys) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "d", "role": "ops", "exp": time.time() + 60}
    forger = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, forger, algorithm="ES256", headers={"kid": dev_keys.kid})


def _alg_none(dev_keys: DevKeys) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "d", "role": "ops", "exp": time.time() + 60}
    return jwt.encode(claims, "", algorithm="none", headers={"kid": dev_keys.kid})


async def test_no_token_is_unauthenticated(channel: aio.Channel) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="d"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_expired, "token expired"),
        (_forged, "signature does not verify"),
        (lambda k: _token(k, audience="payments"), "wrong audience"),
        (lambda k: _token(k, issuer="elsewhere"), "wrong issuer"),
        (_alg_none, "'none' is not accepted"),
    ],
    ids=["expired", "forged", "other-audience", "other-issuer", "alg-none"],
)
async def test_bad_tokens_are_unauthenticated(
    channel: aio.Channel, dev_keys: DevKeys, make: object, message: str
) -> None:
    assert callable(make)
    stub = pb_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetDriverLocation(
            pb.GetDriverLocationRequest(driver_id="d"), metadata=_bearer(make(dev_keys))
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in (caught.value.details() or "")


async def test_non_bearer_authorization_is_unauthenticated(channel: aio.Channel) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetDriverLocation(
            pb.GetDriverLocationRequest(), metadata=(("authorization", "Basic dTpw"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")


async def test_unary_handler_sees_the_caller(channel: aio.Channel, dev_keys: DevKeys) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    response = await stub.GetDriverLocation(
        pb.GetDriverLocationRequest(driver_id="x"), metadata=_bearer(_token(dev_keys, "rider-3"))
    )
    assert response.location.driver_id == "rider-3"


async def test_server_stream_sees_its_own_caller_at_every_step(
    channel: aio.Channel, dev_keys: DevKeys
) -> None:
    stub = pb_grpc.LocationServiceStub(channel)

    async def watch(sub: str) -> list[str]:
        call = stub.WatchDriver(pb.WatchDriverRequest(), metadata=_bearer(_token(dev_keys, sub)))
        return [r.location.driver_id async for r in call]

    # Concurrent streams interleave on one loop; none may see another's caller.
    subs = [f"rider-{i}" for i in range(5)]
    results = await asyncio.gather(*(watch(s) for s in subs))
    assert results == [[s] * WATCH_STEPS for s in subs]


async def test_server_stream_without_token_is_refused(channel: aio.Channel) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.WatchDriver(pb.WatchDriverRequest()):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bidi_stream_sees_the_caller(channel: aio.Channel, dev_keys: DevKeys) -> None:
    stub = pb_grpc.LocationServiceStub(channel)

    async def fixes() -> AsyncIterator[pb.StreamLocationsRequest]:
        for seq in (1, 2):
            yield pb.StreamLocationsRequest(update=pb.LocationUpdate(seq=seq))

    call = stub.StreamLocations(fixes(), metadata=_bearer(_token(dev_keys, "driver-9")))
    answers = [(r.rejected.seq, r.rejected.driver_id) async for r in call]
    assert answers == [(1, "driver-9"), (2, "driver-9")]


async def test_bidi_stream_without_token_is_refused(channel: aio.Channel) -> None:
    stub = pb_grpc.LocationServiceStub(channel)
    call = stub.StreamLocations(iter([pb.StreamLocationsRequest()]))
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_client_stream_sees_the_caller(channel: aio.Channel, dev_keys: DevKeys) -> None:
    call = channel.stream_unary(f"/{WHOAMI}/ClientStream", None, None)
    answer = await call(iter([b"a", b"b", b"c"]), metadata=_bearer(_token(dev_keys, "svc-1")))
    assert answer == b"svc-1:3"


async def test_client_stream_without_token_is_refused(channel: aio.Channel) -> None:
    call = channel.stream_unary(f"/{WHOAMI}/ClientStream", None, None)
    with pytest.raises(aio.AioRpcError) as caught:
        await call(iter([b"a"]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_stream_written_with_context_write_sees_the_caller(dev_keys: DevKeys) -> None:
    # Alone: DomainErrorInterceptor only wraps async-generator streaming handlers today.
    verifier = TokenVerifier(load_jwks(dev_keys.jwks_path), issuer=ISSUER, audience=AUDIENCE)
    server, port = await start_echo_server(verifier, domain_errors=False)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(f"/{WHOAMI}/Written", None, None)
            token = _token(dev_keys, "ops-1", Role.OPS)
            assert [m async for m in call(b"", metadata=_bearer(token))] == [b"ops", b"ops"]
            with pytest.raises(aio.AioRpcError) as caught:
                async for _ in call(b""):
                    pass
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)


async def test_health_is_open_without_a_token(channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_method_stays_unimplemented(channel: aio.Channel, dev_keys: DevKeys) -> None:
    call = channel.unary_unary("/ridemesh.test.Nope/Nothing", None, None)
    with pytest.raises(aio.AioRpcError) as caught:
        await call(b"", metadata=_bearer(_token(dev_keys)))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_keys_dir_fixture_is_private(dev_keys: DevKeys) -> None:
    assert Path(dev_keys.private_path).stat().st_mode & 0o077 == 0
