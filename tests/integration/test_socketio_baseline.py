"""The Socket.io baseline (bench/socketio.py) end to end: real Redis, relay and load generator."""

from __future__ import annotations

import pytest

from bench import socketio

pytestmark = pytest.mark.integration


def test_small_run_acks_every_fix_and_reaches_watchers() -> None:
    # make install puts the baseline's packages in place; without them the run fails, not skips.
    assert (socketio.BASELINE_DIR / "node_modules").is_dir(), (
        "bench/baselines/socketio/node_modules is missing "
        "(cd bench/baselines/socketio && npm ci, or make install)"
    )
    report = socketio.run(drivers=20, interval_s=0.5, duration_s=5.0, workers=2, samples=True)

    assert report["bench"] == "socketio"
    assert report["streams_held"] == 20
    assert report["connect_failures"] == 0
    assert report["errors"] == {}
    # 20 drivers for 5 s at 0.5 s, each from a random phase: about 200 fixes, every one acked.
    assert report["fixes_sent"] >= 150
    assert report["fixes_acked"] == report["fixes_sent"]
    assert report["watchers"] == 1  # 5% of 20
    assert report["watch_updates"] > 0
    # Sane, not timed: a latency is a few milliseconds here, so only nonsense fails these.
    for key in ("ack_ms", "watch_ms"):
        assert 0 < report[key]["p50"] <= report[key]["p99"] <= report[key]["max"] < 5000
    assert set(report["processes"]) == {"redis", "socketio-1"}
    assert report["mesh_cpu_ms_per_acked_fix"] is not None
    # Pooled from both workers: one raw sample per acked fix and per watcher update.
    assert len(report["samples"]["ack_ms"]) == report["fixes_acked"]
    assert len(report["samples"]["watch_ms"]) == report["watch_updates"]
