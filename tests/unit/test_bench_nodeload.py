"""The JSON between bench/stream.py and the Node.js load generator: a LoadPlan goes out with every
field, a LoadResult comes back with exactly its fields and merges like a Python worker's."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, fields
from typing import Any

import pytest

from bench.loadgen import LoadPlan, LoadResult
from bench.nodeload import load_result, plan_json
from bench.stream import merge


def node_result(**changes: Any) -> dict[str, Any]:
    """A result as loadgen.js writes it: Counters as objects, latencies as lists."""
    result = {**asdict(LoadResult()), "fixes_sent": 3, "fixes_acked": 3, "ack_ms": [1.5, 2.0, 9.0]}
    result["errors"] = {"driver UNAVAILABLE: no healthy upstream": 1}
    return {**result, **changes}


def test_a_plan_goes_out_with_every_field_as_loadgen_js_reads_it() -> None:
    plan = LoadPlan(
        address="127.0.0.1:8080",
        token="ops",
        run_id="r1",
        drivers=[0, 2],
        driver_tokens={0: "t0", 2: "t2"},
        watched=[0],
        start_at=1700000000.25,
        open_rate=200.0,
        interval_s=4.0,
        duration_s=30.0,
        streams_per_channel=100,
        area_boxes=[(12.92, 77.58, 12.925, 77.60)],
    )
    sent = json.loads(plan_json(plan))
    assert set(sent) == {f.name for f in fields(LoadPlan)}
    assert sent["driver_tokens"] == {"0": "t0", "2": "t2"}  # JSON keys are strings
    assert sent["area_boxes"] == [[12.92, 77.58, 12.925, 77.60]]
    assert sent["start_at"] == 1700000000.25


def test_a_result_comes_back_as_a_load_result_that_merges() -> None:
    parts = [load_result(node_result()), load_result(node_result(rejected={"code 8": 2}))]
    total = merge(parts)
    assert total.fixes_acked == 6
    assert total.ack_ms == [1.5, 2.0, 9.0, 1.5, 2.0, 9.0]
    assert total.errors == Counter({"driver UNAVAILABLE: no healthy upstream": 2})
    assert total.rejected == Counter({"code 8": 2})


@pytest.mark.parametrize(
    "result",
    [
        {k: v for k, v in node_result().items() if k != "durable_ms"},
        node_result(fixes_lost=0),
    ],
    ids=["a field missing", "a field too many"],
)
def test_a_result_without_exactly_the_load_result_fields_is_refused(
    result: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="not a LoadResult"):
        load_result(result)
