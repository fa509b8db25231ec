"""Stream benchmark: D driver streams, W% watched (WatchDriver) plus WatchArea watchers; acks,
watcher latency, persistence lag, CPU and RSS of every process.

`--target envoy` (the default) goes through Envoy, `direct` straight to the one LocationService
replica, `echo` to a bare grpc.aio echo server (bench/echo.py) instead of the mesh: the same load
shape against each, so their ratios mean something on a noisy machine.

`--loadgen node` (the default) generates the load with bench/grpcjs/loadgen.js on @grpc/grpc-js,
which costs less CPU than `--loadgen python` (bench/loadgen.py on grpc.aio), the same load kept
as a cross-check; `loadgen_cpu_s` in the report is what the load generator itself used."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import nodeload
from bench.loadgen import DRAIN_S, LoadPlan, LoadResult, area_boxes, driver_id, worker
from bench.procstat import TreeUsage, usage_of
from services.auth.identity import Role
from services.auth.keys import mint_token
from services.history.migrate import run_migrations
from services.ops.mesh.ports import free_port, port_open
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_cluster import RedisClusterServer, redis_command
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh

# Beyond the load window and the drain, the whole run is cut off after this much slack.
HARD_STOP_SLACK_S = 60.0
# Workers need a moment to import grpc and the stubs before the shared start time.
WORKER_WARMUP_S = 4.0


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p99 and max in milliseconds (None when there are no samples), plus the count."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 2)}


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """One result from the workers' (every field adds up: counts, Counters and lists)."""
    total = LoadResult()
    for part in results:
        for name in (f.name for f in fields(LoadResult)):
            setattr(total, name, getattr(total, name) + getattr(part, name))
    return total


def mesh_roots(mesh: Mesh) -> list[tuple[str, int]]:
    """(name, pid) of every process the mesh started, named after its role."""
    roots: list[tuple[str, int]] = []
    for part in mesh.parts:
        if isinstance(part, RedisClusterServer):  # one part, a process per node
            roots += [
                (f"redis-{port}", pid) for port, pid in zip(part.ports, part.pids, strict=True)
            ]
            continue
        name = str(getattr(getattr(part, "process", part), "name", type(part).__name__))
        roots.append((name, part.pids[0]))
    return roots


def redis_ports(mesh: Mesh) -> list[int]:
    if mesh.redis_cluster is not None:
        return list(mesh.redis_cluster.ports)
    return [mesh.redis.port] if mesh.redis is not None else []


def redis_commands(ports: Sequence[int]) -> dict[int, int]:
    """Commands each Redis node has processed so far (INFO stats)."""
    counts = {}
    for port in ports:
        stats = redis_command(port, "INFO", "stats")
        line = next(x for x in stats.splitlines() if x.startswith("total_commands_processed:"))
        counts[port] = int(line.split(":", 1)[1])
    return counts


def redis_report(
    mesh: Mesh, before: dict[int, int], after: dict[int, int], usage: dict[str, Any]
) -> dict[str, Any]:
    """Per Redis node: its role, and the commands it ran (and CPU it used) in the run."""
    masters = set(after)
    if mesh.redis_cluster is not None:
        masters = {port for _, _, port in mesh.redis_cluster.masters_by_slot_range()}
    nodes = {}
    for port in after:
        cpu = usage.get(f"redis-{port}", usage.get("redis", {})).get("cpu_s")
        role = "master" if port in masters else "replica"
        nodes[str(port)] = {"role": role, "commands": after[port] - before[port], "cpu_s": cpu}
    return nodes


BENCH_TOKEN_TTL_S = 6 * 3600


def mesh_token(mesh: Mesh) -> str:
    """An ops token signed with the mesh's development key, valid for the whole benchmark."""
    assert mesh.keys is not None, "benchmarks run a development mesh"
    pem, kid = mesh.keys.private_pem(), mesh.keys.kid
    return mint_token(pem, kid, sub="bench", role=Role.OPS, ttl_s=BENCH_TOKEN_TTL_S)


