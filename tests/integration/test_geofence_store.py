"""Geofences against a real PostGIS and Redis: CRUD, keyset pages, CheckPoint and the indexes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument, NotFound
from services.geo import geofences as rpc
from services.geo.geofence_store import GeofenceStore
from services.geo.zones import parse_geofence
from services.history.store import create_engine
from services.live.names import ZONE_CHANGES_CHANNEL
from services.ops.mesh.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 6


def square(west: float, south: float, east: float, north: float) -> list[list[float]]:
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def polygon_json(*rings: list[list[float]]) -> str:
    return json.dumps({"type": "Polygon", "coordinates": list(rings)})


TEMPELHOF = polygon_json(square(13.38, 52.46, 13.42, 52.48))


@pytest.fixture(scope="module")
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[GeofenceStore]:
    engine = create_engine(database_url)
    yield GeofenceStore(engine)
    await engine.dispose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    # Each test starts from no zones (TRUNCATE also bumps the revision, as the trigger says).
    await conn.execute("TRUNCATE geofences")
    yield conn
    await conn.close()


def create_request(
    name: str, geojson: str, labels: dict[str, str] | None = None
) -> pb.CreateGeofenceRequest:
    return pb.CreateGeofenceRequest(
        geofence=pb.Geofence(display_name=name, geojson=geojson, labels=labels or {})
    )


async def create(store: GeofenceStore, redis: Redis, name: str, geojson: str, **labels: str) -> str:
    response = await rpc.create_geofence(store, redis, create_request(name, geojson, labels))
    return response.geofence.geofence_id


async def check(store: GeofenceStore, lat: float, lng: float) -> list[str]:
    request = pb.CheckPointRequest(point=common_pb2.LatLng(latitude=lat, longitude=lng))
    response = await rpc.check_point(store, request)
    return [g.display_name for g in response.geofences]


async def test_migration_creates_table_with_gist_and_gin_indexes(pg: Any) -> None:
    indexes = {
        row["indexname"]: row["indexdef"]
        for row in await pg.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1", "geofences"
        )
    }
    assert "USING gist (geom)" in indexes["geofences_geom_gist"]
    assert "USING gin (labels jsonb_path_ops)" in indexes["geofences_labels_gin"]
    assert await pg.fetchval("SELECT version_num FROM alembic_version") >= "0002"
    column = await pg.fetchrow(
        "SELECT type, srid FROM geometry_columns WHERE f_table_name = 'geofences'"
    )
    assert (column["type"], column["srid"]) == ("MULTIPOLYGON", 4326)


async def test_point_query_uses_the_gist_index(pg: Any) -> None:
    await pg.execute("SET enable_seqscan = off")  # a tiny table would otherwise be scanned
    plan = "\n".join(
        row[0]
        for row in await pg.fetch(
            "EXPLAIN SELECT geofence_id FROM geofences "
            "WHERE ST_Intersects(geom, ST_SetSRID(ST_MakePoint(13.4, 52.47), 4326))"
        )
    )
    assert "geofences_geom_gist" in plan, plan


async def test_crud_round_trip(store: GeofenceStore, redis: Redis, pg: Any) -> None:
    sent = json.dumps(
        {"type": "Polygon", "coordinates": [square(13.38, 52.46, 13.42, 52.48)]}, indent=2
    )
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(ZONE_CHANGES_CHANNEL)
    created = (
        await rpc.create_geofence(store, redis, create_request("Tempelhof", sent, {"kind": "park"}))
    ).geofence
    assert len(created.geofence_id) == 36  # a UUID4
    assert created.display_name == "Tempelhof"
    assert dict(created.labels) == {"kind": "park"}
    assert json.loads(created.geojson) == json.loads(sent)
    assert "\n" not in created.geojson  # canonical, compact
    age = datetime.now(UTC) - created.create_time.ToDatetime(tzinfo=UTC)
    assert timedelta(0) <= age < timedelta(minutes=1)
    assert await _next_message(pubsub) == ZONE_CHANGES_CHANNEL  # every replica is told

    got = (
        await rpc.get_geofence(store, pb.GetGeofenceRequest(geofence_id=created.geofence_id))
    ).geofence
    assert got == created
    # Stored as a MultiPolygon in (longitude, latitude) order.
    row = await pg.fetchrow("SELECT ST_AsText(geom) AS wkt, ST_SRID(geom) AS srid FROM geofences")
    assert row["wkt"].startswith("MULTIPOLYGON(((13.38 52.46")
    assert row["srid"] == 4326

    await rpc.delete_geofence(
        store, redis, pb.DeleteGeofenceRequest(geofence_id=created.geofence_id)
    )
    assert await _next_message(pubsub) == ZONE_CHANGES_CHANNEL
    with pytest.raises(NotFound, match=created.geofence_id):
        await rpc.get_geofence(store, pb.GetGeofenceRequest(geofence_id=created.geofence_id))
    with pytest.raises(NotFound):
        await rpc.delete_geofence(
            store, redis, pb.DeleteGeofenceRequest(geofence_id=created.geofence_id)
        )
    await pubsub.aclose()


async def _next_message(pubsub: Any) -> str:
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
    while message is None:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
    channel = message["channel"]
    return channel.decode() if isinstance(channel, bytes) else str(channel)


async def test_unhappy_paths_are_invalid_argument_or_not_found(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    with pytest.raises(InvalidArgument, match="geofence is required"):
        await rpc.create_geofence(store, redis, pb.CreateGeofenceRequest())
    with pytest.raises(InvalidArgument, match="not closed"):
        await rpc.create_geofence(
            store, redis, create_request("open", polygon_json([[0, 0], [1, 0], [1, 1], [0, 1]]))
        )
    with pytest.raises(InvalidArgument, match="Self-intersection"):
        await rpc.create_geofence(
            store,
            redis,
            create_request("bowtie", polygon_json([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]])),
        )
    with pytest.raises(InvalidArgument, match="geofence_id is required"):
        await rpc.get_geofence(store, pb.GetGeofenceRequest())
    with pytest.raises(InvalidArgument, match="geofence_id is required"):
        await rpc.delete_geofence(store, redis, pb.DeleteGeofenceRequest())
    with pytest.raises(NotFound):
        await rpc.get_geofence(store, pb.GetGeofenceRequest(geofence_id="no-such-zone"))
    with pytest.raises(InvalidArgument, match="point is required"):
        await rpc.check_point(store, pb.CheckPointRequest())
    with pytest.raises(InvalidArgument, match="latitude"):
        await check(store, 95.0, 0.0)
    assert await pg.fetchval("SELECT count(*) FROM geofences") == 0


async def test_pagination_across_three_pages_with_label_filter(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    airports = []
    for i in range(7):
        airports.append(
            await create(
                store, redis, f"airport {i}", polygon_json(square(i, 0, i + 0.5, 1)), kind="airport"
            )
        )
        await create(
            store, redis, f"park {i}", polygon_json(square(i, 10, i + 0.5, 11)), kind="park"
        )

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await rpc.list_geofences(
            store, pb.ListGeofencesRequest(page_size=3, page_token=token, filter="kind=airport")
        )
        pages += 1
        seen += [g.geofence_id for g in response.geofences]
        assert all(g.labels["kind"] == "airport" for g in response.geofences)
        token = response.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == airports  # oldest first, each exactly once

    everything = await rpc.list_geofences(store, pb.ListGeofencesRequest())
    assert len(everything.geofences) == 14
    assert everything.next_page_token == ""
    assert [g.display_name for g in everything.geofences][:2] == ["airport 0", "park 0"]

    # A page boundary exactly at the end: the last full page says there is no next one.
    exact = await rpc.list_geofences(
        store, pb.ListGeofencesRequest(page_size=7, filter="kind=airport")
    )
    assert len(exact.geofences) == 7
    assert exact.next_page_token == ""
    none = await rpc.list_geofences(store, pb.ListGeofencesRequest(filter="kind=stadium"))
    assert list(none.geofences) == []


async def test_zones_with_one_create_time_still_page_by_id(store: GeofenceStore, pg: Any) -> None:
    for i in range(5):
        await store.create(parse_geofence(f"z{i}", polygon_json(square(i, 0, i + 0.5, 1)), {}))
    await pg.execute("UPDATE geofences SET create_time = '2026-01-01T00:00:00Z'")
    ids = sorted(await pg.fetchval("SELECT array_agg(geofence_id) FROM geofences"))
    page, cursor = await store.list(2)
    collected = [g.geofence_id for g in page]
    while cursor is not None:
        page, cursor = await store.list(2, cursor)
        collected += [g.geofence_id for g in page]
    assert collected == ids


async def test_bad_page_tokens_and_filters_are_refused(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    for i in range(3):
        await create(store, redis, f"a{i}", polygon_json(square(i, 0, i + 0.5, 1)), kind="airport")
    first = await rpc.list_geofences(
        store, pb.ListGeofencesRequest(page_size=1, filter="kind=airport")
    )
    assert first.next_page_token
    with pytest.raises(InvalidArgument, match="different filter"):
        await rpc.list_geofences(
            store, pb.ListGeofencesRequest(page_size=1, page_token=first.next_page_token)
        )
    with pytest.raises(InvalidArgument, match="page_token is not valid"):
        await rpc.list_geofences(store, pb.ListGeofencesRequest(page_token="garbage!!"))
    with pytest.raises(InvalidArgument, match="key=value"):
        await rpc.list_geofences(store, pb.ListGeofencesRequest(filter="airport"))
    with pytest.raises(InvalidArgument, match="page_size"):
        await rpc.list_geofences(store, pb.ListGeofencesRequest(page_size=-1))
    # A changed page_size is allowed between pages (AIP-158), and too large is coerced.
    second = await rpc.list_geofences(
        store,
        pb.ListGeofencesRequest(
            page_size=10_000, page_token=first.next_page_token, filter="kind=airport"
        ),
    )
    assert [g.display_name for g in second.geofences] == ["a1", "a2"]


async def test_check_point_inside_outside_and_on_the_boundary(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    await create(store, redis, "tempelhof", TEMPELHOF)
    outer = square(0, 0, 10, 10)
    hole = square(4, 4, 6, 6)
    await create(store, redis, "ring", polygon_json(outer, hole))
    assert await check(store, 52.47, 13.40) == ["tempelhof"]
    assert await check(store, 52.47, 13.43) == []
    assert await check(store, 52.46, 13.40) == ["tempelhof"]  # on the south edge
    assert await check(store, 52.48, 13.42) == ["tempelhof"]  # on a corner
    assert await check(store, 2, 2) == ["ring"]
    assert await check(store, 5, 5) == []  # in the hole
    assert await check(store, 4, 5) == ["ring"]  # on the hole's edge
    # Latitude and longitude are not swapped anywhere: (13.40, 52.47) is in the Indian Ocean.
    assert await check(store, 13.40, 52.47) == []


async def test_check_point_multipolygon_across_the_antimeridian(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    fiji = json.dumps(
        {
            "type": "MultiPolygon",
            "coordinates": [[square(177, -19, 180, -16)], [square(-180, -19, -178, -16)]],
        }
    )
    await create(store, redis, "fiji", fiji)
    await create(store, redis, "overlapping", polygon_json(square(178, -18, 179, -17)))
    assert await check(store, -17.5, 179.5) == ["fiji"]
    assert await check(store, -17.5, -179.0) == ["fiji"]
    assert await check(store, -17.5, 180.0) == ["fiji"]
    assert await check(store, -17.5, -180.0) == ["fiji"]
    assert await check(store, -17.5, 178.5) == ["fiji", "overlapping"]  # oldest first
    assert await check(store, -17.5, -177.0) == []
    assert await check(store, -17.5, 170.0) == []


async def test_all_zones_matches_what_check_point_answers(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    await create(store, redis, "tempelhof", TEMPELHOF, kind="park")
    revision, zones = await store.snapshot()
    assert revision == await store.revision()
    (zone,) = zones
    assert (zone.display_name, dict(zone.labels)) == ("tempelhof", {"kind": "park"})
    assert zone.geometry.geom_type == "MultiPolygon"
    assert zone.geometry.bounds == (13.38, 52.46, 13.42, 52.48)


async def test_revision_moves_on_every_change_only(
    store: GeofenceStore, redis: Redis, pg: Any
) -> None:
    start = await store.revision()
    geofence_id = await create(store, redis, "tempelhof", TEMPELHOF)
    after_create = await store.revision()
    assert after_create > start
    assert not await store.delete("no-such-zone")
    assert await store.revision() == after_create  # nothing changed: no replica reloads
    assert await store.delete(geofence_id)
    assert await store.revision() > after_create
