"""Pure parts of history maintenance: partition names, expiry, archive reading, the report."""

from __future__ import annotations

import gzip
from datetime import date
from pathlib import Path

import pytest

from services.history.maintenance import (
    ARCHIVE_COLUMNS,
    ArchivedPartition,
    MaintenanceReport,
    archive_path,
    archived_rows,
    is_expired,
    maintain,
    partition_day,
)
from services.history.store import partition_name


def test_partition_day_parses_our_names_only() -> None:
    assert partition_day("driver_locations_p20261001") == date(2026, 10, 1)
    assert partition_day(partition_name(date(2028, 2, 29))) == date(2028, 2, 29)
    for other in (
        "driver_locations",
        "driver_locations_p2026100",
        "driver_locations_p202610011",
        "driver_locations_p20261001_old",
        "x_driver_locations_p20261001",
        "rides_p20261001",
        "driver_locations_p20261301",  # month 13
        "driver_locations_p20270229",  # not a leap year
    ):
        assert partition_day(other) is None, other


def test_expiry_is_whole_days_older_than_the_retention() -> None:
    today = date(2026, 12, 10)
    assert is_expired(date(2026, 12, 7), today, 2)
    assert not is_expired(date(2026, 12, 8), today, 2)
    assert not is_expired(today, today, 0)
    assert is_expired(date(2026, 12, 9), today, 0)
    assert is_expired(date(2026, 11, 9), today, 30)
    assert not is_expired(date(2026, 11, 10), today, 30)


def test_archive_path_is_named_after_the_partition(tmp_path: Path) -> None:
    assert archive_path(tmp_path, "driver_locations_p20261001") == (
        tmp_path / "driver_locations_p20261001.csv.gz"
    )


def _write(path: Path, text: str) -> None:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as out:
        out.write(text)


def test_archived_rows_counts_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    header = ",".join(ARCHIVE_COLUMNS)
    rows = 'd1,1,2,,,,2026-10-01 00:00:00+00,1,2026-10-01 00:00:01+00\n"d,2",1,2,3,4,5,x,2,y\n'
    _write(path, f"{header}\n{rows}")
    assert archived_rows(path) == 2
    _write(path, f"{header}\n")
    assert archived_rows(path) == 0


def test_archived_rows_is_none_for_missing_foreign_or_broken_files(tmp_path: Path) -> None:
    assert archived_rows(tmp_path / "missing.csv.gz") is None
    foreign = tmp_path / "foreign.csv.gz"
    _write(foreign, "a,b\n1,2\n")
    assert archived_rows(foreign) is None
    plain = tmp_path / "plain.csv.gz"
    plain.write_text(",".join(ARCHIVE_COLUMNS) + "\n")
    assert archived_rows(plain) is None
    truncated = tmp_path / "truncated.csv.gz"
    _write(truncated, ",".join(ARCHIVE_COLUMNS) + "\n" + "d1,1,2,3,4,5,t,1,r\n" * 1000)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    assert archived_rows(truncated) is None


def test_report_lines_say_what_was_done(tmp_path: Path) -> None:
    assert MaintenanceReport().lines() == ["nothing to do"]
    assert MaintenanceReport(locked_out=True).lines() == [
        "another maintenance run holds the lock; nothing done"
    ]
    path = tmp_path / "driver_locations_p20261001.csv.gz"
    report = MaintenanceReport(
        created=["driver_locations_p20261213"],
        archived=[ArchivedPartition("driver_locations_p20261001", path, 12, reused=True)],
        dropped=["driver_locations_p20261001"],
        problems=["x is odd"],
    )
    assert report.lines() == [
        "created partition driver_locations_p20261213",
        f"verified existing archive driver_locations_p20261001: 12 rows in {path}",
        "dropped partition driver_locations_p20261001",
        "problem: x is odd",
    ]


@pytest.mark.parametrize("days", [-1, -30])
async def test_negative_retention_is_refused(days: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_days must be 0 or more"):
        await maintain(
            None,  # type: ignore[arg-type]  # refused before the store is touched
            today=date(2026, 12, 10),
            retention_days=days,
            archive_dir=tmp_path,
            days_ahead=1,
        )
