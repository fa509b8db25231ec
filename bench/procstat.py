"""CPU seconds and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeUsage:
    """CPU seconds of a root, its reaped children and its live descendants; memory in KiB."""

    pids: tuple[int, ...]
    cpu_s: float
    rss_kib: int  # summed VmRSS now
    hwm_kib: int  # summed VmHWM (each process's own peak RSS)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process exited between listing and reading
        return None
    return text[text.rindex(")") + 2 :].split()


def _parents() -> dict[int, int]:
    """pid -> ppid for every process visible now."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """All live processes below `root`, found by following ppid links."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def _cpu_ticks(pid: int, with_reaped_children: bool) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_usage(root: int) -> TreeUsage:
    """Usage of `root` and everything below it right now."""
    pids = (root, *descendants(root, _parents()))
    ticks = _cpu_ticks(root, True) + sum(_cpu_ticks(pid, False) for pid in pids[1:])
    return TreeUsage(
        pids=pids,
        cpu_s=ticks / _TICKS_PER_S,
        rss_kib=sum(_status_kib(pid, "VmRSS") for pid in pids),
        hwm_kib=sum(_status_kib(pid, "VmHWM") for pid in pids),
    )


def usage_of(roots: Iterable[tuple[str, int]]) -> dict[str, TreeUsage]:
    """tree_usage for each named root PID."""
    return {name: tree_usage(pid) for name, pid in roots}
