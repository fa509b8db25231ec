"""The committed-below watermark computed from XINFO GROUPS and XPENDING replies (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from services.live.ingest import watermark
from services.live.names import PERSIST_GROUP

NOTHING_PENDING: dict[str, Any] = {"pending": 0, "min": None, "max": None, "consumers": []}


def _group(name: str | bytes, last: str | bytes, pending: int = 0) -> dict[str, Any]:
    return {"name": name, "consumers": 1, "pending": pending, "last-delivered-id": last}


def test_no_groups_gives_no_watermark() -> None:
    assert watermark([], NOTHING_PENDING) is None


def test_only_other_groups_gives_no_watermark() -> None:
    groups = [_group("exporters", "1700000000000-5"), _group(b"audit", b"1-0")]
    assert watermark(groups, {"pending": 3, "min": b"1-0"}) is None


def test_pending_entries_hold_the_watermark_at_the_oldest_pending_id() -> None:
    groups = [_group(PERSIST_GROUP, "1700000000900-0", pending=2)]
    pending = {"pending": 2, "min": "1700000000500-7", "max": "1700000000900-0"}
    assert watermark(groups, pending) == (1_700_000_000_500, 7)


def test_pending_min_may_be_bytes() -> None:
    groups = [_group(PERSIST_GROUP.encode(), b"1700000000900-0", pending=1)]
    pending = {"pending": 1, "min": b"1700000000500-7", "max": b"1700000000500-7"}
    assert watermark(groups, pending) == (1_700_000_000_500, 7)


def test_nothing_pending_means_everything_delivered_is_committed() -> None:
    groups = [_group(PERSIST_GROUP, "1700000000900-4")]
    assert watermark(groups, NOTHING_PENDING) == (1_700_000_000_900, 5)


@pytest.mark.parametrize(
    ("name", "last"),
    [
        (PERSIST_GROUP, "1700000000900-4"),
        (PERSIST_GROUP.encode(), b"1700000000900-4"),
        (PERSIST_GROUP.encode(), "1700000000900-4"),
        (PERSIST_GROUP, b"1700000000900-4"),
    ],
)
def test_group_name_and_ids_as_bytes_or_str(name: str | bytes, last: str | bytes) -> None:
    assert watermark([_group(name, last)], NOTHING_PENDING) == (1_700_000_000_900, 5)


def test_the_persist_group_is_found_among_others() -> None:
    groups = [_group("exporters", "9999999999999-0"), _group(PERSIST_GROUP, "1700000000900-0")]
    assert watermark(groups, NOTHING_PENDING) == (1_700_000_000_900, 1)


def test_a_new_group_with_nothing_delivered() -> None:
    assert watermark([_group(PERSIST_GROUP, "0-0")], NOTHING_PENDING) == (0, 1)


def test_a_pending_count_of_zero_ignores_a_stale_min() -> None:
    pending = {"pending": 0, "min": "1-0"}
    assert watermark([_group(PERSIST_GROUP, "50-0")], pending) == (50, 1)


def test_the_watermark_does_not_pass_a_pending_entry() -> None:
    # The last delivered entry is still pending, so it is not committed.
    groups = [_group(PERSIST_GROUP, "1700000000900-0", pending=1)]
    pending = {"pending": 1, "min": "1700000000900-0", "max": "1700000000900-0"}
    mark = watermark(groups, pending)
    assert mark is not None
    assert mark <= (1_700_000_000_900, 0)
