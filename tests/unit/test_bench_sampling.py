"""The sampling bench's arithmetic: quantiles and samples grouped by activity."""

from __future__ import annotations

from bench.sampling import Samples, _quantiles


def test_quantiles_of_nothing_and_of_a_hundred_values() -> None:
    assert _quantiles([]) == {"n": 0, "p50": None, "p95": None, "max": None}
    summary = _quantiles([float(v) for v in range(100, 0, -1)])
    assert summary == {"n": 100, "p50": 51.0, "p95": 96.0, "max": 100.0}


def test_each_sample_counts_in_its_group_and_in_all() -> None:
    samples = Samples()
    samples.add("idle", 3.0, 20.0)
    samples.add("available", 15.0, 2.0)
    assert samples.error_m == {"idle": [3.0], "available": [15.0], "all": [3.0, 15.0]}
    assert samples.age_s["all"] == [20.0, 2.0]
