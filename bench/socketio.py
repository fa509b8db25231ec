"""Socket.io baseline: the seed's relay (Node.js + Redis adapter) under bench/stream.py's load."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.nodeload import NodePackagesMissing, require_node
from bench.procstat import usage_of
from bench.stream import percentiles, usage_report
from services.ops.mesh.ports import free_port, port_open
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_server import RedisServer

BASELINE_DIR = Path(__file__).resolve().parent / "baselines" / "socketio"
# Workers need a moment to start node and load socket.io-client before the shared start time.
WORKER_WARMUP_S = 2.0
# After the window each worker waits up to this long for its last acks (it stops once all are in).
DRAIN_S = 5.0
# Beyond the load window and the drain, the whole run is cut off after this much slack.
HARD_STOP_SLACK_S = 60.0
# *_steady: fixes sent after every socket was open (the opening phase's handshakes left out).
SAMPLE_KEYS = (
    "ack_ms",
    "watch_ms",
    "watch_from_server_ms",
    "ack_ms_steady",
    "watch_ms_steady",
    "client_loop_lag_ms",
)
COUNT_KEYS = (
    "drivers",
    "watchers",
    "connected",
    "held",
    "fixes_sent",
    "fixes_acked",
    "watch_updates",
    "connect_failures",
)


@dataclass(frozen=True)
class Plan:
    """One run's load shape (the same knobs as bench/stream.py's)."""

    drivers: int
    interval_s: float
    duration_s: float
    servers: int = 1
    workers: int = 2
    open_rate: float = 200.0
    watch_percent: float = 5.0
    samples: bool = False  # raw ack and watcher latencies in the report, for plots


@dataclass(frozen=True)
class Relay:
    """One server.js process we started, and its port."""

    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_relays(node: Path, directory: Path, redis_url: str, count: int) -> list[Relay]:
    """`count` relay processes on free loopback ports, each accepting connections."""
    relays = []
    for n in range(1, count + 1):
        port = free_port()
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "REDIS_URL": redis_url}
        argv = [str(node), str(BASELINE_DIR / "server.js")]
        relay = Relay(
            ManagedProcess(f"socketio-{n}", argv, directory / f"socketio-{n}.log", env), port
        )
        relays.append(relay)
        relay.process.start().wait_ready(partial(port_open, port), timeout=15.0)
    return relays


def loadgen_argv(node: Path, plan: Plan, urls: Sequence[str], **options: object) -> list[str]:
    """The command line of one loadgen.js worker; `options` become `--key value` (_ as -)."""
    argv = [str(node), str(BASELINE_DIR / "loadgen.js"), "--urls", ",".join(urls)]
    knobs = {
        "drivers": plan.drivers,
        "workers": plan.workers,
        "interval": plan.interval_s,
        "duration": plan.duration_s,
        "open_rate": plan.open_rate,
        "watch_percent": plan.watch_percent,
        "drain": DRAIN_S,
        **options,
    }
    for key, value in knobs.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_load(node: Path, plan: Plan, urls: Sequence[str], directory: Path) -> list[dict[str, Any]]:
    """Runs the load workers until they report or the hard stop passes; returns their results."""
    start_at = time.time() + WORKER_WARMUP_S
    run_id = uuid.uuid4().hex[:8]
    outs = [directory / f"loadgen-{w}.json" for w in range(plan.workers)]
    workers = []
    for w, out in enumerate(outs):
        argv = loadgen_argv(
            node, plan, urls, worker=w, start_at=round(start_at * 1000), run_id=run_id, out=out
        )
        workers.append(ManagedProcess(f"loadgen-{w}", argv, directory / f"loadgen-{w}.log").start())
    deadline = start_at + plan.duration_s + DRAIN_S + HARD_STOP_SLACK_S
    try:
        for worker in workers:
            worker.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass  # the ones still running are stopped below and reported as missing
    finally:
        for worker in workers:
            worker.stop(grace=5.0)  # our own children, by PID
    results = []
    for worker, out in zip(workers, outs, strict=True):
        if worker.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"{worker.name} exited with {worker.returncode}:\n{worker.log_tail()}"
            )
        results.append(json.loads(out.read_text()))
    return results


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts added up, errors counted together, raw samples pooled (percentiles over all)."""
    errors: Counter[str] = Counter()
    samples: dict[str, list[float]] = {key: [] for key in SAMPLE_KEYS}
    for part in parts:
        errors.update(part["errors"])
        for key in SAMPLE_KEYS:
            samples[key] += part["samples"][key]
    merged: dict[str, Any] = {key: sum(part[key] for part in parts) for key in COUNT_KEYS}
    return {**merged, "errors": dict(errors.most_common(10)), "samples": samples}


