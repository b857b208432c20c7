"""Node sets folded as ClusterShell and Slurm write them: ip-10-1-4-[1-3,9].

A finding on 200 nodes must fit on one line. Names are folded on their last number; names
that differ elsewhere stay apart, and zero-padded numbers keep their width (node[001-003]).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

TRAILING_NUMBER_RE = re.compile(r"^(.*?)(\d+)$")
HOSTLIST_RE = re.compile(r"^(.*?)\[([0-9,\-]+)\](.*)$")


def fold(names: Iterable[str]) -> str:
    """`ip-10-1-4-1, ip-10-1-4-2, ip-10-1-4-3, ip-10-1-4-9` → `ip-10-1-4-[1-3,9]`."""
    groups: dict[tuple[str, int], set[int]] = defaultdict(set)
    plain: set[str] = set()
    for name in names:
        match = TRAILING_NUMBER_RE.match(name)
        if not match:
            plain.add(name)
            continue
        prefix, digits = match.groups()
        # A leading zero makes the width part of the name: node01 and node1 are different nodes.
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        groups[prefix, width].add(int(digits))
    parts = sorted(plain) + [_fold_one(prefix, width, numbers) for (prefix, width), numbers in sorted(groups.items())]
    return ",".join(parts)


def _fold_one(prefix: str, width: int, numbers: set[int]) -> str:
    ranges = _ranges(sorted(numbers))
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return f"{prefix}{ranges[0][0]:0{width}d}"
    text = ",".join(f"{lo:0{width}d}" if lo == hi else f"{lo:0{width}d}-{hi:0{width}d}" for lo, hi in ranges)
    return f"{prefix}[{text}]"


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for number in numbers:
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


def expand(hostlist: str) -> list[str]:
    """Slurm's NODELIST (`ip-10-1-4-[1-3,9],ip-10-1-5-2`) as single names."""
    names: list[str] = []
    for part in _split_top_level(hostlist.strip()):
        match = HOSTLIST_RE.match(part)
        if not match:
            if part:
                names.append(part)
            continue
        prefix, body, suffix = match.groups()
        for piece in body.split(","):
            lo, _, hi = piece.partition("-")
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
            for number in range(int(lo), int(hi or lo) + 1):
                names.append(f"{prefix}{number:0{width}d}{suffix}")
    return names


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += char == "["
        depth -= char == "]"
        current.append(char)
    parts.append("".join(current))
    return parts
