"""Hostile input through Envoy: every bad request gets a precise status, nothing is stored, and
every process of the mesh survives.

Statuses observed (and asserted) here:
- malformed protobuf bytes as a request: INVALID_ARGUMENT, "the request is not a valid protobuf
  message of this method" (services/domain/errors.py decodes single requests itself, since grpc.aio
  would report the failure as UNKNOWN);
- a truncated gRPC-Web frame (body shorter than its frame header says): nothing answers until the
  caller's deadline, then it ends with DEADLINE_EXCEEDED from the replica or, when Envoy still
  held the partial frame, HTTP 504 with grpc-status 14 "downstream duration timeout" (no handler
  ever runs); without a deadline it waits until the client hangs up;
- a 5 MiB message: RESOURCE_EXHAUSTED from the replica's 4 MiB receive cap (Envoy's buffers
  stream the body through; it does not buffer whole gRPC messages);
- a token for another audience: Envoy's jwt_authn answers HTTP 403, which gRPC maps to
  PERMISSION_DENIED; expired, forged and `alg: none` tokens get 401, i.e. UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as ride_pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.auth.identity import Role
from services.auth.keys import DevKeys, mint_token
from services.ops.mesh.supervisor import Mesh
from tests.e2e.clients import DriverStream, collect, fix, grpc_web_frame, new_driver_id
from tests.tokens import bearer

pytestmark = pytest.mark.e2e

Metadata = tuple[tuple[str, str], ...]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK
GOOD = LatLng(latitude=12.9716, longitude=77.5946)
# Each bad point breaks exactly one coordinate rule.
BAD_POINTS = {
    "nan-lat": LatLng(latitude=math.nan, longitude=77.5),
    "inf-lng": LatLng(latitude=12.9, longitude=math.inf),
    "neg-inf-lat": LatLng(latitude=-math.inf, longitude=77.5),
    "lat-91": LatLng(latitude=91.0, longitude=77.5),
    "lng-181": LatLng(latitude=12.9, longitude=181.0),
    "lat-minus-1e308": LatLng(latitude=-1e308, longitude=77.5),
}
LONG_ID = "x" * 10_240
ODD_IDS = {
    "nul": "drv\x00one",
    "newline": "drv\none",
    "escape": "drv\x1b[31mred",
    "bidi-override": "drv\u202eeno",
    "del": "drv\x7fone",
}
# Every id the bad requests below used; none may own anything afterwards.
USED_DRIVER_IDS: list[str] = []
USED_RIDER_IDS: list[str] = []
HOSTILE_NAME = "hostile-" + "n" * 10_240


async def _status(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as error:
        return error.code()
    return OK


async def _stream_status(call: Any, wait_s: float = 3.0) -> grpc.StatusCode:
    """The status a server stream ends with; OK when it is still open after `wait_s`."""
    try:
        async with asyncio.timeout(wait_s):
            await call.read()
            await call.read()
    except aio.AioRpcError as error:
        return error.code()
    except TimeoutError:
        pass
    call.cancel()
    return OK


@pytest.fixture(scope="module")
def mesh_pids(mesh: Mesh) -> list[int]:
    """The mesh's processes as the suite starts; every one must still be alive at the end."""
    return [pid for part in mesh.parts for pid in part.pids]


@pytest.fixture
def driver(token: Callable[..., str]) -> tuple[str, Metadata]:
    driver_id = new_driver_id("hostile")
    USED_DRIVER_IDS.append(driver_id)
    return driver_id, bearer(token(driver_id, Role.DRIVER))


@pytest.fixture
def rider(token: Callable[..., str]) -> tuple[str, Metadata]:
    rider_id = new_driver_id("hostile-rider")
    USED_RIDER_IDS.append(rider_id)
    return rider_id, bearer(token(rider_id, Role.RIDER))


def _box(corner: LatLng) -> BoundingBox:
    return BoundingBox(south_west=corner, north_east=LatLng(latitude=13.0, longitude=77.7))


# --- Bytes that are not what they claim to be -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab", b"\x08" + b"\xff" * 11],
    ids=["bad-tag", "huge-length", "short-string", "overlong-varint"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/ridemesh.v1.LocationService/GetDriverLocation",
        "/ridemesh.v1.GeoQueryService/SearchNearbyDrivers",
        "/ridemesh.v1.RideService/GetRide",
    ],
)
async def test_malformed_protobuf_is_refused(
    channel: aio.Channel, mesh_pids: list[int], path: str, body: bytes
) -> None:
    raw = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    with pytest.raises(aio.AioRpcError) as refused:
        await raw(body)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (refused.value.details() or "")


