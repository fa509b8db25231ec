"""The benchmark harness itself, on a small quick scenario: real mesh, real load generators, the
JSON report and the plots; and the side-by-side ratios' arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.run import ratios, run_scenario

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_smoke_scenario_measures_the_mesh_with_both_loadgens_and_echo(tmp_path: Path) -> None:
    document = run_scenario("smoke", tmp_path)
    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written["scenario"] == "smoke"
    assert written["machine"]["cpus"]
    runs = written["runs"]
    envoy, envoy_python, echo = runs["envoy"], runs["envoy-python"], runs["echo"]
    for run in (envoy, envoy_python, echo):
        assert run["fixes_sent"] > 50
        assert run["fixes_acked"] == run["fixes_sent"]
        assert run["errors"] == {}
        assert run["command"].startswith(".venv/bin/python -m bench.stream")
        assert run["ack_ms"]["p50"] > 0
        assert run["loadgen_cpu_s"] > 0
    # The Node.js load generator by default; the Python one as a cross-check of the same load.
    assert envoy["loadgen"] == echo["loadgen"] == "node"
    assert envoy_python["loadgen"] == "python"
    # Through the mesh: every fix durable, both kinds of watcher measured, every process costed.
    for run in (envoy, envoy_python):
        assert run["target"] == "envoy"
        assert run["streams_held"] == run["streams_opened"] == 20
        assert run["fixes_durable"] == run["fixes_sent"]
        assert run["watch_ms"]["n"] > 0
        assert run["area_updates"] > 0
        assert run["persistence_lag_ms"]["p99"] < 5000
        assert {"envoy", "redis", "postgres"} <= {n.split(":")[0] for n in run["processes"]}
        assert run["mesh_cpu_ms_per_acked_fix"] > 0
    assert echo["target"] == "echo"
    assert list(echo["processes"]) == ["echo"]
    assert document["ratios"]["location_vs_echo"]["service_cpu_ms_per_fix"][1] > 0
    assert (tmp_path / "smoke-latency.png").read_bytes().startswith(PNG)


def test_ratios_compare_like_with_like() -> None:
    def run(
        watch_p99: float, ack_p99: float, cpu: float, processes: dict[str, float]
    ) -> dict[str, Any]:
        return {
            "watch_ms": {"p99": watch_p99},
            "ack_ms": {"p99": ack_p99},
            "fixes_acked": 1000,
            "mesh_cpu_ms_per_acked_fix": cpu,
            "processes": {name: {"cpu_s": s} for name, s in processes.items()},
        }

    parts = {
        "envoy": run(30.0, 300.0, 2.0, {"location:1": 1.0, "envoy": 0.5}),
        "direct": run(20.0, 280.0, 1.5, {"location:1": 1.2}),
        "echo": run(0.0, 5.0, 0.3, {"echo": 0.3}),
        "socketio": run(15.0, 3.0, 1.0, {"node:1": 0.8, "redis": 0.2}),
    }
    result = ratios(parts)
    assert result["envoy_vs_direct"]["watch_p99_ratio"] == 1.5
    assert result["envoy_vs_direct"]["mesh_cpu_ratio"] == pytest.approx(1.33)
    assert result["location_vs_echo"]["service_cpu_ms_per_fix"] == [1.2, 0.3]
    assert result["location_vs_echo"]["service_cpu_ratio"] == 4.0
    assert result["ridemesh_vs_socketio"]["watch_p99_ratio"] == 2.0
    assert result["ridemesh_vs_socketio"]["cpu_ratio"] == 2.0
    # A missing run gives no ratio rather than a wrong one.
    assert ratios({"envoy": parts["envoy"]})["ridemesh_vs_socketio"]["cpu_ratio"] is None
