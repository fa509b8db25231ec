"""Queries that span partitions give the answers one Redis gives: random fleets (near the poles
and across the antimeridian too) written to one Redis with one partition and to a real Redis
Cluster with twelve, then the same nearby searches, area snapshots and heatmaps asked of both."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import BoundingBox, DriverAvailability, LatLng
from services.domain.area import Box
from services.geo.heatmap import supply_heatmap
from services.geo.nearby import search_nearby_drivers
from services.live import names
from services.live.client import redis_client
from services.live.store import LiveStore
from services.ops.mesh.redis_cluster import RedisClusterServer
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_drivers import LIVE_WINDOW_S, destination, ingest, set_availability

pytestmark = pytest.mark.integration

REDIS_DB = 11
BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(Path(tmp_path_factory.mktemp("cluster"))) as server:
        yield server


@dataclass(frozen=True)
class Driver:
    driver_id: str
    lat: float
    lng: float
    busy: bool


@dataclass(frozen=True)
class Query:
    lat: float
    lng: float
    radius_m: float
    limit: int
    available_only: bool
    half_height_deg: float
    half_width_deg: float


# Centres where partitions and the geo index's edges meet trouble: the antimeridian, the index's
# latitude limit (±85.05°, beyond which drivers live in the polar sets) and the poles.
_EDGES = st.sampled_from(
    [(0.0, 179.995), (-33.9, -179.99), (85.05, 10.0), (-85.06, 170.0), (89.99, -45.0), (-89.9, 0)]
)
_ANYWHERE = st.tuples(st.floats(-89.5, 89.5), st.floats(-180.0, 180.0))


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[Driver], list[Query]]:
    lat, lng = draw(st.one_of(_EDGES, _ANYWHERE))
    rng = random.Random(draw(st.integers(0, 2**32)))
    spread_m = draw(st.sampled_from([200.0, 5_000.0, 40_000.0]))
    drivers = []
    for i in range(draw(st.integers(0, 60))):
        d_lat, d_lng = destination(
            lat, lng, rng.uniform(0, 360), spread_m * math.sqrt(rng.random())
        )
        drivers.append(
            Driver(f"prop-{i}-{rng.getrandbits(32):08x}", d_lat, d_lng, rng.random() < 0.2)
        )
    queries = []
    for _ in range(3):
        q_lat, q_lng = destination(lat, lng, rng.uniform(0, 360), spread_m * rng.random())
        queries.append(
            Query(
                q_lat,
                q_lng,
                radius_m=rng.choice([50.0, 1_000.0, 20_000.0, 50_000.0]),
                limit=rng.choice([1, 5, 20, 500]),
                available_only=rng.random() < 0.5,
                half_height_deg=rng.choice([0.01, 0.2, 1.0]),
                half_width_deg=rng.choice([0.01, 0.2, 1.0]),
            )
        )
    return drivers, queries


async def _flush_cluster(redis: Redis) -> None:
    """Empties every master (the client is a RedisCluster typed as Redis)."""
    cluster: Any = redis
    await cluster.execute_command("FLUSHALL", target_nodes=RedisCluster.PRIMARIES)


def _box(query: Query) -> BoundingBox:
    """A box around the query point; across the antimeridian when it reaches past ±180°."""
    south = max(-90.0, query.lat - query.half_height_deg)
    north = min(90.0, query.lat + query.half_height_deg)
    west = query.lng - query.half_width_deg
    east = query.lng + query.half_width_deg
    west = west + 360.0 if west < -180.0 else west
    east = east - 360.0 if east > 180.0 else east
    return BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )


async def _answers(
    redis: Redis, drivers: list[Driver], queries: list[Query], now_s: float
) -> list[object]:
    """Writes the fleet through LiveStore (the partition count is the client's), then asks."""
    live = LiveStore(redis, LIVE_WINDOW_S)
    await asyncio.gather(*(ingest(live, d.driver_id, d.lat, d.lng, now_s - 1) for d in drivers))
    for d in drivers:
        if d.busy:
            await set_availability(redis, d.driver_id, BUSY)
    answers: list[object] = []
    for q in queries:
        nearby = await search_nearby_drivers(
            live,
            pb.SearchNearbyDriversRequest(
                center=LatLng(latitude=q.lat, longitude=q.lng),
                radius_m=q.radius_m,
                max_results=q.limit,
                available_only=q.available_only,
            ),
            now_s,
        )
        answers.append([(n.location.driver_id, round(n.distance_m, 6)) for n in nearby.drivers])
        box = _box(q)
        inside = await live.locations_in_box(Box.from_proto(box), 1_000)
        answers.append(sorted(location.driver_id for location in inside))
        heatmap = await supply_heatmap(live, pb.GetSupplyHeatmapRequest(bounds=box, resolution=4))
        answers.append([(c.h3_cell, c.available_drivers) for c in heatmap.cells])
    return answers


async def _on_one_redis(
    redis_server: RedisServer, drivers: list[Driver], queries: list[Query], now_s: float
) -> list[object]:
    redis = redis_client(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
    try:
        assert names.partition_count() == 1
        await redis.flushdb()
        return await _answers(redis, drivers, queries, now_s)
    finally:
        await redis.aclose()


async def _on_the_cluster(
    cluster: RedisClusterServer, drivers: list[Driver], queries: list[Query], now_s: float
) -> list[object]:
    redis = redis_client(cluster.url)
    try:
        assert names.partition_count() == 12
        await _flush_cluster(redis)
        return await _answers(redis, drivers, queries, now_s)
    finally:
        await redis.aclose()
        names.use_partitions(1)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fleet=fleets())
def test_partitioned_answers_equal_one_redis(
    fleet: tuple[list[Driver], list[Query]],
    redis_server: RedisServer,
    cluster: RedisClusterServer,
) -> None:
    drivers, queries = fleet
    now_s = time.time()
    single = asyncio.run(_on_one_redis(redis_server, drivers, queries, now_s))
    partitioned = asyncio.run(_on_the_cluster(cluster, drivers, queries, now_s))
    assert partitioned == single


def test_a_fleet_spreads_over_every_master(cluster: RedisClusterServer) -> None:
    """The partitions' tags land on every master, so the fixes do too."""

    async def count_keys() -> list[int]:
        redis = redis_client(cluster.url)
        try:
            await _flush_cluster(redis)
            live = LiveStore(redis, LIVE_WINDOW_S)
            now_s = time.time()
            await asyncio.gather(
                *(ingest(live, f"spread-{i}", 52.5, 13.4 + i * 1e-4, now_s) for i in range(300))
            )
            sizes = []
            for port in sorted({port for _, _, port in cluster.masters_by_slot_range()}):
                node = Redis(port=port)
                sizes.append(await node.dbsize())
                await node.aclose()
            return sizes
        finally:
            await redis.aclose()
            names.use_partitions(1)

    sizes = asyncio.run(count_keys())
    assert len(sizes) == 3
    assert all(size > 60 for size in sizes), sizes  # 300 drivers over three masters: a third each
