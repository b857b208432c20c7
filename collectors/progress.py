"""Progress of the run stage.

On a terminal: one live line (counts per status, rate, ETA) that failures print above.
Without a terminal: one plain line per node outcome. `--quiet`: nothing per node.
`--json`: one JSON object per node outcome on stdout (logs stay on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

from collectors import console
from collectors.state import SUCCESS_STATUSES

REFRESH = 0.25


class Progress:
    def __init__(self, total: int, *, quiet: bool = False, as_json: bool = False, stream: TextIO | None = None):
        self.total = total
        self.quiet = quiet
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.started = time.monotonic()
        self.last_draw = 0.0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def launched(self) -> None:
        self.running += 1
        self._draw()

    def finished(self, node: dict[str, Any]) -> None:
        if node.get("launched_epoch") and self.running:
            self.running -= 1
        self.counts[node["status"]] += 1
        if self.as_json:
            console.out(json.dumps(node_line(node), sort_keys=True))
        elif self.live and node["status"] not in SUCCESS_STATUSES:
            self._clear()
            console.log(describe(node, self.done, self.total))
        elif not self.live and not self.quiet:
            console.log(describe(node, self.done, self.total))
        self._draw(force=True)

    def close(self) -> None:
        if self.live:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _clear(self) -> None:
        self.stream.write("\r\033[K")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (not force and now - self.last_draw < REFRESH):
            return
        self.last_draw = now
        self._clear()
        self.stream.write(status_line(self.counts, self.running, self.total, now - self.started))
        self.stream.flush()


def status_line(counts: Counter[str], running: int, total: int, elapsed: float) -> str:
    done = sum(counts.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"ETA {format_seconds((total - done) / rate)}" if rate > 0 and done < total else ""
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return (f"[run] {done}/{total} done ({parts or 'none yet'}); {running} running on nodes; "
            f"{rate * 60:.1f} nodes/min {eta}").rstrip()


def describe(node: dict[str, Any], done: int, total: int) -> str:
    detail = f"{node['elapsed']:.1f}s" if node.get("elapsed") is not None else ""
    if node.get("bytes"):
        detail += f" {console.human_bytes(node['bytes'])}"
    if node.get("error"):
        detail += f" - {node.get('error_kind')}: {str(node['error']).splitlines()[0][:160]}"
    return (f"[{done}/{total}] {node['status']:<14} {node['instance_id']} "
            f"({node['group']}, {node.get('hostname') or '?'}) {detail}").rstrip()


def node_line(node: dict[str, Any]) -> dict[str, Any]:
    keys = ("instance_id", "group", "hostname", "status", "error_kind", "error", "attempts", "elapsed", "bytes",
            "sha256", "s3_key")
    return {key: node.get(key) for key in keys}


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
