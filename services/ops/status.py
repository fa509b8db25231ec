"""`ridemesh status`: the running mesh at a glance. It reads where everything listens from the
run directory (`mesh.json`, written by `ridemesh up`), asks each replica's health, scrapes its
metrics twice a second apart for rates, and asks Envoy which replicas it routes to."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.ops.mesh.ports import http_get
from services.ops.mesh.supervisor import grpc_serving

STATE_FILE = "mesh.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout: float = 2.0) -> Samples:
    """Every sample on http://127.0.0.1:port/metrics, keyed by (name, sorted labels)."""
    text = http_get(port, "/metrics", timeout=timeout)[1].decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def histogram_quantile(before: Samples, after: Samples, name: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` of what `name` observed between two
    scrapes (or since the start when nothing was observed between them); None when empty."""

    def buckets(samples: Samples) -> dict[float, float]:
        return {float(dict(ls)["le"]): v for (n, ls), v in samples.items() if n == f"{name}_bucket"}

    now, then = buckets(after), buckets(before)
    delta = {le: now[le] - then.get(le, 0.0) for le in now}
    counts = delta if delta.get(float("inf"), 0.0) > 0 else now
    count = counts.get(float("inf"), 0.0)
    if count <= 0:
        return None
    for le in sorted(counts):
        if counts[le] >= q * count:
            return le
    return None


@dataclass(frozen=True)
class ReplicaStatus:
    service: str
    port: int
    serving: bool
    streams: float | None = None
    fixes_per_s: float | None = None
    lag_p99_s: float | None = None
    error: str = ""


def _scrape_or_error(metrics_port: int | None) -> Samples | str:
    if metrics_port is None:
        return "no metrics port"
    try:
        return scrape(metrics_port)
    except OSError as exc:
        return f"metrics: {exc}"


def replica_statuses(
    replicas: list[tuple[str, int, int | None]], window_s: float
) -> list[ReplicaStatus]:
    """Health and metrics of every (service, port, metrics port): all scraped, then all again
    `window_s` later, so the whole report takes one window."""
    before = [_scrape_or_error(m) for _, _, m in replicas]
    time.sleep(window_s)
    statuses = []
    for (service, port, metrics_port), first in zip(replicas, before, strict=True):
        serving = grpc_serving(port)
        second = _scrape_or_error(metrics_port)
        if isinstance(first, str) or isinstance(second, str):
            error = first if isinstance(first, str) else str(second)
            statuses.append(ReplicaStatus(service, port, serving, error=error))
            continue
        name = "ridemesh_fixes_accepted_total"
        fixes = total(second, name) - total(first, name)
        statuses.append(
            ReplicaStatus(
                service,
                port,
                serving,
                streams=total(second, "ridemesh_streams_open"),
                fixes_per_s=fixes / window_s if service == "location" else None,
                lag_p99_s=histogram_quantile(first, second, "ridemesh_persist_lag_seconds", 0.99),
            )
        )
    return statuses


def envoy_health(admin_url: str) -> dict[str, tuple[int, int]]:
    """Per cluster, (healthy hosts, all hosts) as Envoy's admin /clusters reports them."""
    host, _, port = admin_url.removeprefix("http://").partition(":")
    text = http_get(int(port), "/clusters", host=host, timeout=2.0)[1].decode()
    counts: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            seen = counts.setdefault(parts[0], [0, 0])
            seen[1] += 1
            seen[0] += parts[3] == "healthy"
    return {cluster: (good, every) for cluster, (good, every) in counts.items()}


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(state: Mapping[str, Any], window_s: float = 1.0) -> tuple[str, bool]:
    """The status table, and whether every replica is serving."""
    lines = [f"Ridemesh at {state.get('envoy')} (Envoy admin {state.get('envoy_admin')})", ""]
    lines.append(
        f"{'service':<10} {'replica':<17} {'health':<12} {'streams':>8} {'fixes/s':>8} "
        f"{'persist lag p99':>16}"
    )
    healthy = True
    replicas = [
        (service, int(r["port"]), r.get("metrics_port"))
        for service, rs in state.get("services", {}).items()
        for r in rs
    ]
    for status in replica_statuses(replicas, window_s):
        healthy &= status.serving
        lag = "-" if status.lag_p99_s is None else f"<= {status.lag_p99_s:g} s"
        lines.append(
            f"{status.service:<10} {'127.0.0.1:' + str(status.port):<17} "
            f"{'SERVING' if status.serving else 'NOT SERVING':<12} "
            f"{_cell(status.streams, '.0f'):>8} {_cell(status.fixes_per_s, '.1f'):>8} "
            f"{lag:>16}" + (f"  ({status.error})" if status.error else "")
        )
    admin = state.get("envoy_admin")
    if admin:
        try:
            clusters = envoy_health(admin)
            routed = ", ".join(f"{c} {g}/{n}" for c, (g, n) in sorted(clusters.items()))
            lines += ["", f"Envoy routes to (healthy/all): {routed}"]
        except OSError as exc:
            healthy = False
            lines += ["", f"Envoy admin unreachable: {exc}"]
    return "\n".join(lines), healthy


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    state: dict[str, Any] = json.loads(path.read_text())
    return state
