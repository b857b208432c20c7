"""Where output goes: logs and progress on stderr, results (tables, JSON) on stdout.

Keeping the two apart is what lets `invoke discover --json | jq …` work in a pipeline.
"""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def out(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GB"
