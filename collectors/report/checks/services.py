"""Node tests of systemd units: failed now, failed and running again since, or in a restart loop."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from collectors.report.checks.base import NodeTest
from collectors.report.model import Evidence, Hit, decode

UNIT_NAME = rb"(?P<unit>[\w@:.\\-]+\.(?:service|socket|mount|timer|path|scope|target))"
# A unit line may start with systemd's bullet (one character, several bytes: ●, ×, or * in plain ASCII).
FAILED_LISTED_RE = re.compile(rb"^\s*(?:\S+\s+)?" + UNIT_NAME + rb"\s+\S+\s+failed\s+\S+")
STATUS_HEADER_RE = re.compile(rb"^\s*(?:\S+\s+)?" + UNIT_NAME + rb"(?: - |$)")
# Failed, or in a restart loop after a failure (systemctl status: "activating (auto-restart) (Result: exit-code)").
STATUS_FAILED_RE = re.compile(rb"^\s*Active: (?:failed\b|activating \(auto-restart\) \(Result: (?!success))")
RESTART_COUNTER_RE = re.compile(rb"systemd\[1\]: " + UNIT_NAME + rb": Scheduled restart job, restart counter is at (\d+)")
# What systemd writes when a unit fails (journal lines of systemd[1]); the older wording is
# systemd 219's (CentOS 7, tests/fixtures/realworld).
JOURNAL_FAILED_RE = re.compile(
    rb"systemd\[1\]: (?:" + UNIT_NAME + rb": (?:Failed with result '|Main process exited, code=(?:dumped|exited, "
    rb"status=[1-9]|killed, status=\d+/(?:SEGV|ABRT|BUS|ILL|FPE))|Control process exited, code=exited,? status=[1-9])"
    rb"|Unit (?P<old>[\w@:.\\-]+\.service) entered failed state)")


class FailedUnits(NodeTest):
    """Units that failed: listed by `systemctl list-units --failed`, `Active: failed` in a status
    file, or systemd's own journal lines ("Failed with result", "Main process exited"). A unit
    failed now (listed, its status says so, or systemd restarted it `params.restart_loop` times
    or more: a crash loop) is judged by `params.units`; one that failed and is
    no longer failed ran again since, a warning. A unit whose entry `needs` a bundle file counts
    only where that file is (the Fabric Manager runs only on NVSwitch nodes: elsewhere it fails by
    design, NV_WARN_NOTHING_TO_DO)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.now: dict[str, Hit] = {}
        self.earlier: dict[str, Hit] = {}
        self.files: set[str] = set()
        self.status_unit: bytes | None = None

    def feed(self, path: str, number: int, line: bytes) -> None:
        self.files.add(path.rsplit("/", 1)[-1].removesuffix(".gz"))
        listed = FAILED_LISTED_RE.match(line) if path.endswith("systemd_failed.txt") else None
        header = STATUS_HEADER_RE.match(line) if path.endswith("_status.txt") or path == "fabricmanager.txt" else None
        if header:
            self.status_unit = header.group("unit")
        if listed:
            self.note(self.now, listed.group("unit"), path, number, line)
        elif self.status_unit and STATUS_FAILED_RE.match(line):
            self.note(self.now, self.status_unit, path, number, line)
        else:
            journal = JOURNAL_FAILED_RE.search(line)
            if journal:
                self.note(self.earlier, journal.group("unit") or journal.group("old"), path, number, line)
            restarts = RESTART_COUNTER_RE.search(line)
            if restarts and int(restarts.group(2)) >= int(self.rule.params.get("restart_loop", 3)):
                self.note(self.now, restarts.group("unit"), path, number, line)

    def literal(self, path: str) -> bytes | None:
        """In logs only systemd's own lines matter; the unit lists and status files are read whole."""
        return None if path.endswith(("systemd_failed.txt", "_status.txt")) or path == "fabricmanager.txt" \
            else b"systemd[1]: "

    def note(self, table: dict[str, Hit], unit: bytes, path: str, number: int, line: bytes) -> None:
        name = unit_key(decode(unit))
        if name in table:
            table[name].count += 1
            if len(table[name].evidence) < 3:
                table[name].evidence.append(Evidence.of_line(path, number, line))
        else:
            table[name] = self.hit(name, path, number, line)

    def finish(self) -> list[Hit]:
        hits = []
        for name, hit in self.now.items():
            entry = self.entry(name)
            if entry is not None:
                if name in self.earlier:
                    hit.evidence += self.earlier[name].evidence[:3 - len(hit.evidence)]
                hits.append(self.judged(hit, entry, entry.get("severity", self.rule.severity)))
        for name, hit in self.earlier.items():
            entry = self.entry(name)
            if name not in self.now and entry is not None:
                hit.key = f"{name} (restarted since)"
                hits.append(self.judged(hit, entry, "warning"))
        return hits

    def entry(self, name: str) -> dict[str, Any] | None:
        """The unit's entry of params.units, {} for units not listed; None when its `needs` file is absent."""
        for entry in self.rule.params.get("units", []):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in entry["match"]):
                return entry if entry.get("needs", "") in self.files | {""} else None
        return {}

    def judged(self, hit: Hit, entry: dict[str, Any], severity: str) -> Hit:
        hit.case = ""
        hit.override = {"severity": severity if entry else "info",
                        **{name: entry[name] for name in ("meaning", "action") if name in entry}}
        return hit


def unit_key(unit: str) -> str:
    """kubelet.service -> kubelet; other unit types keep their suffix (fsx.mount)."""
    return unit.removesuffix(".service")
