"""Literal strings that every match of a regex must contain.

Python's `re` tries a pattern at every position of a log: about 50 MB/s, and a node has twenty
rules over the same kernel log. `bytes.find` runs at memory speed, so the scanner first finds
these literals and runs the regex only on the few lines that hold one. The literals are derived
from the parsed pattern, never written by hand, so a rule cannot drift from its own prefilter.
"""

from __future__ import annotations

import re

try:  # Python 3.11 moved the parser; 3.10 has it as sre_parse.
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the Python version
    import sre_parse  # type: ignore[no-redef]

LITERAL, SUBPATTERN, BRANCH, AT = sre_parse.LITERAL, sre_parse.SUBPATTERN, sre_parse.BRANCH, sre_parse.AT
REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT)


def required_literals(pattern: re.Pattern) -> tuple[bytes, ...] | None:
    """Strings of which every match contains at least one; None when no such set can be told."""
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except (re.error, TypeError, ValueError):
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    found = _alternatives(list(parsed))
    return tuple(sorted(set(found))) if found else None


def _alternatives(items: list) -> list[bytes] | None:
    """For one sequence of the parsed pattern, the best set of alternatives: the set whose shortest
    member is longest (a long literal is rare in logs, a short one is everywhere)."""
    candidates: list[list[bytes]] = []
    run = bytearray()
    for op, arg in items:
        if op is LITERAL:
            run.append(arg)
            continue
        if op is AT:
            continue  # zero width (^, $, \b): the literals on both sides stay next to each other
        if run:
            candidates.append([bytes(run)])
            run = bytearray()
        inner = _inner(op, arg)
        if inner:
            candidates.append(inner)
    if run:
        candidates.append([bytes(run)])
    return max(candidates, key=lambda alternatives: min(len(a) for a in alternatives), default=None)


def _inner(op, arg) -> list[bytes] | None:
    if op is SUBPATTERN:
        _, added_flags, _, sub = arg
        return None if added_flags & re.IGNORECASE else _alternatives(list(sub))
    if op is BRANCH:
        branches = [_alternatives(list(branch)) for branch in arg[1]]
        return [literal for branch in branches for literal in branch] if all(branches) else None
    if op in REPEATS and arg[0] >= 1:
        return _alternatives(list(arg[2]))
    return None
