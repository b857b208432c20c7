"""Node tests of Slurm's view of the nodes: drain and down reasons, nodes not responding, states that
keep a node from jobs. Every bundle holds what Slurm says of the whole cluster, so each hit names its node."""

from __future__ import annotations

import re
from typing import Any

from collectors.report import nodeset
from collectors.report.checks.base import NodeTest
from collectors.report.model import Hit, decode

SINFO_REASON_RE = re.compile(rb"^(.*?)\s+\S+\s+(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|Unknown)\s+([\w.\-\[\],]+)\s*$")
SCONTROL_NODE_RE = re.compile(rb"^NodeName=(\S+)")
SCONTROL_STATE_RE = re.compile(rb"\bState=(\S+)")
SCONTROL_REASON_RE = re.compile(rb"^\s*Reason=(.*?)(?: \[[^\]]*@[^\]]*\])?\s*$")


class SlurmReasons(NodeTest):
    """Drain and down reasons from `sinfo -R` (every node) and `scontrol show node` (this node, in
    full). Every bundle holds the reasons of the whole cluster, so each hit names its node
    (`subject`), which also reports reasons for nodes that could not be collected at all."""

    truncated_keys = True  # sinfo -R cuts long reasons: the same reason may come shorter from it

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.table = [(entry["match"].lower(), entry) for entry in rule.params.get("reasons", [])]
        self.node: str | None = None
        self.found: dict[tuple[str, str], Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        if path.endswith("sinfo_R.txt"):
            self.feed_sinfo(path, number, line)
        else:
            self.feed_scontrol(path, number, line)

    def feed_sinfo(self, path: str, number: int, line: bytes) -> None:
        # REASON may hold blanks; USER, TIMESTAMP and NODELIST never do. A line without a timestamp
        # is the header or a note (an item that could not run), not a reason.
        row = SINFO_REASON_RE.match(line)
        if row:
            reason = decode(row.group(1)).strip()
            for host in nodeset.expand(decode(row.group(2))):
                self.add(host, reason, path, number, line)

    def feed_scontrol(self, path: str, number: int, line: bytes) -> None:
        node = SCONTROL_NODE_RE.match(line)
        if node:
            self.node = decode(node.group(1))
        reason = SCONTROL_REASON_RE.match(line)
        if reason and self.node and reason.group(1).strip() not in (b"", b"(null)", b"none"):
            self.add(self.node, decode(reason.group(1)).strip(), path, number, line)

    def add(self, host: str, reason: str, path: str, number: int, line: bytes) -> None:
        if (host, reason) in self.found:
            return
        entry = self.classify(reason)
        self.found[host, reason] = self.hit(reason, path, number, line, subject=host, case="",
                                            override={name: entry[name] for name in ("severity", "meaning", "action")
                                                      if name in entry})

    def classify(self, reason: str) -> dict[str, str]:
        lowered = reason.lower()
        for match, entry in self.table:
            if lowered.startswith(match):
                return entry
        return {}

    def finish(self) -> list[Hit]:
        return list(self.found.values())


SINFO_ROW_RE = re.compile(rb"^\S+\s+\S+\s+\S+\s+\d+\s+(\S+)\s+(\S+)\s*$")


class SlurmNotResponding(NodeTest):
    """`sinfo`: a state with a `*` suffix means slurmctld has not heard from the node's slurmd."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.found: dict[str, Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        row = SINFO_ROW_RE.match(line)
        if not row or not row.group(1).endswith(b"*"):
            return
        state = decode(row.group(1))
        for host in nodeset.expand(decode(row.group(2))):
            self.found.setdefault(host, self.hit(state, path, number, line, subject=host))

    def finish(self) -> list[Hit]:
        return list(self.found.values())


# sinfo's short state names (sinfo(1) NODE STATE CODES) and scontrol's flags, as one word each.
SINFO_STATES = {"drain": "drained", "drng": "draining", "down": "down", "fail": "fail", "failg": "failing",
                "inval": "invalid", "maint": "maintenance"}
SCONTROL_STATE_WORDS = (("INVALID_REG", "invalid"), ("FAIL", "fail"), ("DOWN", "down"), ("MAINT", "maintenance"))


class SlurmStates(NodeTest):
    """Nodes that Slurm keeps from jobs: drained, draining, down, failing, invalid registration, in a
    maintenance reservation (sinfo's STATE column; this node's `scontrol show node` State=)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.found: dict[str, Hit] = {}
        self.node: str | None = None

    def feed(self, path: str, number: int, line: bytes) -> None:
        if path.endswith("sinfo.txt"):
            row = SINFO_ROW_RE.match(line)
            state = SINFO_STATES.get(decode(row.group(1)).rstrip("*~#!%$@^-").lower()) if row else None
            if state:
                for host in nodeset.expand(decode(row.group(2))):
                    self.found.setdefault(host, self.hit(state, path, number, line, subject=host))
            return
        node = SCONTROL_NODE_RE.match(line)
        if node:
            self.node = decode(node.group(1))
        flags = SCONTROL_STATE_RE.search(line)
        if flags and self.node:
            state = scontrol_state(decode(flags.group(1)).upper().split("+"))
            if state:
                self.found.setdefault(self.node, self.hit(state, path, number, line, subject=self.node))

    def finish(self) -> list[Hit]:
        return list(self.found.values())


def scontrol_state(words: list[str]) -> str | None:
    if "DRAIN" in words:
        return "drained" if words[0] in ("IDLE", "DOWN") else "draining"
    return next((state for word, state in SCONTROL_STATE_WORDS if word in words), None)
