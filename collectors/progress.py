"""Progress of the run stage.

On a terminal: one live line (counts per status, rate, ETA) that failures print above.
Without a terminal: one plain line per node outcome. `--quiet`: nothing per node.
`--json`: one JSON object per node outcome on stdout (logs stay on stderr).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from typing import Any, TextIO

from collectors import console
from collectors.state import SUCCESS_STATUSES

REFRESH = 0.25
# A node holds the run up when the others are done and it has run this many times the median node time.
HOLDS_UP_FACTOR = 1.5


class Progress:
    """`rate` (launches a second) and the node times seen so far give the ETA from the first second."""

    def __init__(self, total: int, *, quiet: bool = False, as_json: bool = False, stream: TextIO | None = None,
                 rate: float = 0.0, clock=time.monotonic):
        self.total = total
        self.quiet = quiet
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.rate = rate
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.running: dict[str, tuple[float, str]] = {}  # key -> (when it was launched, how to name it)
        self.launches = 0
        self.node_times: list[float] = []
        self.started = clock()
        self.last_draw = 0.0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def launched(self, node: dict[str, Any] | None = None) -> None:
        key = (node or {}).get("instance_id") or f"#{self.launches}"
        name = f"{key} ({node.get('hostname') or '?'})" if node else key
        self.running[key] = (self.clock(), name)
        self.launches += 1
        self._draw()

    def finished(self, node: dict[str, Any]) -> None:
        launched = self.running.pop(node.get("instance_id"), None)
        if launched is not None:
            self.node_times.append(self.clock() - launched[0])
        elif node.get("elapsed") and node["status"] in SUCCESS_STATUSES:
            self.node_times.append(float(node["elapsed"]))  # an attached session: its node's time
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
        self.stream.write(self.line(now))
        self.stream.flush()

    def line(self, now: float) -> str:
        done = self.done
        failed = done - sum(self.counts[status] for status in SUCCESS_STATUSES)
        parts = ", ".join(f"{count} {status}" for status, count in sorted(self.counts.items()))
        text = (f"[run] {done}/{self.total} done ({parts or 'none yet'}); {failed} failed; {len(self.running)} "
                f"in flight")
        eta = self.eta(now)
        if eta is not None and done < self.total:
            text += f"; ETA {format_seconds(eta)}"
        return text + self.holding_up(now)

    def eta(self, now: float) -> float | None:
        """Seconds left: the launches still to come at the pacing rate, then a node's time (the median so far,
        else how long the oldest node in flight has run: a lower bound)."""
        to_launch = max(0, self.total - self.done - len(self.running))
        if self.node_times:
            node_time = statistics.median(self.node_times)
        elif self.running:
            node_time = max(now - launched for launched, _ in self.running.values())
        else:
            node_time = 0.0
        if not self.rate and not self.node_times and not self.running:
            return None
        launching = to_launch / self.rate if self.rate else 0.0
        return launching + node_time

    def holding_up(self, now: float) -> str:
        """The slowest node, named, when the others are done and it runs well past the median."""
        if not self.running or not self.node_times or self.total - self.done > max(3, self.total // 20):
            return ""
        launched, name = min(self.running.values())
        ran = now - launched
        if ran < HOLDS_UP_FACTOR * statistics.median(self.node_times):
            return ""
        return f"; waiting on {name}, {format_seconds(ran)} so far"


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