async def test_truncated_grpc_web_frames_get_an_error_status(
    envoy_address: str, keys: DevKeys
) -> None:
    whole = grpc_web_frame(pb.GetDriverLocationRequest(driver_id="someone").SerializeToString())
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {_ops(keys)}",
        "grpc-timeout": "1S",
    }
    url = f"http://{envoy_address}/ridemesh.v1.LocationService/GetDriverLocation"
    async with httpx.AsyncClient(http2=False, timeout=10) as client:
        for body in (whole[:3], whole[:5], whole[:-2]):
            response = await client.post(url, content=body, headers=headers)
            # DEADLINE_EXCEEDED from the replica, or Envoy's own timeout if it still held it.
            assert response.headers.get("grpc-status") in ("4", "14"), body
        # Trailing bytes after a whole frame are ignored; the whole frame is answered.
        response = await client.post(url, content=whole + b"\x00\x00", headers=headers)
        assert response.headers.get("grpc-status") == "5"  # NOT_FOUND: it reached the handler


async def test_oversized_message_is_resource_exhausted_and_the_replica_serves_on(
    channel: aio.Channel, location: location_grpc.LocationServiceAsyncStub
) -> None:
    big = pb.GetDriverLocationRequest(driver_id="x" * (5 * 1024 * 1024)).SerializeToString()
    raw = channel.unary_unary(
        "/ridemesh.v1.LocationService/GetDriverLocation",
        request_serializer=None,
        response_deserializer=None,
    )
    assert await _status(raw(big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(4):  # both replicas, round robin
        answer = location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="nobody"))
        assert await _status(answer) == grpc.StatusCode.NOT_FOUND


# --- Numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", BAD_POINTS.values(), ids=BAD_POINTS.keys())
async def test_bad_coordinates_are_invalid_in_every_geo_rpc(
    geo: geo_grpc.GeoQueryServiceAsyncStub, point: LatLng
) -> None:
    calls: dict[str, Awaitable[Any]] = {
        "SearchNearbyDrivers": geo.SearchNearbyDrivers(
            geo_pb.SearchNearbyDriversRequest(center=point, radius_m=1000)
        ),
        "CheckPoint": geo.CheckPoint(geo_pb.CheckPointRequest(point=point)),
        "EstimateEta origin": geo.EstimateEta(
            geo_pb.EstimateEtaRequest(origin_position=point, destination=GOOD)
        ),
        "EstimateEta destination": geo.EstimateEta(
            geo_pb.EstimateEtaRequest(origin_position=GOOD, destination=point)
        ),
        "GetSupplyHeatmap": geo.GetSupplyHeatmap(
            geo_pb.GetSupplyHeatmapRequest(bounds=_box(point), resolution=7)
        ),
    }
    codes = {name: await _status(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, INVALID)


@pytest.mark.parametrize("radius", [math.nan, math.inf, -1.0, 0.0, 1e12])
async def test_bad_search_radius_is_invalid(
    geo: geo_grpc.GeoQueryServiceAsyncStub, radius: float
) -> None:
    request = geo_pb.SearchNearbyDriversRequest(center=GOOD, radius_m=radius)
    assert await _status(geo.SearchNearbyDrivers(request)) == INVALID


@pytest.mark.parametrize("point", BAD_POINTS.values(), ids=BAD_POINTS.keys())
async def test_bad_coordinates_are_invalid_for_rides_and_areas(
    rides: ride_grpc.RideServiceAsyncStub,
    location: location_grpc.LocationServiceAsyncStub,
    rider: tuple[str, Metadata],
    point: LatLng,
) -> None:
    rider_id, metadata = rider
    for pickup, dropoff in ((point, GOOD), (GOOD, point)):
        request = ride_pb.RequestRideRequest(
            rider_id=rider_id, pickup=pickup, dropoff=dropoff, request_id=os.urandom(8).hex()
        )
        assert await _status(rides.RequestRide(request, metadata=metadata)) == INVALID
    watch = location.WatchArea(pb.WatchAreaRequest(bounds=_box(point)))
    assert await _stream_status(watch) == INVALID


@pytest.mark.parametrize("point", BAD_POINTS.values(), ids=BAD_POINTS.keys())
async def test_bad_coordinates_in_uploaded_fixes_are_rejected(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
    point: LatLng,
) -> None:
    driver_id, metadata = driver
    update = fix(driver_id, 1, point.latitude, point.longitude)
    answer = await location.UploadLocations(
        pb.UploadLocationsRequest(updates=[update]), metadata=metadata
    )
    # UploadLocations answers per fix: the call succeeds and names each refused fix.
    assert answer.stored_count == 0
    assert [r.code for r in answer.rejected] == [INVALID.value[0]]


async def test_bad_speed_heading_and_accuracy_are_rejected(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
) -> None:
    driver_id, metadata = driver
    updates = []
    for seq, field in enumerate(("speed_mps", "heading_deg", "accuracy_m"), start=1):
        for value in (math.nan, math.inf, -1.0):
            update = fix(driver_id, seq)
            setattr(update, field, value)
            updates.append(update)
    answer = await location.UploadLocations(
        pb.UploadLocationsRequest(updates=updates), metadata=metadata
    )
    assert answer.stored_count == 0
    assert [r.code for r in answer.rejected] == [INVALID.value[0]] * len(updates)


# --- Sizes ------------------------------------------------------------------------------------


async def test_a_hundred_thousand_fixes_in_one_upload_are_refused(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
) -> None:
    driver_id, metadata = driver
    updates = [fix(driver_id, seq) for seq in range(1, 100_001)]
    code = await _status(
        location.UploadLocations(pb.UploadLocationsRequest(updates=updates), metadata=metadata)
    )
    # ~5 MB: the 4 MiB cap answers before the batch limit could.
    assert code in (INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_more_fixes_than_the_batch_limit_are_invalid(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
) -> None:
    driver_id, metadata = driver
    updates = [fix(driver_id, seq) for seq in range(1, 1_002)]
    code = await _status(
        location.UploadLocations(pb.UploadLocationsRequest(updates=updates), metadata=metadata)
    )
    assert code == INVALID


def _id_calls(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    bad: str,
) -> dict[str, Awaitable[Any]]:
    return {
        "GetDriverLocation": location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=bad)),
        "GetRide": rides.GetRide(ride_pb.GetRideRequest(ride_id=bad)),
        "GetDriverTrack": geo.GetDriverTrack(geo_pb.GetDriverTrackRequest(driver_id=bad)),
        "EstimateEta": geo.EstimateEta(geo_pb.EstimateEtaRequest(driver_id=bad, destination=GOOD)),
        "ListRides": rides.ListRides(ride_pb.ListRidesRequest(driver_id=bad)),
        "CancelRide": rides.CancelRide(
            ride_pb.CancelRideRequest(ride_id=bad, cancelled_by=ride_pb.PARTY_SYSTEM)
        ),
    }