def node_version(node: Path) -> str:
    return subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def report(plan: Plan, load: dict[str, Any], usage: dict[str, Any], node: str) -> dict[str, Any]:
    mesh_cpu_s = sum(part["cpu_s"] for part in usage.values())
    acked = load["fixes_acked"]
    samples = load["samples"]
    return {
        "bench": "socketio",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "node": node,
        "python": platform.python_version(),
        "drivers": plan.drivers,
        "interval_s": plan.interval_s,
        "duration_s": plan.duration_s,
        "workers": plan.workers,
        "servers": plan.servers,
        "streams_opened": load["drivers"],
        "streams_connected": load["connected"],
        "streams_held": load["held"],
        "watchers": load["watchers"],
        "watch_updates": load["watch_updates"],
        "fixes_sent": load["fixes_sent"],
        "fixes_acked": acked,
        "fixes_acked_per_s": round(acked / plan.duration_s, 1),
        "connect_failures": load["connect_failures"],
        "errors": load["errors"],
        **{key: percentiles(samples[key]) for key in SAMPLE_KEYS},
        "mesh_cpu_s": round(mesh_cpu_s, 2),
        "mesh_cpu_ms_per_acked_fix": round(mesh_cpu_s * 1000 / acked, 3) if acked else None,
        "processes": usage,
    }


def run_plan(plan: Plan) -> dict[str, Any]:
    """One baseline run on throwaway Redis and relay processes; the report as a dict."""
    node = require_node(BASELINE_DIR)
    with tempfile.TemporaryDirectory(prefix="ridemesh-bench-socketio-") as tmp:
        directory = Path(tmp)
        with RedisServer(directory / "redis") as redis:
            relays: list[Relay] = []
            try:
                relays = start_relays(node, directory, redis.url, plan.servers)
                roots = [("redis", redis.pid)] + [(r.process.name, r.process.pid) for r in relays]
                before = usage_of(roots)
                parts = run_load(node, plan, [relay.url for relay in relays], directory)
                usage = usage_report(before, usage_of(roots))
            finally:
                for relay in relays:
                    relay.process.stop(grace=5.0)  # our own children, by PID
    load = merge(parts)
    result = report(plan, load, usage, node_version(node))
    if plan.samples:  # the keys bench/stream.py's --samples gives
        result["samples"] = {
            key: [round(v, 3) for v in load["samples"][key]] for key in ("ack_ms", "watch_ms")
        }
    return result


def run(
    drivers: int,
    interval_s: float,
    duration_s: float,
    *,
    servers: int = 1,
    workers: int = 2,
    open_rate: float = 200.0,
    watch_percent: float = 5.0,
    samples: bool = False,
) -> dict[str, Any]:
    """One baseline run (see Plan); the same report main() prints, as a dict."""
    return run_plan(
        Plan(drivers, interval_s, duration_s, servers, workers, open_rate, watch_percent, samples)
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--drivers", type=int, default=1000, help="driver sockets (default 1000)")
    add("--interval", type=float, default=4.0, help="seconds between a driver's fixes (default 4)")
    add("--duration", type=float, default=60.0, help="load window in seconds (default 60)")
    add("--servers", type=int, default=1, help="Socket.io relay processes (default 1)")
    add("--workers", type=int, default=2, help="load-generator processes (default 2)")
    add("--open-rate", type=float, default=200.0, help="sockets opened per second (default 200)")
    add("--watch-percent", type=float, default=5.0, help="drivers also watched (default 5)")
    add("--samples", action="store_true", help="include the raw latencies in the JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = Plan(
        drivers=args.drivers,
        interval_s=args.interval,
        duration_s=args.duration,
        servers=args.servers,
        workers=args.workers,
        open_rate=args.open_rate,
        watch_percent=args.watch_percent,
        samples=args.samples,
    )
    try:
        result = run_plan(plan)
    except NodePackagesMissing as error:
        raise SystemExit(f"bench.socketio: {error}") from error
    print(json.dumps(result))


if __name__ == "__main__":
    main()
