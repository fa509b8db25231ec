"""ExportDriverTrack over real PostGIS, through a real gRPC server with the auth and error
interceptors: documents of a stored track and of a trip, chunks, file names, and the errors."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from prometheus_client import REGISTRY

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity, Role
from services.domain.trip_ids import TripSpan, encode_trip_id
from services.geo import track_export
from services.geo.export_formats import CHUNK_BYTES, GPX_NAMESPACE
from services.geo.track_export import PAGE_ROWS
from services.history.store import FixRow, HistoryStore, create_engine
from tests.gpx_schema import assert_valid_gpx
from tests.integration.geo_servicer import geo_stub
from tests.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# 23:30 on 6 December to 00:30 on 7 December UTC: across two daily partitions, and more fixes
# than one keyset page and one chunk hold.
START = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
END = START + timedelta(hours=1)
FIXES = PAGE_ROWS + 701
GPX = f"{{{GPX_NAMESPACE}}}"


def _drive(driver_id: str, start: datetime, count: int, seed: int) -> list[FixRow]:
    rng = random.Random(seed)
    lat, lng, rows = -33.86, 151.21, []
    for i in range(count):
        lat += rng.uniform(-2e-4, 2e-4)
        lng += rng.uniform(-2e-4, 2e-4)
        recorded = start + timedelta(seconds=3600 * i / count, microseconds=rng.randrange(999))
        rows.append(
            FixRow(driver_id, lat, lng, float(i % 360), 8.5, 3.0, recorded, i + 1, recorded)
        )
    return rows


@pytest.fixture(scope="module")
async def history(database_url: str) -> AsyncIterator[HistoryStore]:
    store = HistoryStore(create_engine(database_url))
    yield store
    await store.dispose()


@pytest.fixture(scope="module")
async def drive(history: HistoryStore) -> list[FixRow]:
    rows = _drive("export-1", START, FIXES, seed=5)
    await history.insert_fixes(random.Random(2).sample(rows, len(rows)))
    # Another driver's fixes, and this driver's outside the range: never in the documents.
    await history.insert_fixes(
        [*_drive("export-2", START, 40, seed=6), *_drive("export-1", END, 30, seed=7)]
    )
    return rows


def _verify(header: str | None) -> Identity:
    """Tokens in these tests are `Bearer <role>:<sub>`."""
    role, _, sub = (header or "").removeprefix("Bearer ").partition(":")
    return Identity(sub, Role(role))


Stub = Callable[[HistoryStore], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[HistoryStore], Any]]:
    async with AsyncExitStack() as servers:

        async def start(history: HistoryStore) -> pb_grpc.GeoQueryServiceAsyncStub:
            # Only ExportDriverTrack is called: the servicer's other parts are left out.
            return await servers.enter_async_context(geo_stub(_verify, history=history))

        yield start


def _token(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {who}"),)


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _range(
    driver_id: str = "export-1",
    start: datetime = START,
    end: datetime = END,
    fmt: pb.ExportFormat.ValueType = pb.EXPORT_FORMAT_UNSPECIFIED,
) -> pb.ExportDriverTrackRequest:
    return pb.ExportDriverTrackRequest(
        driver_id=driver_id, start_time=_ts(start), end_time=_ts(end), format=fmt
    )


async def _export(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
    request: pb.ExportDriverTrackRequest,
    who: str = "driver:export-1",
) -> tuple[list[pb.ExportDriverTrackResponse], dict[str, str]]:
    call = stub.ExportDriverTrack(request, metadata=_token(who))
    chunks = [chunk async for chunk in call]
    headers = {key: str(value) for key, value in (await call.initial_metadata() or ())}
    return chunks, headers


async def test_a_stored_track_as_gpx(
    serve: Stub, history: HistoryStore, drive: list[FixRow]
) -> None:
    stub = await serve(history)
    chunks, headers = await _export(stub, _range())
    assert len(chunks) > 1
    assert all(len(c.body.data) == CHUNK_BYTES for c in chunks[:-1])
    assert {c.body.content_type for c in chunks} == {"application/gpx+xml"}
    filename = "export-1_2026-12-06T23-30-00Z_2026-12-07T00-30-00Z.gpx"
    assert [c.filename for c in chunks] == [filename] + [""] * (len(chunks) - 1)
    assert headers["content-disposition"] == f'attachment; filename="{filename}"'
    root = assert_valid_gpx(b"".join(c.body.data for c in chunks))
    points = root.findall(f".//{GPX}trkpt")
    assert [(float(p.get("lat")), float(p.get("lon"))) for p in points] == [
        (r.latitude, r.longitude) for r in drive
    ]


async def test_a_stored_track_as_geojson_and_csv_by_staff(
    serve: Stub, history: HistoryStore, drive: list[FixRow]
) -> None:
    stub = await serve(history)
    chunks, _ = await _export(stub, _range(fmt=pb.EXPORT_FORMAT_GEOJSON), who="ops:ops-1")
    assert chunks[0].filename.endswith(".geojson")
    assert {c.body.content_type for c in chunks} == {"application/geo+json"}
    line, *points = json.loads(b"".join(c.body.data for c in chunks))["features"]
    assert line["geometry"]["coordinates"] == [[r.longitude, r.latitude] for r in drive]
    assert [p["properties"]["seq"] for p in points] == [r.seq for r in drive]

    chunks, _ = await _export(stub, _range(fmt=pb.EXPORT_FORMAT_CSV), who="ops:ops-1")
    assert {c.body.content_type for c in chunks} == {"text/csv"}
    _, *records = csv.reader(io.StringIO(b"".join(c.body.data for c in chunks).decode()))
    assert [(float(r[2]), float(r[3]), int(r[7])) for r in records] == [
        (r.latitude, r.longitude, r.seq) for r in drive
    ]


async def test_a_trip_by_its_id_includes_its_last_fix(
    serve: Stub, history: HistoryStore, drive: list[FixRow]
) -> None:
    stub = await serve(history)
    trip = drive[100:250]
    trip_id = encode_trip_id(TripSpan("export-1", trip[0].recorded_at, trip[-1].recorded_at))
    request = pb.ExportDriverTrackRequest(trip_id=trip_id, format=pb.EXPORT_FORMAT_CSV)
    chunks, headers = await _export(stub, request)
    _, *records = csv.reader(io.StringIO(b"".join(c.body.data for c in chunks).decode()))
    assert [int(r[7]) for r in records] == [r.seq for r in trip]
    assert chunks[0].filename.startswith("export-1_trip_")
    assert chunks[0].filename in headers["content-disposition"]


async def test_an_empty_range_is_an_empty_valid_document(
    serve: Stub, history: HistoryStore, drive: list[FixRow]
) -> None:
    stub = await serve(history)
    chunks, _ = await _export(stub, _range(start=START - timedelta(days=3), end=START))
    assert len(chunks) == 1
    root = assert_valid_gpx(chunks[0].body.data)
    assert root.findall(f".//{GPX}trkpt") == []


@pytest.mark.parametrize(
    ("request_", "who", "code", "fragment"),
    [
        (_range(end=START), "driver:export-1", grpc.StatusCode.INVALID_ARGUMENT, "after"),
        (
            _range(end=START + timedelta(days=32)),
            "driver:export-1",
            grpc.StatusCode.INVALID_ARGUMENT,
            "31 days",
        ),
        (
            pb.ExportDriverTrackRequest(trip_id="bm90LWEtdHJpcA"),
            "driver:export-1",
            grpc.StatusCode.INVALID_ARGUMENT,
            "trip_id",
        ),
        (
            pb.ExportDriverTrackRequest(
                trip_id=encode_trip_id(TripSpan("export-1", START, END)),
                driver_id="export-1",
                start_time=_ts(START),
                end_time=_ts(END),
            ),
            "driver:export-1",
            grpc.StatusCode.INVALID_ARGUMENT,
            "not both",
        ),
        (_range(), "driver:export-2", grpc.StatusCode.PERMISSION_DENIED, "export-2"),
        (_range(), "rider:export-1", grpc.StatusCode.PERMISSION_DENIED, "rider"),
        (
            pb.ExportDriverTrackRequest(trip_id=encode_trip_id(TripSpan("export-1", START, END))),
            "driver:export-2",
            grpc.StatusCode.PERMISSION_DENIED,
            "export-1",
        ),
    ],
)
async def test_errors(
    serve: Stub,
    history: HistoryStore,
    request_: pb.ExportDriverTrackRequest,
    who: str,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    stub = await serve(history)
    with pytest.raises(aio.AioRpcError) as failed:
        await _export(stub, request_, who=who)
    assert failed.value.code() == code
    assert fragment in (failed.value.details() or "")


async def test_postgres_away_answers_unavailable_before_any_chunk(serve: Stub) -> None:
    away = HistoryStore(create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none"))
    try:
        stub = await serve(away)
        call = stub.ExportDriverTrack(_range(), metadata=_token("driver:export-1"))
        with pytest.raises(aio.AioRpcError) as failed:
            _ = [chunk async for chunk in call]
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "PostgreSQL" in (failed.value.details() or "")
        assert "content-disposition" not in dict(await call.initial_metadata() or ())
    finally:
        await away.dispose()


class CountingStore(HistoryStore):
    """The real store, counting the pages read and the reads under way."""

    def __init__(self, database_url: str) -> None:
        super().__init__(create_engine(database_url))
        self.pages = 0
        self.in_flight = 0

    async def fixes_page(
        self,
        driver_id: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[FixRow]:
        self.pages += 1
        self.in_flight += 1
        try:
            return await super().fixes_page(driver_id, start, end, after, limit)
        finally:
            self.in_flight -= 1


async def test_a_client_that_goes_away_stops_the_export(
    serve: Stub,
    history: HistoryStore,
    database_url: str,
    drive: list[FixRow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(track_export, "PAGE_ROWS", 50)  # 55 pages for the whole range
    whole_range_pages = FIXES // 50 + 1
    counting = CountingStore(database_url)
    try:
        stub = await serve(counting)
        call = stub.ExportDriverTrack(_range(), metadata=_token("driver:export-1"))
        first = await call.read()
        assert isinstance(first, pb.ExportDriverTrackResponse)
        call.cancel()
        await until(lambda: counting.in_flight == 0, timeout=10)
        read_when_cancelled = counting.pages
        # A whole export on another server: had the first kept reading, it would have finished
        # meanwhile.
        chunks, _ = await _export(await serve(history), _range())
        assert b"".join(c.body.data for c in chunks).endswith(b"</gpx>\n")
        assert counting.pages == read_when_cancelled < whole_range_pages
    finally:
        await counting.dispose()


async def test_exports_are_counted_by_format(
    serve: Stub, history: HistoryStore, drive: list[FixRow]
) -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"format": "CSV"}) or 0.0

    bytes_before = sample("ridemesh_export_bytes_total")
    fixes_before = sample("ridemesh_export_fixes_total")
    chunks, _ = await _export(await serve(history), _range(fmt=pb.EXPORT_FORMAT_CSV))
    sent = sum(len(c.body.data) for c in chunks)
    assert sample("ridemesh_export_bytes_total") - bytes_before == sent
    assert sample("ridemesh_export_fixes_total") - fixes_before == len(drive)
