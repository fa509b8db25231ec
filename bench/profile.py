"""Summarises py-spy's collapsed stacks (`bench.stream --profile DIR`): the functions that cost
most, by own time and by time including callees.

    .venv/bin/python -m bench.profile DIR/location-12345.txt --top 25
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def summarise(text: str) -> tuple[Counter[str], Counter[str], int]:
    """(own samples per frame, inclusive samples per frame, total samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    own, inclusive, total = summarise(args.stacks.read_text())
    for title, counter in (("own time", own), ("including callees", inclusive)):
        print(f"\n{title} ({total} samples)")
        for frame, count in counter.most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {frame}")


if __name__ == "__main__":
    main()
