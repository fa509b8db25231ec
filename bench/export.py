"""Export benchmark: a driver-month downloaded through Envoy as GPX, GeoJSON and CSV (the HTTP
binding of ExportDriverTrack), with the GeoQuery process's memory while it streams."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.stream import mesh_token, migrate
from services.history.store import PARENT_TABLE, HistoryStore, create_engine
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh

DRIVER = "export-bench-1"
CENTRE = (12.9716, 77.5946)  # Bengaluru
FORMATS = ("EXPORT_FORMAT_GPX", "EXPORT_FORMAT_GEOJSON", "EXPORT_FORMAT_CSV")
SAMPLE_EVERY_S = 0.05

# One driver circling the centre, a fix every $3 seconds from $1 for $2 fixes.
_LOAD = f"""
INSERT INTO {PARENT_TABLE}
    (driver_id, location, heading_deg, speed_mps, accuracy_m, recorded_at, seq, received_at)
SELECT '{DRIVER}',
       ST_SetSRID(ST_MakePoint($5::float8 + 0.05 * cos(k / 700.0),
                               $4::float8 + 0.05 * sin(k / 500.0)), 4326)::geography,
       (k % 360)::real, 8.3, 4.5,
       $1::timestamptz + k * make_interval(secs => $3::float8), k + 1,
       $1::timestamptz + k * make_interval(secs => $3::float8)
FROM generate_series(0, $2::int - 1) AS k
"""


async def load(database_url: str, start: datetime, days: int, interval_s: float) -> int:
    store = HistoryStore(create_engine(database_url))
    fixes = int(days * 86_400 / interval_s)
    try:
        await store.ensure_partitions((start + timedelta(days=n)).date() for n in range(days))
        async with store.connection() as apg:
            await apg.execute(_LOAD, start, fixes, interval_s, *CENTRE)
            await apg.execute(f"VACUUM (ANALYZE) {PARENT_TABLE}")
    finally:
        await store.dispose()
    return fixes


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def download(
    client: httpx.AsyncClient, params: dict[str, str], geo_pid: int
) -> dict[str, Any]:
    """One download, streamed and counted (not kept), sampling the GeoQuery process's RSS."""
    before = _rss_kib(geo_pid)
    peak = before
    size = 0
    started = time.perf_counter()
    first_byte_s = None
    async with client.stream("GET", f"/v1/drivers/{DRIVER}/track:export", params=params) as r:
        r.raise_for_status()
        last_sample = started
        async for data in r.aiter_raw():
            if first_byte_s is None:
                first_byte_s = time.perf_counter() - started
            size += len(data)
            if time.perf_counter() - last_sample >= SAMPLE_EVERY_S:
                peak = max(peak, _rss_kib(geo_pid))
                last_sample = time.perf_counter()
    seconds = time.perf_counter() - started
    return {
        "content_type": r.headers["content-type"],
        "seconds": round(seconds, 2),
        "first_byte_s": round(first_byte_s or seconds, 3),
        "mib": round(size / 2**20, 1),
        "mib_per_s": round(size / 2**20 / seconds, 1),
        "geo_rss_before_mib": round(before / 1024),
        "geo_rss_peak_mib": round(peak / 1024),
    }


async def run_downloads(mesh: Mesh, fixes: int, start: datetime, days: int) -> dict[str, Any]:
    assert mesh.envoy is not None
    (geo,) = [p for p in mesh.parts if isinstance(p, ManagedProcess) and p.name.startswith("geo:")]
    geo_pid = geo.pids[0]
    params = {
        "start_time": start.isoformat().replace("+00:00", "Z"),
        "end_time": (start + timedelta(days=days)).isoformat().replace("+00:00", "Z"),
    }
    headers = {"authorization": f"Bearer {mesh_token(mesh)}"}
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=mesh.envoy.url, headers=headers, timeout=httpx.Timeout(600)
    ) as client:
        for fmt in FORMATS:
            result = await download(client, {**params, "format": fmt}, geo_pid)
            result["fixes_per_s"] = round(fixes / result["seconds"])
            results[fmt] = result
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__)
    parser.add_argument("--days", type=int, default=30, help="the driver's days of fixes")
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between fixes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # Whole days ending yesterday: within retention and clear of today's partition.
    start = datetime.combine(
        datetime.now(UTC).date() - timedelta(days=args.days), datetime.min.time(), tzinfo=UTC
    )
    with (
        tempfile.TemporaryDirectory(prefix="ridemesh-bench-export-") as tmp,
        start_mesh(MeshSettings(run_dir=Path(tmp)), before_services=migrate) as mesh,
    ):
        assert mesh.database_url is not None
        began = time.perf_counter()
        fixes = asyncio.run(load(mesh.database_url, start, args.days, args.interval))
        loaded_s = time.perf_counter() - began
        results = asyncio.run(run_downloads(mesh, fixes, start, args.days))
    print(
        json.dumps(
            {
                "fixes": fixes,
                "days": args.days,
                "interval_s": args.interval,
                "load_s": round(loaded_s, 1),
                "downloads": results,
                "machine": platform.platform(),
            }
        )
    )


if __name__ == "__main__":
    main()