@pytest.mark.parametrize("bad", [LONG_ID, *ODD_IDS.values()], ids=["10k", *ODD_IDS])
async def test_long_and_odd_ids_are_invalid(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    bad: str,
) -> None:
    calls = _id_calls(location, rides, geo, bad)
    codes = {name: await _status(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, INVALID)
    watch = location.WatchDriver(pb.WatchDriverRequest(driver_id=bad))
    assert await _stream_status(watch) == INVALID
    ride_watch = rides.WatchRide(ride_pb.WatchRideRequest(ride_id=bad))
    assert await _stream_status(ride_watch) == INVALID


@pytest.mark.parametrize("bad", [LONG_ID, *ODD_IDS.values()], ids=["10k", *ODD_IDS])
async def test_long_and_odd_geofence_ids_are_invalid(
    geo: geo_grpc.GeoQueryServiceAsyncStub, bad: str
) -> None:
    got = geo.GetGeofence(geo_pb.GetGeofenceRequest(geofence_id=bad))
    assert await _status(got) == INVALID
    deleted = geo.DeleteGeofence(geo_pb.DeleteGeofenceRequest(geofence_id=bad))
    assert await _status(deleted) == INVALID


@pytest.mark.parametrize("bad", [LONG_ID, *ODD_IDS.values()], ids=["10k", *ODD_IDS])
async def test_long_and_odd_driver_ids_in_fixes_are_refused(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
    bad: str,
) -> None:
    _, metadata = driver
    request = pb.UploadLocationsRequest(updates=[fix(bad, 1)])
    call = location.UploadLocations(request, metadata=metadata)
    code = await _status(call)
    # The driver may upload only as themselves: the ownership rule or the id rule refuses it,
    # for the whole call or for the one fix.
    refused = {INVALID, grpc.StatusCode.PERMISSION_DENIED}
    if code == OK:
        answer = await call
        assert answer.stored_count == 0
        assert len(answer.rejected) == 1
        assert answer.rejected[0].code in {c.value[0] for c in refused}
    else:
        assert code in refused


async def test_a_ten_kilobyte_geofence_name_is_invalid(
    geo: geo_grpc.GeoQueryServiceAsyncStub,
) -> None:
    polygon = {
        "type": "Polygon",
        "coordinates": [[[77.5, 12.9], [77.6, 12.9], [77.6, 13.0], [77.5, 13.0], [77.5, 12.9]]],
    }
    fence = geo_pb.Geofence(display_name=HOSTILE_NAME, geojson=json.dumps(polygon))
    assert await _status(geo.CreateGeofence(geo_pb.CreateGeofenceRequest(geofence=fence))) == (
        INVALID
    )
    fence = geo_pb.Geofence(display_name="ok", geojson=json.dumps(polygon), labels={"k": LONG_ID})
    assert await _status(geo.CreateGeofence(geo_pb.CreateGeofenceRequest(geofence=fence))) == (
        INVALID
    )


# --- Time and enums ---------------------------------------------------------------------------


def _stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (_stamp(-62_135_596_800), _stamp(253_402_300_799), {INVALID, OK}),  # years 1 to 9999
        (_stamp(-62_135_596_801), _stamp(0), {INVALID}),  # before year 1: not a Timestamp
        (_stamp(0), _stamp(253_402_300_800), {INVALID}),  # after 9999: not a Timestamp
        (_stamp(int(time.time()) + 86_400), _stamp(int(time.time())), {INVALID}),  # reversed
    ],
    ids=["year-1-to-9999", "before-year-1", "after-9999", "end-before-start"],
)
async def test_track_windows_far_in_past_and_future(
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    start: Timestamp,
    end: Timestamp,
    expected: set[grpc.StatusCode],
) -> None:
    request = geo_pb.GetDriverTrackRequest(driver_id="hostile-track", start_time=start)
    request.end_time.CopyFrom(end)
    call = geo.GetDriverTrack(request)
    code = await _status(call)
    assert code in expected
    if code == OK:
        assert list((await call).points) == []


