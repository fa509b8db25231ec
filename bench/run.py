"""`make bench SCENARIO=...`: runs one benchmark scenario and writes its JSON and plots under
docs/bench/. Every run is its own subprocess (fresh servers, fresh memory), bounded in time,
loopback only.

Scenarios:
  smoke            20 drivers, 3 s: the harness itself works (make test runs it), through Envoy
                   with the Node.js load generator and, as a cross-check, the Python one
  streams-1000     1,000 / 5,000 / 10,000 drivers through Envoy, a fix every 4 s,
  streams-5000     5% watched with WatchDriver, plus 10 WatchArea watchers, 60 s
  streams-10000    (10,000: two LocationService replicas)
  compare          one load shape (1,000 drivers, 4 s, 45 s) against: the mesh through Envoy,
                   LocationService directly, a bare grpc.aio echo server, and the seed's
                   Socket.io relay; writes the three ratios
  nearby           SearchNearbyDrivers with 100,000 live drivers
  track            GetDriverTrack over 10 million stored rows
  export           a driver-month (648,000 fixes) downloaded as GPX, GeoJSON and CSV through Envoy
  ingest           rows/s into PostGIS
  sampling         sampling hints ignored vs honoured: a mixed fleet of 200 simulated drivers
                   with 30 watchers, fixes/s and watcher freshness (bench/sampling.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.plots import plot_compare, plot_latency, plot_scaling

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench"
STREAM_SCALE = (1_000, 5_000, 10_000)


@dataclass(frozen=True)
class Run:
    """One subprocess of a scenario: its label and command line (a module of bench/)."""

    label: str
    argv: list[str]
    timeout_s: float


def _stream(label: str, drivers: int, duration: float, *extra: str) -> Run:
    argv = ["bench.stream", "--drivers", str(drivers), "--duration", str(duration), "--samples"]
    # 10,000 streams open at 200/s take 50 s: open faster so the window sees them all.
    argv += ["--open-rate", str(max(200, drivers // 20)), "--workers", "2", *extra]
    return Run(label, argv, duration + 240)


def scenario_runs(name: str) -> list[Run]:
    """The runs a scenario is made of."""
    if name == "smoke":
        quick = ("--interval", "0.5", "--area-watchers", "2")
        return [
            _stream("envoy", 20, 3, *quick),
            _stream("envoy-python", 20, 3, *quick, "--loadgen", "python"),
            _stream("echo", 20, 3, "--interval", "0.5", "--target", "echo"),
        ]
    if name.startswith("streams-"):
        drivers = int(name.removeprefix("streams-"))
        # One Python process works on one core: past about 6,000 drivers a second
        # LocationService replica is what lets the mesh use the machine's other core.
        replicas = 2 if drivers > 6_000 else 1
        return [_stream("envoy", drivers, 60, "--location-replicas", str(replicas))]
    if name == "compare":
        shape = ("--interval", "4")
        socketio = ["bench.socketio", "--drivers", "1000", "--interval", "4", "--duration", "45"]
        return [
            _stream("envoy", 1000, 45, *shape),
            _stream("direct", 1000, 45, *shape, "--target", "direct"),
            _stream("echo", 1000, 45, *shape, "--target", "echo"),
            Run("socketio", socketio, 300),
        ]
    if name == "nearby":
        return [Run("nearby", ["bench.nearby"], 900)]
    if name == "track":
        return [Run("track", ["bench.track"], 1800)]
    if name == "ingest":
        return [Run("ingest", ["bench.ingest"], 600)]
    if name == "export":
        return [Run("export", ["bench.export"], 900)]
    if name == "sampling":
        return [Run("sampling", ["bench.sampling"], 900)]
    raise SystemExit(f"bench.run: unknown scenario {name!r}; see --help")


def execute(run: Run) -> dict[str, Any]:
    """Runs one part in its own Python; its last stdout line is its JSON report."""
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", *run.argv],
        capture_output=True,
        text=True,
        timeout=run.timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"bench.run: {run.label} failed ({completed.returncode}):\n{completed.stderr[-3000:]}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    result["command"] = ".venv/bin/python -m " + " ".join(run.argv)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def ratios(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The side-by-side figures: (a) Envoy vs direct, (b) LocationService vs the echo ceiling,
    (c) Ridemesh vs the Socket.io seed. A ratio above 1 means the first costs more."""

    def p99(name: str, key: str = "watch_ms") -> float | None:
        value = parts.get(name, {}).get(key, {}).get("p99")
        return None if value is None else float(value)

    def cpu(name: str, process: str | None = None) -> float | None:
        part = parts.get(name)
        if not part or not part.get("fixes_acked"):
            return None
        if process is None:
            return float(part["mesh_cpu_ms_per_acked_fix"])
        cpu_s = sum(p["cpu_s"] for n, p in part["processes"].items() if n.startswith(process))
        return round(float(cpu_s) * 1000 / float(part["fixes_acked"]), 3)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else round(a / b, 2)

    return {
        "envoy_vs_direct": {
            "watch_p99_ms": [p99("envoy"), p99("direct")],
            "watch_p99_ratio": ratio(p99("envoy"), p99("direct")),
            "ack_p99_ratio": ratio(p99("envoy", "ack_ms"), p99("direct", "ack_ms")),
            "mesh_cpu_ms_per_fix": [cpu("envoy"), cpu("direct")],
            "mesh_cpu_ratio": ratio(cpu("envoy"), cpu("direct")),
        },
        "location_vs_echo": {
            "service_cpu_ms_per_fix": [cpu("direct", "location"), cpu("echo", "echo")],
            "service_cpu_ratio": ratio(cpu("direct", "location"), cpu("echo", "echo")),
            "ack_p99_ms": [p99("direct", "ack_ms"), p99("echo", "ack_ms")],
        },
        "ridemesh_vs_socketio": {
            "watch_p99_ms": [p99("envoy"), p99("socketio")],
            "watch_p99_ratio": ratio(p99("envoy"), p99("socketio")),
            "cpu_ms_per_fix": [cpu("envoy"), cpu("socketio")],
            "cpu_ratio": ratio(cpu("envoy"), cpu("socketio")),
        },
    }


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg_1m_5m_at_start": [round(load1, 2), round(load5, 2)],
    }


def run_scenario(name: str, out: Path) -> dict[str, Any]:
    """Runs every part, writes out/<name>.json and its plots; returns the document."""
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "scenario": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": f"make bench SCENARIO={name}",
        "runs": {},
    }
    samples: dict[str, dict[str, list[float]]] = {}
    for run in scenario_runs(name):
        result = execute(run)
        samples[run.label] = result.pop("samples", {})
        document["runs"][run.label] = result
        print(f"bench.run: {name}/{run.label} done in {result['wall_s']} s", file=sys.stderr)
    if name in ("compare", "smoke"):
        document["ratios"] = ratios(document["runs"])
    (out / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    if any(samples.values()):
        plot_latency(samples, out / f"{name}-latency.png", title=name)
    if name == "compare":
        plot_compare(document["runs"], out / "compare.png")
    if name.startswith("streams-"):
        plot_scaling(out, out / "streams-scaling.png")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--out", type=Path, default=DOCS, help="where JSON and PNGs go")
    args = parser.parse_args(argv)
    document = run_scenario(args.scenario, args.out)
    print(json.dumps({k: v for k, v in document.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