def driver_token(mesh: Mesh, driver_id: str) -> str:
    """A driver's own token signed with the mesh's development key (drivers stream only as
    themselves)."""
    assert mesh.keys is not None, "benchmarks run a development mesh"
    pem, kid = mesh.keys.private_pem(), mesh.keys.kid
    return mint_token(pem, kid, sub=driver_id, role=Role.DRIVER, ttl_s=BENCH_TOKEN_TTL_S)


def plans(
    args: argparse.Namespace,
    address: str,
    token: str,
    start_at: float,
    mint_driver: Callable[[str], str],
) -> list[LoadPlan]:
    run_id = uuid.uuid4().hex[:8]
    every = max(1, round(100 / args.watch_percent)) if args.watch_percent > 0 else 0
    boxes = area_boxes(args.area_watchers, 0.05) if args.area_watchers > 0 else []
    return [
        LoadPlan(
            address=address,
            token=token,
            run_id=run_id,
            drivers=list(range(w, args.drivers, args.workers)),
            driver_tokens={
                i: mint_driver(driver_id(run_id, i)) for i in range(w, args.drivers, args.workers)
            },
            watched=[i for i in range(w, args.drivers, args.workers) if every and i % every == 0],
            start_at=start_at,
            open_rate=args.open_rate,
            interval_s=args.interval,
            duration_s=args.duration,
            streams_per_channel=args.streams_per_channel,
            area_boxes=boxes[w :: args.workers],
            drivers_total=args.drivers,
        )
        for w in range(args.workers)
    ]