@pytest.mark.parametrize(
    "seconds",
    [-62_135_596_801, 0, 946_684_800, 4_102_444_800, 253_402_300_800],
    ids=["before-year-1", "1970", "2000", "2100", "after-9999"],
)
async def test_fixes_far_in_past_and_future_are_rejected(
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
    seconds: int,
) -> None:
    driver_id, metadata = driver
    update = fix(driver_id, 1)
    update.recorded_at.CopyFrom(_stamp(seconds))
    answer = await location.UploadLocations(
        pb.UploadLocationsRequest(updates=[update]), metadata=metadata
    )
    assert answer.stored_count == 0
    assert [r.code for r in answer.rejected] == [INVALID.value[0]]


async def test_unknown_enum_values_are_invalid(rides: ride_grpc.RideServiceAsyncStub) -> None:
    listing = ride_pb.ListRidesRequest(rider_id="hostile-enum", states=[99])  # type: ignore[list-item]
    assert await _status(rides.ListRides(listing)) == INVALID
    cancel = ride_pb.CancelRideRequest(ride_id="hostile-enum", cancelled_by=42)  # type: ignore[arg-type]
    assert await _status(rides.CancelRide(cancel)) == INVALID


# --- Tokens -----------------------------------------------------------------------------------


def _ops(keys: DevKeys) -> str:
    return mint_token(keys.private_pem(), keys.kid, sub="ops-hostile", role=Role.OPS, ttl_s=600)


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "ridemesh-dev",
        "aud": "ridemesh",
        "sub": "ops-hostile",
        "role": "ops",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return claims


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hostile_tokens(keys: DevKeys) -> dict[str, tuple[str, grpc.StatusCode]]:
    own_key = keys.private_pem()
    other_key = ec.generate_private_key(ec.SECP256R1())
    header = {"kid": keys.kid}
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    return {
        "expired": (
            mint_token(
                own_key,
                keys.kid,
                sub="ops-hostile",
                role=Role.OPS,
                ttl_s=60,
                now=time.time() - 7200,
            ),
            unauthenticated,
        ),
        "forged": (
            jwt.encode(_claims(), other_key, algorithm="ES256", headers=header),
            unauthenticated,
        ),
        "other-audience": (
            mint_token(
                own_key, keys.kid, sub="ops-hostile", role=Role.OPS, ttl_s=600, audience="billing"
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "alg-none": (
            f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.kid})}.{_b64(_claims())}.",
            unauthenticated,
        ),
        "garbage": ("not.a.token", unauthenticated),
    }


