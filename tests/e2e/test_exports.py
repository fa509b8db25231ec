"""Track exports through the real Envoy: the plain HTTP download (gRPC-JSON transcoder, tokens
checked at the edge and in the service) and the gRPC method itself."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.auth.identity import Role
from services.domain.trip_ids import TripSpan, encode_trip_id
from services.geo.export_formats import GPX_NAMESPACE
from services.history.store import FixRow, HistoryStore, create_engine
from services.ops.mesh.supervisor import Mesh
from tests.gpx_schema import assert_valid_gpx

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

DRIVER = "export-e2e-1"
START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
END = START + timedelta(hours=2)
FIXES = 3_000  # a GPX of several 64 KiB chunks
GPX = f"{{{GPX_NAMESPACE}}}"


@pytest.fixture(scope="module")
async def drive(mesh: Mesh) -> list[FixRow]:
    rng = random.Random(19)
    lat, lng, rows = 48.8566, 2.3522, []
    for i in range(FIXES):
        lat += rng.uniform(-1e-4, 1e-4)
        lng += rng.uniform(-1e-4, 1e-4)
        recorded = START + timedelta(seconds=2 * i)
        rows.append(FixRow(DRIVER, lat, lng, 45.0, 11.0, 4.0, recorded, i + 1, recorded))
    assert mesh.database_url is not None
    history = HistoryStore(create_engine(mesh.database_url))
    try:
        await history.insert_fixes(rows)
    finally:
        await history.dispose()
    return rows


@pytest.fixture
async def http(envoy_address: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{envoy_address}", timeout=30) as client:
        yield client


def _auth(token: Callable[..., str], sub: str, role: Role = Role.DRIVER) -> dict[str, str]:
    return {"authorization": f"Bearer {token(sub, role)}"}


def _range(start: datetime = START, end: datetime = END, **more: str) -> dict[str, str]:
    return {"start_time": _rfc3339(start), "end_time": _rfc3339(end), **more}


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


TRACK_URL = f"/v1/drivers/{DRIVER}/track:export"


async def test_the_driver_downloads_their_track_as_gpx(
    http: httpx.AsyncClient, token: Callable[..., str], drive: list[FixRow]
) -> None:
    response = await http.get(TRACK_URL, params=_range(), headers=_auth(token, DRIVER))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gpx+xml"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{DRIVER}_2026-11-30T08-00-00Z_2026-11-30T10-00-00Z.gpx"'
    )
    root = assert_valid_gpx(response.content)
    points = root.findall(f".//{GPX}trkpt")
    assert [(float(p.get("lat")), float(p.get("lon"))) for p in points] == [
        (r.latitude, r.longitude) for r in drive
    ]


async def test_staff_download_csv_and_a_trip_by_its_id(
    http: httpx.AsyncClient, token: Callable[..., str], drive: list[FixRow]
) -> None:
    ops = _auth(token, "ops-1", Role.OPS)
    response = await http.get(TRACK_URL, params=_range(format="EXPORT_FORMAT_CSV"), headers=ops)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv"
    _, *records = csv.reader(io.StringIO(response.text))
    assert [int(r[7]) for r in records] == [r.seq for r in drive]

    trip = drive[500:900]
    trip_id = encode_trip_id(TripSpan(DRIVER, trip[0].recorded_at, trip[-1].recorded_at))
    response = await http.get(
        f"/v1/trips/{quote(trip_id, safe='')}:export",
        params={"format": "EXPORT_FORMAT_GEOJSON"},
        headers=_auth(token, DRIVER),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/geo+json"
    assert ".geojson" in response.headers["content-disposition"]
    line, *points = response.json()["features"]
    assert [p["properties"]["seq"] for p in points] == [r.seq for r in trip]
    assert line["geometry"]["coordinates"][-1] == [trip[-1].longitude, trip[-1].latitude]


async def test_without_a_token_the_download_is_401(http: httpx.AsyncClient) -> None:
    response = await http.get(TRACK_URL, params=_range())
    assert response.status_code == 401


async def test_another_drivers_token_is_403_with_a_json_status(
    http: httpx.AsyncClient, token: Callable[..., str], drive: list[FixRow]
) -> None:
    response = await http.get(TRACK_URL, params=_range(), headers=_auth(token, "someone-else"))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == 7  # PERMISSION_DENIED
    assert "someone-else" in response.json()["message"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (_range(start=END, end=START), "must be after start_time"),
        (_range(end=START + timedelta(days=40)), "31 days"),
        ({"start_time": _rfc3339(START)}, "end_time is required"),
    ],
)
async def test_a_bad_range_is_400_saying_what_to_fix(
    http: httpx.AsyncClient, token: Callable[..., str], params: dict[str, str], fragment: str
) -> None:
    response = await http.get(TRACK_URL, params=params, headers=_auth(token, DRIVER))
    assert response.status_code == 400
    assert response.json()["code"] == 3  # INVALID_ARGUMENT
    assert fragment in response.json()["message"]


async def test_bad_parameters_and_unknown_paths_are_client_errors_not_the_page(
    http: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    headers = _auth(token, DRIVER)
    misspelt = await http.get(TRACK_URL, params=_range(fromat="CSV"), headers=headers)
    assert misspelt.status_code == 400
    bad_format = await http.get(TRACK_URL, params=_range(format="XLSX"), headers=headers)
    assert bad_format.status_code == 400
    assert "format" in bad_format.text
    unknown = await http.get(f"/v1/drivers/{DRIVER}/track", headers=headers)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/json"
    bad_trip = await http.get("/v1/trips/not-a-trip:export", headers=headers)
    assert bad_trip.status_code == 400
    assert "trip_id" in bad_trip.json()["message"]


async def test_the_grpc_method_through_envoy(
    geo: geo_grpc.GeoQueryServiceAsyncStub, drive: list[FixRow]
) -> None:
    request = pb.ExportDriverTrackRequest(
        driver_id=DRIVER,
        start_time=Timestamp(seconds=int(START.timestamp())),
        end_time=Timestamp(seconds=int(END.timestamp())),
        format=pb.EXPORT_FORMAT_GPX,
    )
    call = geo.ExportDriverTrack(request)
    chunks = [chunk async for chunk in call]
    assert len(chunks) > 1
    assert chunks[0].filename.endswith(".gpx")
    headers = dict(await call.initial_metadata() or ())
    assert chunks[0].filename in str(headers["content-disposition"])
    root = assert_valid_gpx(b"".join(c.body.data for c in chunks))
    assert len(root.findall(f".//{GPX}trkpt")) == len(drive)
