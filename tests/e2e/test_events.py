"""The event log through Envoy: a watcher away for 30 s resumes with its token and gets exactly
what it missed, in order, once; a token the log cannot serve is refused plainly."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Callable

import grpc
import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from tests.e2e.clients import DriverStream, Messages, collect, fix, new_driver_id
from tests.e2e.conftest import status_of
from tests.e2e.test_geo import _square
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e

AWAY_S = 30.0


async def test_a_watcher_away_for_30_s_resumes_with_its_token_and_misses_nothing(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("resume")
    centre = (45.4642, 9.19)  # Milan
    await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Duomo", geojson=_square(*centre, 0.005), labels={"t": tag}
            )
        )
    )
    request = pb.WatchGeofenceEventsRequest(labels={"t": tag})
    control = Messages(geo.WatchGeofenceEvents(request))  # stays connected throughout
    away = Messages(geo.WatchGeofenceEvents(request))
    driver_id = new_driver_id("crossing")
    driver = DriverStream(location, as_driver(driver_id))
    inside, outside = centre, (centre[0] + 0.01, centre[1])
    seq = 0
    seen: list[pb.GeofenceEvent] = []  # by the control watcher, in order

    async def cross() -> None:
        """Drives across the line until the control watcher reports the crossing."""
        nonlocal seq
        async with asyncio.timeout(15):
            while True:
                seq += 1
                driver.send(fix(driver_id, seq, *(inside if seq % 2 else outside)))
                try:
                    seen.append((await control.next(timeout=0.5)).event)
                    return
                except TimeoutError:
                    continue

    # The two watches may reach different replicas, each live from its own moment: cross until
    # the watcher that will go away has an event the control has too.
    async with asyncio.timeout(30):
        while True:
            await cross()
            try:
                last = await away.next(timeout=1.0)
            except TimeoutError:
                continue
            if last.event.event_id in {e.event_id for e in seen}:
                break
    token = last.resume_token
    away.cancel()  # the watcher goes away
    synced = [e.event_id for e in seen].index(last.event.event_id)

    started = time.monotonic()
    while time.monotonic() - started < AWAY_S:
        await cross()
        await asyncio.sleep(1.0)  # a crossing a second or so, for the whole time away
    missed = seen[synced + 1 :]
    assert len(missed) >= 20

    resumed = geo.WatchGeofenceEvents(
        pb.WatchGeofenceEventsRequest(labels={"t": tag}, resume_token=token)
    )
    got = [m.event for m in await collect(resumed, len(missed))]
    assert [e.event_id for e in got] == [e.event_id for e in missed]
    transitions = [last.event.transition] + [e.transition for e in got]
    assert all(a != b for a, b in itertools.pairwise(transitions))  # in, out, in, out...
    # Then it is live: the next crossing reaches both, once.
    await cross()
    (after,) = await collect(resumed, 1)
    assert after.event.event_id == seen[-1].event_id
    with pytest.raises(TimeoutError):
        await Messages(resumed).next(timeout=1.0)
    for call in (control, resumed):
        call.cancel()
    driver.close()
    await driver.reader


def _with_epoch(token: str, epoch: str) -> str:
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[1] = [epoch for _ in raw[1]]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


async def test_a_token_the_log_cannot_serve_is_refused_with_what_to_do(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("refused")
    centre = (45.07, 7.686)  # Turin
    await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Piazza", geojson=_square(*centre, 0.005), labels={"t": tag}
            )
        )
    )
    watch = geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag}))
    driver_id = new_driver_id("parked")
    driver = DriverStream(location, as_driver(driver_id))
    first = asyncio.create_task(collect(watch, 1))
    seq = 0
    async with asyncio.timeout(15):
        while not first.done():
            seq += 1
            driver.send(fix(driver_id, seq, *centre))
            await asyncio.wait([first], timeout=0.3)
    token = first.result()[0].resume_token
    watch.cancel()

    # From a log Redis has since lost (another epoch): FAILED_PRECONDITION, saying what to do.
    reset = geo.WatchGeofenceEvents(
        pb.WatchGeofenceEventsRequest(labels={"t": tag}, resume_token=_with_epoch(token, "gone"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(reset, 1)
    assert status_of(refused.value) == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "was reset" in details
    assert "without a resume_token" in details
    # Not a token at all: INVALID_ARGUMENT.
    bad = geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(resume_token="garbage!"))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await collect(bad, 1)
    assert status_of(invalid.value) == grpc.StatusCode.INVALID_ARGUMENT
    driver.close()
    await driver.reader
