"""The control plane's record of a run (cluster_api.tar.gz, from the cluster stage), as the rules of
`source: cluster_api` in catalog.yaml read it (their tests: checks/cluster_api.py).

For each node: what HyperPod did and when (its cluster events, with DescribeClusterEvent's details
where the stage fetched them), what its lifecycle scripts printed, what the health monitoring agent
detected. A node no session reached has no bundle of its own; this is then its evidence. The bundle's
manifest also says what could not be read (a denied action), which the report shows.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.cluster_api import (
    EVENTS_FOLDER,
    LIST_CLUSTER_EVENTS,
    LOGS_FOLDER,
    MANIFEST,
    MANIFEST_COLUMNS,
    OK,
    TARBALL,
    TOP_FOLDER,
)
from collectors.report.bundles import READ_ERRORS


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
    except READ_ERRORS + (ValueError,) as exc:  # ValueError: a member that is not JSON
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
