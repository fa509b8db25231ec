"""The live map's static upstream behind a real Envoy with tokens on: the page and its files are
public GETs, config.json hands out a working ops token outside production, and every gRPC path
still needs a token."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from services.auth.identity import Role, TokenVerifier
from services.auth.keys import DEV_AUDIENCE, DEV_ISSUER, DevKeys, ensure_dev_keys, load_jwks
from services.ops.mesh.envoy_config import EnvoyJwt
from services.ops.mesh.envoy_proxy import EnvoyProxy
from services.ops.mesh.ports import free_port
from services.ops.webapp import PageConfig, make_server
from tests.integration.auth_servers import start_echo_server

pytestmark = pytest.mark.integration

INDEX = b"<!doctype html><title>live map</title><script src=app.js></script>"
APP_JS = b"console.log('ridemesh');"


@dataclass(frozen=True)
class Site:
    keys: DevKeys
    verifier: TokenVerifier
    url: str  # Envoy
    address: str  # Envoy, for gRPC


@contextmanager
def serving(dist: Path, page: PageConfig) -> Iterator[int]:
    """The static upstream on a free loopback port, in a thread, for the block's duration."""
    port = free_port()
    server: ThreadingHTTPServer = make_server("127.0.0.1", port, dist, page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    root = tmp_path_factory.mktemp("web")
    keys = ensure_dev_keys(root / "keys")
    dist = root / "dist"
    dist.mkdir()
    (dist / "index.html").write_bytes(INDEX)
    (dist / "app.js").write_bytes(APP_JS)
    verifier = TokenVerifier(load_jwks(keys.jwks_path), issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    server, grpc_port = await start_echo_server(verifier)
    with serving(
        dist, PageConfig(keys_dir=keys.directory, tile_url="https://t/{z}/{x}/{y}.png")
    ) as web_port:
        proxy = EnvoyProxy(
            root / "envoy",
            upstreams={"location": [grpc_port]},
            jwt=EnvoyJwt(DEV_ISSUER, [DEV_AUDIENCE], keys.jwks_path.read_text()),
            web_port=web_port,
        )
        await asyncio.to_thread(proxy.start)
        try:
            yield Site(keys, verifier, proxy.url, proxy.address)
        finally:
            await asyncio.to_thread(proxy.stop)
            await server.stop(None)


async def test_the_page_and_its_files_load_through_envoy_without_a_token(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.url) as http:
        page = await http.get("/")
        script = await http.get("/app.js")
        head = await http.head("/index.html")
        missing = await http.get("/no-such-file.js")
    assert page.status_code == 200
    assert page.content == INDEX
    assert page.headers["cache-control"] == "no-store"
    assert script.status_code == 200
    assert script.content == APP_JS
    assert head.status_code == 200
    assert missing.status_code == 404


async def test_config_hands_the_page_a_working_ops_token_and_the_tile_url(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.url) as http:
        config = (await http.get("/config.json")).json()
    assert config["production"] is False
    assert config["tileUrl"] == "https://t/{z}/{x}/{y}.png"
    assert config["apiUrl"] is None
    identity = site.verifier.verify(config["token"])
    assert identity.role is Role.OPS
    # The token works for a gRPC call through the same Envoy.
    async with aio.insecure_channel(site.address) as channel:
        stub = pb_grpc.LocationServiceStub(channel)
        reply = await stub.GetDriverLocation(
            pb.GetDriverLocationRequest(driver_id="d"),
            metadata=(("authorization", f"Bearer {config['token']}"),),
        )
    assert reply.location.driver_id == identity.sub


async def test_grpc_paths_and_other_methods_still_need_a_token(site: Site) -> None:
    async with aio.insecure_channel(site.address) as channel:
        stub = pb_grpc.LocationServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="d"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with httpx.AsyncClient(base_url=site.url) as http:
        # A GET on a gRPC path is not a way round the token; nor is a POST to the page.
        grpc_get = await http.get("/ridemesh.v1.LocationService/GetDriverLocation")
        post = await http.post("/", content=b"x")
    assert grpc_get.status_code == 401
    assert post.status_code == 401


async def test_a_path_outside_the_page_directory_is_not_served(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.url) as http:
        escaped = await http.get("/..%2f..%2fkeys/dev-private.pem")
        dotted = await http.get("/../keys/dev-private.pem")
    assert escaped.status_code in (400, 404)
    assert dotted.status_code in (400, 404)
    assert b"PRIVATE KEY" not in escaped.content + dotted.content


def test_an_unbuilt_page_says_how_to_build_it_and_production_hands_out_no_token(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "dist"
    empty.mkdir()
    with serving(empty, PageConfig(keys_dir=None)) as port:
        page = httpx.get(f"http://127.0.0.1:{port}/")
        config = httpx.get(f"http://127.0.0.1:{port}/config.json").json()
        health = httpx.get(f"http://127.0.0.1:{port}/healthz")
    assert page.status_code == 200
    assert b"make web" in page.content
    assert config["token"] is None
    assert config["production"] is True
    assert health.status_code == 200
