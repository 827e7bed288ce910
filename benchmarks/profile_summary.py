#!/usr/bin/env python3
"""Where a node's time went, from ``login.py --profile FILE`` (py-spy's collapsed stacks).

Prints the share of samples in which each frame appears (inclusive), for frames whose
file matches ``--match`` (default: every frame), most first. A frame counted once per
sample even when it recurses.

Usage::

    .venv/bin/python benchmarks/profile_summary.py /tmp/node1.txt --top 30
    .venv/bin/python benchmarks/profile_summary.py /tmp/node1.txt --match deskbroker/ --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, match: str, top: int) -> dict[str, object]:
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        seen = {frame for frame in stack.split(";") if match in frame}
        for frame in seen:
            inclusive[frame] += samples
    return {
        "samples": total,
        "frames": [
            {"share": round(n / total, 3), "frame": frame}
            for frame, n in inclusive.most_common(top)
        ]
        if total
        else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("file", type=Path)
    parser.add_argument("--match", default="", help="only frames containing this text")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"{args.file} is not a file")
    result = summarise(args.file, args.match, args.top)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['samples']} samples")
    for row in result["frames"]:  # type: ignore[attr-defined]
        print(f"{100 * row['share']:5.1f}%  {row['frame']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
