"""The benchmark plots: latency distributions, the side-by-side, and throughput and memory
against connections."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def plot_latency(samples: Mapping[str, Mapping[str, list[float]]], path: Path, title: str) -> None:
    """One CDF per run and latency kind (ack, WatchDriver, WatchArea), log-scaled milliseconds."""
    figure, axes = plt.subplots(figsize=(9, 5))
    for label, kinds in samples.items():
        for kind, values in kinds.items():
            if not values or kind == "persistence_lag_ms":
                continue
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.plot(ordered, fractions, label=f"{label} {kind.removesuffix('_ms')}")
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction of messages")
    axes.axhline(0.99, color="grey", linewidth=0.5, linestyle="--")
    axes.set_title(f"{title}: latency distribution")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_compare(runs: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Watcher p99 and CPU per fix, side by side, for each target of the compare scenario."""
    labels = list(runs)
    watch = [runs[k].get("watch_ms", {}).get("p99") or 0.0 for k in labels]
    ack = [runs[k].get("ack_ms", {}).get("p99") or 0.0 for k in labels]
    cpu = [runs[k].get("mesh_cpu_ms_per_acked_fix") or 0.0 for k in labels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    positions = range(len(labels))
    left.bar([p - 0.2 for p in positions], watch, width=0.4, label="fix → watcher p99")
    left.bar([p + 0.2 for p in positions], ack, width=0.4, label="ack p99")
    left.set_xticks(list(positions), labels)
    left.set_yscale("log")  # acks follow a 0.5 s ticker; watcher p99s are milliseconds
    left.set_ylabel("ms (log scale)")
    left.legend(fontsize="small")
    left.set_title("latency p99")
    right.bar(list(positions), cpu, color="tab:orange")
    right.set_xticks(list(positions), labels)
    right.set_ylabel("CPU ms per acked fix (all processes)")
    right.set_title("CPU per fix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_scaling(directory: Path, path: Path) -> None:
    """Fixes/s and peak RSS against connections, from every streams-N.json in `directory`."""
    points = []
    for file in sorted(directory.glob("streams-*.json")):
        run = json.loads(file.read_text())["runs"].get("envoy")
        if run:
            points.append(run)
    if not points:
        return
    points.sort(key=lambda r: r["drivers"])
    drivers = [r["streams_held"] for r in points]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(drivers, [r["fixes_acked_per_s"] for r in points], marker="o", label="acked fixes/s")
    left.set_xlabel("driver streams held")
    left.set_ylabel("fixes/s")
    left.set_title("throughput")
    left.grid(True, alpha=0.3)
    for role in sorted({_role(n) for r in points for n in r["processes"]}):
        peaks = [
            sum(p["peak_rss_mib"] for n, p in r["processes"].items() if _role(n) == role)
            for r in points
        ]
        right.plot(drivers, peaks, marker="o", label=role)
    right.set_xlabel("driver streams held")
    right.set_ylabel("peak RSS (MiB)")
    right.set_title("memory")
    right.grid(True, alpha=0.3)
    right.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _role(process: str) -> str:
    """'location:41231' -> 'location': replicas of one role are summed."""
    return process.split(":", 1)[0]
