"""The control plane's record of a run (cluster_api.tar.gz, from the cluster stage), and the rules that
read it (`source: cluster_api` in catalog.yaml).

For each node: what HyperPod did and when (its cluster events, with DescribeClusterEvent's details
where the stage fetched them), what its lifecycle scripts printed, what the health monitoring agent
detected. A node no session reached has no bundle of its own; this is then its evidence. The bundle's
manifest also says what could not be read (a denied action), which the report shows.
"""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from collectors.cluster_api import (
    AGENT_STREAM,
    EVENTS_FOLDER,
    LIFECYCLE_STREAM,
    LIST_CLUSTER_EVENTS,
    LOGS_FOLDER,
    MANIFEST,
    MANIFEST_COLUMNS,
    OK,
    TARBALL,
    TOP_FOLDER,
    stream_node,
)
from collectors.report.model import Evidence, Hit, RunView, decode

EVENTS_SOURCE = f"{TARBALL}:{LIST_CLUSTER_EVENTS}"
LEVELS = ("Error", "Warn", "Info")
AGENT_REASON_RE = re.compile(rb'"reason":\s*"(?P<reason>[A-Za-z]+)"')


@dataclass
class ClusterRecord:
    """What the report reads of cluster_api.tar.gz."""

    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first, with their details merged
    streams: dict[str, list[bytes]] = field(default_factory=dict)  # stream name -> its lines
    manifest: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_cluster_api(run_dir: Path) -> ClusterRecord | None:
    """None when the run has no cluster bundle (the cluster stage did not run)."""
    path = run_dir / TARBALL
    if not path.is_file():
        return None
    record, details = ClusterRecord(), {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.isfile():
                    read_member(record, details, member.name.removeprefix(f"{TOP_FOLDER}/"), tar.extractfile(member))
    except (OSError, tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        record.problems.append(f"{TARBALL}: {type(exc).__name__}: {exc}")
    for event in record.events:
        event.update(details.get(event["EventId"], {}))
    record.events.sort(key=lambda event: str(event.get("EventTime")))
    return record


def read_member(record: ClusterRecord, details: dict[str, dict], name: str, raw) -> None:
    if name == LIST_CLUSTER_EVENTS:
        listing = json.load(raw)
        record.events += [event for query in listing for page in query["pages"] for event in page.get("Events", [])]
    elif name.startswith(f"{EVENTS_FOLDER}/") and name.endswith(".json"):
        detail = json.load(raw).get("EventDetails") or {}
        details[detail.get("EventId", "")] = detail
    elif name.startswith(f"{LOGS_FOLDER}/") and name.endswith(".log"):
        record.streams[name[len(LOGS_FOLDER) + 1:-len(".log")]] = raw.read().splitlines()
    elif name == MANIFEST:
        rows = [line.split("\t") for line in raw.read().decode(errors="replace").splitlines()[1:]]
        record.manifest = [dict(zip(MANIFEST_COLUMNS, row)) for row in rows if len(row) == len(MANIFEST_COLUMNS)]


def summary(record: ClusterRecord | None) -> dict[str, Any]:
    """findings.json's `cluster_api`: whether it was read, what could not be collected, and every
    node's events in time order, for the timeline and the node pages."""
    if record is None:
        return {"read": False, "note": f"no {TARBALL} in the run: HyperPod's events and logs were not read"}
    missing = [row for row in record.manifest if row["status"] != OK]
    return {
        "read": True,
        "events": [event_entry(event) for event in record.events],
        "log_streams": len(record.streams),
        "denied": sorted({row["action"] for row in missing if row["status"] == "denied"}),
        "not_collected": [{"file": row["file"], "action": row["action"], "status": row["status"], "note": row["note"]}
                          for row in missing],
        "problems": record.problems,
    }


def event_entry(event: dict[str, Any]) -> dict[str, Any]:
    return {"time": event.get("EventTime"), "level": event.get("EventLevel"), "resource": event.get("ResourceType"),
            "instance_id": event.get("InstanceId"), "group": event.get("InstanceGroupName"),
            "description": event_text(event), "id": event.get("EventId")}


def event_text(event: dict[str, Any]) -> str:
    """The description, with the failure message of its details when it says more."""
    text = event.get("Description") or ""
    metadata = (event.get("EventDetails") or {}).get("EventMetadata") or {}
    failure = next((part.get("FailureMessage") for part in metadata.values() if isinstance(part, dict)
                    and part.get("FailureMessage")), None)
    return f"{text}: {failure}" if failure and failure not in text else text


# -- the rules' tests ------------------------------------------------------------------------------

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


CLUSTER_API_TESTS = {"node_events": node_events, "lifecycle_failures": lifecycle_failures,
                     "agent_detections": agent_detections}
