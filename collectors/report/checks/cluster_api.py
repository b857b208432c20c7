"""Run tests of HyperPod's own record of the run (cluster_api.tar.gz, read by report/cluster_api.py):
the nodes' cluster events, their lifecycle scripts' failures, the health monitoring agent's detections."""

from __future__ import annotations

import re
from typing import Any, Iterator

from collectors.cluster_api import (
    AGENT_STREAM,
    LIFECYCLE_STREAM,
    LIST_CLUSTER_EVENTS,
    LOGS_FOLDER,
    TARBALL,
    stream_node,
)
from collectors.report.cluster_api import ClusterRecord, event_text
from collectors.report.model import Evidence, Hit, RunView, decode

EVENTS_SOURCE = f"{TARBALL}:{LIST_CLUSTER_EVENTS}"
AGENT_REASON_RE = re.compile(rb'"reason":\s*"(?P<reason>[A-Za-z]+)"')


def node_events(rule: Any, view: RunView) -> list[Hit]:
    """Per node, HyperPod's events by kind (params.kinds: the first pattern the event's text matches,
    else its level), newest first. Info events only for nodes without a bundle read: for them, what
    HyperPod recorded is all the report has."""
    record = view.cluster
    if record is None:
        return []
    kinds = [(entry["key"], re.compile(entry["pattern"])) for entry in rule.params.get("kinds", [])]
    collected = {iid for iid, scan in view.scans.items() if not scan.error}
    hits: dict[tuple[str, str], Hit] = {}
    for event in reversed(record.events):
        iid, text = event.get("InstanceId"), event_text(event)
        if not iid or iid not in view.nodes:
            continue
        key = next((name for name, pattern in kinds if pattern.search(text)), (event.get("EventLevel") or "").lower())
        if key == "info" and iid in collected:
            continue
        hit = hits.setdefault((iid, key), Hit(rule=rule.id, key=key, subject=iid))
        hit.count += 1
        line = f"{event.get('EventTime')} {event.get('EventLevel')}: {text}"
        hit.evidence.append(Evidence(EVENTS_SOURCE, None, line))
    return list(hits.values())


def lifecycle_failures(rule: Any, view: RunView) -> list[Hit]:
    """A lifecycle script that failed: the line that says why (the exception a traceback ends in, else
    the non-zero exit), then the exit line."""
    record = view.cluster
    if record is None:
        return []
    traceback = re.compile(rule.params["traceback"].encode())
    exit_line = re.compile(rule.params["exit"].encode())
    hits = []
    for name, lines in streams_of(record, LIFECYCLE_STREAM):
        found = failing_lines(lines, traceback, exit_line)
        if found:
            file = f"{TARBALL}:{LOGS_FOLDER}/{name}.log"
            hits.append(Hit(rule=rule.id, count=1, subject=stream_node(name),
                            evidence=[Evidence.of_line(file, number, lines[number - 1]) for number in found]))
    return hits


def failing_lines(lines: list[bytes], traceback: re.Pattern, exit_line: re.Pattern) -> list[int]:
    """Line numbers (from 1): the last traceback's exception line and the last non-zero exit, in that
    order; [] when the scripts did not fail."""
    exits = [number for number, line in enumerate(lines, 1) if exit_line.search(line)]
    starts = [number for number, line in enumerate(lines, 1) if traceback.search(line)]
    exception = None
    if starts:
        # The exception line: the first line after the traceback's header that is not a frame (indented).
        exception = next((number for number in range(starts[-1] + 1, len(lines) + 1)
                          if not message_of(lines[number - 1]).startswith((b" ", b"\t"))), None)
    found = [number for number in (exception, exits[-1] if exits else None) if number is not None]
    return sorted(set(found), key=found.index)


def message_of(line: bytes) -> bytes:
    """A stream line without the stage's UTC stamp in front."""
    return line.split(b" ", 1)[1] if b" " in line else line


def agent_detections(rule: Any, view: RunView) -> list[Hit]:
    """The health monitoring agent's detections, by reason (XidHardwareFailure, ...)."""
    record = view.cluster
    if record is None:
        return []
    hits: dict[tuple[str, str], Hit] = {}
    for name, lines in streams_of(record, AGENT_STREAM):
        for number, line in enumerate(lines, 1):
            reason = AGENT_REASON_RE.search(line)
            if reason:
                key = decode(reason["reason"])
                hit = hits.setdefault((name, key), Hit(rule=rule.id, key=key, subject=stream_node(name)))
                hit.count += 1
                hit.evidence.append(Evidence.of_line(f"{TARBALL}:{LOGS_FOLDER}/{name}.log", number, line))
    return list(hits.values())


def streams_of(record: ClusterRecord, kind: str) -> Iterator[tuple[str, list[bytes]]]:
    for name, lines in sorted(record.streams.items()):
        if name.startswith(f"{kind}/") and stream_node(name):
            yield name, lines