def children_cpu_s() -> float:
    """User plus system CPU seconds of this process's children that have exited and been reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(
    args: argparse.Namespace, address: str, token: str, mint_driver: Callable[[str], str]
) -> tuple[LoadResult, float]:
    """Runs the workers until they report or the hard stop passes; merges what they saw. Also
    returns the workers' CPU seconds, start to exit: RUSAGE_CHILDREN before and after, as the
    workers are the only children this process reaps meanwhile (the mesh's outlive the load)."""
    start_at = time.time() + WORKER_WARMUP_S
    worker_plans = plans(args, address, token, start_at, mint_driver)
    deadline = start_at + args.duration + DRAIN_S + HARD_STOP_SLACK_S
    cpu_before = children_cpu_s()
    if args.loadgen == "node":
        results = nodeload.run_workers(worker_plans, deadline)
    else:
        results = python_workers(worker_plans, deadline)
    return merge(results), children_cpu_s() - cpu_before


def python_workers(worker_plans: Sequence[LoadPlan], deadline: float) -> list[LoadResult]:
    """bench/loadgen.py in one spawned process per plan; their results."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=worker, args=(plan, queue), daemon=True) for plan in worker_plans
    ]
    for process in processes:
        process.start()
    results = []
    try:
        for _ in processes:
            results.append(queue.get(timeout=max(1.0, deadline - time.time())))
    finally:
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.time()))
            if process.is_alive():
                process.terminate()  # our own child, by its PID
                process.join(5)
    return results


def usage_report(before: dict[str, TreeUsage], after: dict[str, TreeUsage]) -> dict[str, Any]:
    return {
        name: {
            "pids": len(after[name].pids),
            "cpu_s": round(after[name].cpu_s - before[name].cpu_s, 2),
            "rss_before_mib": round(before[name].rss_kib / 1024, 1),
            "rss_after_mib": round(after[name].rss_kib / 1024, 1),
            "peak_rss_mib": round(after[name].hwm_kib / 1024, 1),
        }
        for name in after
    }


def report(
    args: argparse.Namespace, load: LoadResult, usage: dict[str, Any], loadgen_cpu_s: float
) -> dict[str, Any]:
    usage = dict(usage)
    redis_nodes = usage.pop("redis_nodes", {})
    mesh_cpu_s = sum(part["cpu_s"] for part in usage.values())
    return {
        "bench": "stream",
        "target": args.target,
        "loadgen": args.loadgen,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "drivers": args.drivers,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "workers": args.workers,
        "location_replicas": args.location_replicas,
        "envoy_workers": args.envoy_workers,
        "streams_opened": load.streams_opened,
        "streams_held": load.streams_held,
        "watchers": load.watchers,
        "watch_updates": load.watch_updates,
        "fixes_sent": load.fixes_sent,
        "fixes_acked": load.fixes_acked,
        "fixes_durable": load.fixes_durable,
        "fixes_acked_per_s": round(load.fixes_acked / args.duration, 1),
        "rejected": dict(load.rejected),
        "errors": dict(Counter(load.errors).most_common(10)),
        "ack_ms": percentiles(load.ack_ms),
        "watch_ms": percentiles(load.watch_ms),
        "watch_from_server_ms": percentiles(load.watch_from_server_ms),
        "area_watchers": load.area_watchers,
        "area_updates": load.area_updates,
        "area_ms": percentiles(load.area_ms),
        "client_loop_lag_ms": percentiles(load.client_lag_ms),
        "persistence_lag_ms": percentiles(load.durable_ms),
        "mesh_cpu_s": round(mesh_cpu_s, 2),
        "mesh_cpu_ms_per_acked_fix": (
            round(mesh_cpu_s * 1000 / load.fixes_acked, 3) if load.fixes_acked else None
        ),
        "processes": usage,
        "redis_cluster": getattr(args, "redis_cluster", False),
        "geo_replicas": getattr(args, "geo_replicas", 1),
        "redis_nodes": {
            port: {
                **node,
                "commands_per_fix": round(node["commands"] / load.fixes_acked, 2)
                if load.fixes_acked
                else None,
            }
            for port, node in redis_nodes.items()
        },
        # The load generator's own CPU (all its workers, start to exit), not part of mesh_cpu_s.
        "loadgen_cpu_s": round(loadgen_cpu_s, 2),
    }


def samples(load: LoadResult) -> dict[str, list[float]]:
    """The raw latencies, for plots."""
    return {
        "ack_ms": [round(v, 3) for v in load.ack_ms],
        "watch_ms": [round(v, 3) for v in load.watch_ms],
        "area_ms": [round(v, 3) for v in load.area_ms],
        "persistence_lag_ms": [round(v, 3) for v in load.durable_ms],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--drivers", type=int, default=1000, help="driver streams (default 1000)")
    add("--interval", type=float, default=4.0, help="seconds between a driver's fixes (default 4)")
    add("--duration", type=float, default=60.0, help="load window in seconds (default 60)")
    add("--open-rate", type=float, default=200.0, help="streams opened per second (default 200)")
    add("--watch-percent", type=float, default=5.0, help="drivers also watched (default 5)")
    add("--workers", type=int, default=2, help="load-generator processes (default 2)")
    add("--streams-per-channel", type=int, default=100, help="streams per HTTP/2 connection")
    add("--location-replicas", type=int, default=1, help="LocationService replicas (default 1)")
    add("--envoy-workers", type=int, help="Envoy's --concurrency (default: one per CPU)")
    add("--geo-replicas", type=int, default=1, help="GeoQueryService replicas (default 1)")
    add("--redis-cluster", action="store_true", help="a 3-master Redis Cluster, not one Redis")
    add("--fix-rate", type=float, default=1000.0, help="RIDEMESH_FIX_RATE_PER_S for the mesh")
    add("--durable", action="store_true", help="PostgreSQL fsync and Redis AOF on (default off)")
    add("--area-watchers", type=int, default=10, help="WatchArea streams, each ~5%% of drivers")
    add("--target", choices=("envoy", "direct", "echo"), default="envoy", help="where to connect")
    add("--loadgen", choices=("node", "python"), default="node", help="load generator (node)")
    add("--samples", action="store_true", help="include the raw latencies in the JSON")
    add("--profile", type=Path, help="py-spy each LocationService replica into this directory")
    args = parser.parse_args(argv)
    if args.target == "direct" and args.location_replicas != 1:
        parser.error("--target direct needs --location-replicas 1")
    if args.target == "echo":  # the echo server answers StreamLocations only
        args.watch_percent, args.area_watchers = 0.0, 0
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """One run as a report (with raw samples when --samples)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ridemesh-bench-stream-") as tmp:
        if args.target == "echo":
            load, usage, loadgen_cpu_s = _against_echo(args, Path(tmp))
        else:
            load, usage, loadgen_cpu_s = _against_mesh(args, Path(tmp))
    result = report(args, load, usage, loadgen_cpu_s)
    if args.samples:
        result["samples"] = samples(load)
    return result


def _against_mesh(
    args: argparse.Namespace, run_dir: Path
) -> tuple[LoadResult, dict[str, Any], float]:
    settings = MeshSettings(
        run_dir=run_dir,
        replicas={"location": args.location_replicas, "ride": 1, "geo": args.geo_replicas},
        redis_cluster=args.redis_cluster,
        durable=args.durable,
        envoy_workers=args.envoy_workers,
        env={
            "RIDEMESH_FIX_RATE_PER_S": str(args.fix_rate),
            "RIDEMESH_FIX_BURST": str(int(args.fix_rate)),
        },
    )
    with start_mesh(settings, before_services=migrate) as mesh:
        assert mesh.envoy is not None
        address = mesh.envoy.address
        if args.target == "direct":
            address = f"127.0.0.1:{mesh.services['location'][0]}"
        roots = mesh_roots(mesh)
        profilers = _profilers(args, roots)
        before = usage_of(roots)
        commands_before = redis_commands(redis_ports(mesh))
        try:
            load, loadgen_cpu_s = run_load(
                args, address, mesh_token(mesh), lambda d: driver_token(mesh, d)
            )
        finally:
            for profiler in profilers:
                profiler.wait(timeout=args.duration + 120)
        usage = usage_report(before, usage_of(roots))
        commands = redis_commands(redis_ports(mesh))
        usage["redis_nodes"] = redis_report(mesh, commands_before, commands, usage)
        return load, usage, loadgen_cpu_s


def _profilers(args: argparse.Namespace, roots: list[tuple[str, int]]) -> list[Any]:
    """py-spy sampling each LocationService replica through the load window (collapsed stacks,
    for bench/profile.py), started now and ended by py-spy itself after the window."""
    if args.profile is None:
        return []
    args.profile.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    window = str(int(WORKER_WARMUP_S + args.duration))
    return [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                window,
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(args.profile / f"{name.replace(':', '-')}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in roots
        if name.startswith("location")
    ]


def _against_echo(
    args: argparse.Namespace, run_dir: Path
) -> tuple[LoadResult, dict[str, Any], float]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.echo", "--port", str(port)]
    with ManagedProcess("echo", argv, run_dir / "echo.log") as echo:
        echo.wait_ready(lambda: port_open(port), 30)
        roots = [("echo", echo.pid)]
        before = usage_of(roots)
        load, loadgen_cpu_s = run_load(args, f"127.0.0.1:{port}", "unused", lambda d: "unused")
        return load, usage_report(before, usage_of(roots)), loadgen_cpu_s


def main(argv: Sequence[str] | None = None) -> None:
    try:
        result = run(argv)
    except nodeload.NodePackagesMissing as error:
        raise SystemExit(f"bench.stream: {error}") from error
    print(json.dumps(result))


def migrate(mesh: Mesh) -> None:
    """Runs before the services start, once PostgreSQL is up."""
    assert mesh.database_url is not None
    run_migrations(mesh.database_url)


if __name__ == "__main__":
    main()
