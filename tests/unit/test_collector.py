"""The service processes' garbage-collector settings and the pause metric."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.observability.metrics import GC_PAUSES
from services.server import collector


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def _pauses(generation: int) -> float:
    """How many collections of `generation` the histogram has counted."""
    (metric,) = GC_PAUSES.labels(str(generation)).collect()
    return float(next(s.value for s in metric.samples if s.name.endswith("_count")))


def test_tune_makes_collections_rare(restored: None) -> None:
    collector.tune()
    assert gc.get_threshold() == (50_000, 20, 100)


def test_every_collection_is_timed_by_generation() -> None:
    collector.observe_pauses()
    collector.observe_pauses()  # idempotent: one callback, one sample per collection
    before = {g: _pauses(g) for g in (0, 2)}
    gc.collect(0)
    gc.collect(2)
    assert _pauses(0) == before[0] + 1
    assert _pauses(2) == before[2] + 1


def test_the_startup_heap_is_frozen_out_of_reach(restored: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    collector.freeze_startup_heap()
    assert gc.get_freeze_count() > 1000
