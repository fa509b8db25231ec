"""ReplayFleet through Envoy and in the browser: every stored fix in the box, in time order, at the
chosen speed, while the live side (area watchers, the live position) sees nothing of it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Browser, async_playwright

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as location_pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.domain.area import Box
from services.history.store import FixRow, HistoryStore
from services.ops.mesh.supervisor import Mesh
from services.ops.webapp import WEB_DIST
from tests.e2e.clients import DriverStream, Messages, fix, new_driver_id
from tests.e2e.test_geo import _square
from tests.e2e.test_live_map import CHROMIUM_ARGS
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e

LONGYEARBYEN = Box(78.20, 15.45, 78.26, 15.75)  # a box no other test uses (Svalbard)
ZONE = (78.23, 15.60)  # a zone on the replayed drivers' path
LISBON = (38.7223, -9.1393)  # the browser test's centre, also unused elsewhere
CHROMIUM = Path("/usr/bin/chromium")


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _bounds(box: Box) -> BoundingBox:
    return BoundingBox(
        south_west=LatLng(latitude=box.south, longitude=box.west),
        north_east=LatLng(latitude=box.north, longitude=box.east),
    )


def _row(driver: str, lat: float, lng: float, at: datetime, seq: int) -> FixRow:
    return FixRow(driver, lat, lng, 45.0, 9.0, 4.0, at, seq, at + timedelta(milliseconds=300))


def _stored_drive(drivers: list[str], start: datetime, box: Box) -> list[FixRow]:
    """Each driver crosses the box west to east over 20 s, a fix every 0.5 s; the first and last
    few fixes are outside it."""
    rows = []
    middle = (box.south + box.north) / 2
    for n, driver in enumerate(drivers):
        for i in range(40):
            lng = box.west - 0.02 + (box.east - box.west + 0.04) * i / 39
            at = start + timedelta(milliseconds=500 * i + 37 * n)
            rows.append(_row(driver, middle + 0.005 * n, lng, at, 1_000 + i))
    return rows


async def test_a_replay_plays_the_box_in_order_at_its_speed_and_touches_nothing_live(
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    location: location_grpc.LocationServiceAsyncStub,
    history: HistoryStore,
    as_driver: Callable[[str], Metadata],
) -> None:
    drivers = [new_driver_id("replay") for _ in range(3)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    rows = _stored_drive(drivers, start, LONGYEARBYEN)
    await history.insert_fixes(rows)
    expected = sorted(
        (r for r in rows if LONGYEARBYEN.contains(r.latitude, r.longitude)),
        key=lambda r: (r.recorded_at, r.driver_id.encode(), r.seq),
    )
    assert 0 < len(expected) < len(rows)

    # One of the replayed drivers is live now, somewhere in the box; an area watcher sees it.
    live = DriverStream(location, as_driver(drivers[0]))
    live.send(fix(drivers[0], 5_000, 78.25, 15.70))  # in the box, outside the zone
    await live.wait_for(lambda: live.accepted_seq == 5_000)
    before = (await location.GetDriverLocation(
        location_pb.GetDriverLocationRequest(driver_id=drivers[0])
    )).location  # fmt: skip
    watch = Messages(location.WatchArea(location_pb.WatchAreaRequest(bounds=_bounds(LONGYEARBYEN))))
    snapshot = await watch.next()
    assert snapshot.location.driver_id == drivers[0]

    # A zone on the replayed path, and a watcher of its events, live before the replay starts.
    tag = new_driver_id("replay-zone")
    zone = pb.Geofence(display_name="Replayed", geojson=_square(*ZONE, 0.01), labels={"t": tag})
    await geo.CreateGeofence(pb.CreateGeofenceRequest(geofence=zone))
    events = Messages(geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag})))
    probe = Crossing(location, as_driver, events)
    assert set(await probe.cross()) == {probe.driver_id}

    speed = 10.0
    end = start + timedelta(seconds=21)
    request = pb.ReplayFleetRequest(
        bounds=_bounds(LONGYEARBYEN), start_time=_ts(start), end_time=_ts(end), speed=speed
    )
    began = time.monotonic()
    played = []
    async for response in geo.ReplayFleet(request):
        if response.HasField("location"):
            at = response.location.recorded_at.ToDatetime(tzinfo=UTC)
            assert time.monotonic() - began >= (at - start).total_seconds() / speed
            played.append((response.location.driver_id, response.location.seq, at))
    assert played == [(r.driver_id, r.seq, r.recorded_at) for r in expected]

    # The live side saw none of it: up to a sentinel fix sent after the replay (fan-out keeps a
    # cell's order) the area watcher saw no replayed driver, and the live position is unchanged.
    sentinel = new_driver_id("replay-sentinel")
    other = DriverStream(location, as_driver(sentinel))
    other.send(fix(sentinel, 1, 78.21, 15.50))
    area_seen = [(await watch.next()).location.driver_id]
    while area_seen[-1] != sentinel:
        area_seen.append((await watch.next()).location.driver_id)
    assert not set(area_seen) & set(drivers), area_seen  # only the probe's and the sentinel's
    after = (await location.GetDriverLocation(
        location_pb.GetDriverLocationRequest(driver_id=drivers[0])
    )).location  # fmt: skip
    assert after == before
    # No zone event for a replayed driver: the probe's next crossing is the next event.
    assert set(await probe.cross()) == {probe.driver_id}
    events.cancel()
    probe.close()
    await probe.stream.reader
    watch.cancel()
    for stream in (live, other):
        stream.close()
        await stream.reader


def _chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    return str(CHROMIUM)


class Crossing:
    """A live driver that drives in and out of ZONE until the zone watcher reports an event."""

    def __init__(
        self,
        location: location_grpc.LocationServiceAsyncStub,
        as_driver: Callable[[str], Metadata],
        events: Messages,
    ) -> None:
        self.driver_id = new_driver_id("replay-probe")
        self.stream = DriverStream(location, as_driver(self.driver_id))
        self.events = events
        self.seq = 0

    async def cross(self) -> list[str]:
        """The drivers of the events received until (and with) the probe's first one."""
        seen: list[str] = []
        inside, outside = ZONE, (ZONE[0] + 0.05, ZONE[1])
        async with asyncio.timeout(30):
            while self.driver_id not in seen:
                self.seq += 1
                self.stream.send(
                    fix(self.driver_id, self.seq, *(inside if self.seq % 2 else outside))
                )
                with contextlib.suppress(TimeoutError):
                    while True:
                        seen.append((await self.events.next(timeout=0.5)).event.driver_id)
        return seen

    def close(self) -> None:
        self.stream.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def test_the_map_replays_history_and_goes_back_to_live(
    mesh: Mesh,
    browser: Browser,
    history: HistoryStore,
    location: location_grpc.LocationServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    assert (WEB_DIST / "index.html").is_file(), "the page is not built: run `make web`"
    assert mesh.envoy is not None
    lat, lng = LISBON
    replayed = [new_driver_id("map-replay") for _ in range(3)]
    # Stored half an hour ago (inside the page's default range, the last hour).
    then = datetime.now(UTC) - timedelta(minutes=30)
    rows = [
        _row(driver, lat + 0.0005 * n, lng - 0.001 + 0.0001 * i, then + timedelta(seconds=i), i + 1)
        for n, driver in enumerate(replayed)
        for i in range(20)
    ]
    await history.insert_fixes(rows)
    resident = new_driver_id("map-live")
    live = DriverStream(location, as_driver(resident))
    live.send(fix(resident, 1, lat - 0.0005, lng + 0.0005))
    await live.wait_for(lambda: live.accepted_seq == 1)

    errors: list[str] = []
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{mesh.envoy.url}/?center={lat},{lng}&zoom=16")
    live_marker = f'.driver[data-driver-id="{resident}"]'
    await page.wait_for_selector(live_marker, timeout=30_000)

    await page.check("#replay-toggle")
    await page.select_option("#replay-speed", "600")  # an hour in six seconds
    for driver in replayed:
        await page.wait_for_selector(
            f'.replay-driver[data-driver-id="{driver}"]', state="attached", timeout=30_000
        )
    await page.wait_for_selector(live_marker, state="hidden", timeout=5_000)
    value = float(await page.eval_on_selector("#replay-slider", "el => el.value"))
    await page.wait_for_function(
        "v => Number(document.querySelector('#replay-slider').value) > v", arg=value, timeout=10_000
    )

    # Letting go of the slider later than every stored fix replays from there: a new call whose
    # clock starts at that moment and which has no fix to show.
    later = (datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000
    await page.eval_on_selector(
        "#replay-slider",
        "(el, v) => { el.value = String(v);"
        " el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }",
        later,
    )
    await page.wait_for_function(
        "v => document.querySelectorAll('.replay-driver').length === 0"
        " && Number(document.querySelector('#replay-clock').dataset.ms) >= v - 1000",
        arg=later,
        timeout=10_000,
    )

    await page.uncheck("#replay-toggle")
    await page.wait_for_function(
        "document.querySelectorAll('.replay-driver').length === 0", timeout=5_000
    )
    await page.wait_for_selector(live_marker, state="visible", timeout=10_000)
    assert not errors, errors
    live.close()
    await live.reader
