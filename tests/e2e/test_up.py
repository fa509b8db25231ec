"""`ridemesh up`, the main command, as a user runs it: the banner, the live map through Envoy, a
simulated city moving with its demo zones, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.ops.cli import _parser
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from services.ops.simulator.zones import DEMO_ZONES

pytestmark = pytest.mark.e2e

REDIS_DB = 13  # its own Redis database: no other test's drivers
BENGALURU_BOX = BoundingBox(
    south_west=LatLng(latitude=12.90, longitude=77.52),
    north_east=LatLng(latitude=13.05, longitude=77.67),
)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    """`ridemesh up` with its output piped; RIDEMESH_DEMO unset, so the demo's default holds."""
    env = {k: v for k, v in os.environ.items() if k != "RIDEMESH_DEMO"}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


async def _banner(process: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """The lines `ridemesh up` prints up to "Ctrl-C stops everything."."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout_s):
        while True:
            line = await asyncio.to_thread(process.stdout.readline)
            assert line, f"ridemesh up exited early: {''.join(lines)}"
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C stops everything."):
                return lines


async def _area_drivers(address: str, token: str, want: int) -> set[str]:
    """Driver ids WatchArea shows over Bengaluru, until `want` of them (or the caller's timeout)."""
    seen: set[str] = set()
    async with aio.insecure_channel(address) as channel:
        stub = location_grpc.LocationServiceStub(channel)
        call = stub.WatchArea(
            pb.WatchAreaRequest(bounds=BENGALURU_BOX),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        async for response in call:
            seen.add(response.location.driver_id)
            if len(seen) >= want:
                call.cancel()
                break
    return seen


async def test_up_serves_the_live_map_and_a_simulated_city_then_stops_cleanly(
    tmp_path: Path, redis_server: RedisServer, make_database: Callable[[], str]
) -> None:
    database_url = await asyncio.to_thread(make_database)
    port, admin = free_port(), free_port()
    argv = [
        sys.executable, "-m", "services.ops.cli", "up", "--port", str(port),
        "--admin-port", str(admin), "--data-dir", str(tmp_path / "data"),
        "--redis-url", f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        "--database-url", database_url, "--demo-drivers", "12", "--demo-ride-rate", "30",
    ]  # fmt: skip
    process = _start(argv)
    try:
        banner = await _banner(process, 90)
        page_line = next(line for line in banner if "live map" in line)
        assert f"http://127.0.0.1:{port}/" in page_line
        assert any("simulated city" in line and "12 drivers" in line for line in banner)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            page = await http.get("/")
            config = (await http.get("/config.json")).json()
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        token = config["token"]
        assert token

        async with asyncio.timeout(60):
            drivers = await _area_drivers(f"127.0.0.1:{port}", token, want=12)
        assert all(driver.startswith("sim-") for driver in drivers)

        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            zones = await geo_grpc.GeoQueryServiceStub(channel).ListGeofences(
                geo_pb.ListGeofencesRequest(filter="source=simulator"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        assert sorted(z.display_name for z in zones.geofences) == sorted(d.name for d in DEMO_ZONES)

        # `ridemesh status` sees every replica serving, the drivers' streams and their fixes.
        status = await _status(tmp_path / "data")
        assert status.returncode == 0, status.stdout
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines() if line}
        for service in ("location", "ride", "geo"):
            assert rows[service][2] == "SERVING", status.stdout
        assert int(rows["location"][3]) == 12, status.stdout  # open streams
        assert float(rows["location"][4]) > 0, status.stdout  # fixes/s
        assert "Envoy routes to (healthy/all): geo 1/1, location 1/1, ride 1/1, web 1/1" in (
            status.stdout
        )
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, rest
    assert "ridemesh: stopped" in rest
    simulator_log = (tmp_path / "data" / "logs" / "simulator.log").read_text()
    assert "simulation stopped" in simulator_log
    stopped = await _status(tmp_path / "data")
    assert stopped.returncode == 2
    assert "no running mesh" in stopped.stderr


async def _status(data_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.ops.cli", "status", "--data-dir", str(data_dir)]
    return await asyncio.to_thread(
        subprocess.run, [*argv, "--window", "3"], capture_output=True, text=True, timeout=60
    )


def test_the_demo_is_on_by_default_and_off_by_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RIDEMESH_DEMO", raising=False)
    assert _parser().parse_args(["up"]).demo is True
    assert _parser().parse_args(["up", "--no-demo"]).demo is False
    for off in ("0", "false", "no"):
        monkeypatch.setenv("RIDEMESH_DEMO", off)
        assert _parser().parse_args(["up"]).demo is False
    monkeypatch.setenv("RIDEMESH_DEMO", "1")
    assert _parser().parse_args(["up"]).demo is True