async def test_bad_tokens_are_refused_at_the_edge(
    location: location_grpc.LocationServiceAsyncStub, keys: DevKeys
) -> None:
    for name, (value, expected) in _hostile_tokens(keys).items():
        answer = location.GetDriverLocation(
            pb.GetDriverLocationRequest(driver_id="someone"), metadata=bearer(value)
        )
        assert await _status(answer) == expected, name
        watch = location.WatchArea(pb.WatchAreaRequest(bounds=_box(GOOD)), metadata=bearer(value))
        assert await _stream_status(watch) == expected, name


# --- Other callers ---------------------------------------------------------------------------


async def _barrage(channel: aio.Channel, geo: geo_grpc.GeoQueryServiceAsyncStub) -> None:
    raw = channel.unary_unary(
        "/ridemesh.v1.LocationService/GetDriverLocation",
        request_serializer=None,
        response_deserializer=None,
    )
    big = pb.GetDriverLocationRequest(driver_id="x" * (5 * 1024 * 1024)).SerializeToString()
    nan = geo_pb.SearchNearbyDriversRequest(center=BAD_POINTS["nan-lat"], radius_m=1000)
    calls = [raw(b"\xff\xff\xff\xff") for _ in range(20)]
    calls += [raw(big) for _ in range(4)]
    calls += [geo.SearchNearbyDrivers(nan) for _ in range(20)]
    codes = {await _status(call) for call in calls}
    assert OK not in codes


async def test_a_watch_keeps_flowing_through_hostile_traffic(
    channel: aio.Channel,
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    driver: tuple[str, Metadata],
) -> None:
    driver_id, metadata = driver
    USED_DRIVER_IDS.remove(driver_id)  # this one streams fixes on purpose
    stream = DriverStream(location, metadata)
    stream.send(fix(driver_id, 1))
    await stream.wait_for(lambda: stream.accepted_seq >= 1)
    watch = location.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id))
    assert [m.location.seq for m in await collect(watch, 1)] == [1]
    await _barrage(channel, geo)
    for seq in (2, 3, 4):
        stream.send(fix(driver_id, seq))
        await asyncio.sleep(0.1)
    assert [m.location.seq for m in await collect(watch, 3)] == [2, 3, 4]
    watch.cancel()
    stream.close()
    await stream.reader


# --- Afterwards -------------------------------------------------------------------------------


async def test_after_the_hostile_suite_the_mesh_is_whole_and_stored_nothing(
    mesh_pids: list[int],
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    history: Any,
) -> None:
    for pid in mesh_pids:
        os.kill(pid, 0)  # raises ProcessLookupError if it died
    found = await geo.SearchNearbyDrivers(
        geo_pb.SearchNearbyDriversRequest(center=GOOD, radius_m=1000)
    )
    assert found is not None
    for driver_id in USED_DRIVER_IDS:
        missing = location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
        assert await _status(missing) == grpc.StatusCode.NOT_FOUND
        assert await history.list_fixes(driver_id, *_all_time()) == []
    for rider_id in USED_RIDER_IDS:
        listed = await rides.ListRides(ride_pb.ListRidesRequest(rider_id=rider_id))
        assert list(listed.rides) == []
    fences = await geo.ListGeofences(geo_pb.ListGeofencesRequest(page_size=500))
    assert all(len(f.display_name) < 1000 for f in fences.geofences)


def _all_time() -> tuple[datetime, datetime]:
    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


async def test_logs_hold_no_tokens_or_coordinates(
    mesh: Mesh,
    location: location_grpc.LocationServiceAsyncStub,
    driver: tuple[str, Metadata],
) -> None:
    driver_id, metadata = driver
    USED_DRIVER_IDS.remove(driver_id)  # this one stores a fix on purpose
    update = fix(driver_id, 1, latitude=12.345678, longitude=77.654321)
    answer = await location.UploadLocations(
        pb.UploadLocationsRequest(updates=[update]), metadata=metadata
    )
    assert answer.stored_count == 1
    await asyncio.sleep(1.0)  # persisted and logged, if anything logs it
    token_text = metadata[0][1].removeprefix("Bearer ")
    logs = [p for p in mesh.run_dir.rglob("*.log") if p.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert token_text not in text, path
        assert token_text.split(".")[2] not in text, path  # not even the signature
        assert "12.345678" not in text, path
        assert "77.654321" not in text, path
