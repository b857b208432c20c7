"""The report document turned round, node by node: what report.html's pictures and tables draw.

findings.json lists findings, each with its nodes. The fleet map, the node table, the GPU matrix
and the timeline need the other way round: every node of the run with its findings, each GPU with
its worst finding, each fault with the moment it happened. All of it is read from the document
alone, so an old findings.json can be drawn again.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from collectors.report import logtime, nodeset
from collectors.report.diff import node_ref
from collectors.report.engine import TROUBLE
from collectors.report.findings import SEVERITY_RANK
from collectors.state import (FAILED, INTERRUPTED, OK, OK_WITH_ERRORS, PENDING, RUNNING, SKIPPED, THROTTLED,
                              TIMEOUT, UNREACHABLE)

# Outcomes from the best to the worst news, the order of the bars and the legend. "unknown": a node
# only other nodes name (sinfo -R), which the run's state does not hold.
OUTCOMES = (OK, OK_WITH_ERRORS, FAILED, TIMEOUT, UNREACHABLE, THROTTLED, INTERRUPTED, SKIPPED, PENDING, RUNNING,
            "unknown")
GPU_RULES = "gpu."  # the catalog's GPU rules share this prefix
XID_RULE = "gpu.xid"
# GPU rules whose PCI address is an NVSwitch's, not a GPU's: their findings are node-wide.
SWITCH_RULES = ("gpu.sxid",)
# A PCI address as NVRM and nvidia-smi write it (0000:53:00, 00000000:53:00.0, GPU0000:53:00.0).
BUS_RE = re.compile(r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})(?:\.[0-7])?(?![0-9A-Fa-f:])")
# An nvidia_smi_gpus.csv row begins `index, pci.bus_id, ...` (bash/common.sh's query).
CSV_INDEX_RE = re.compile(r"^\s*(\d+),\s*([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?),")
NODE_WIDE = "node-wide"  # the GPU matrix's column for GPU findings that name no single GPU


@dataclass(frozen=True)
class NodeFinding:
    number: int  # the finding's place in doc["findings"]: its anchor on the page
    id: str
    title: str
    severity: str
    count: int


@dataclass
class NodeView:
    key: str  # instance id, or the host name of a node only other nodes' bundles name
    instance_id: str | None
    hostname: str | None
    group: str
    status: str
    hyperpod_status: str | None
    read: bool  # its bundle was read
    findings: list[NodeFinding] = field(default_factory=list)
    out_of_service: bool = False  # drained, down or failing (engine.py's unavailable nodes)

    @property
    def name(self) -> str:
        return self.hostname or self.key

    @property
    def worst(self) -> str | None:
        return self.findings[0].severity if self.findings else None

    @property
    def trouble(self) -> str | None:
        """The worst severity above info: info findings are records, and such a node is healthy."""
        return self.worst if self.worst in TROUBLE else None

    def count(self, severity: str) -> int:
        return sum(1 for finding in self.findings if finding.severity == severity)


def natural_key(name: str) -> tuple:
    """ip-10-1-4-2 before ip-10-1-4-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def node_views(doc: dict[str, Any]) -> list[NodeView]:
    """Every node of the run with its findings worst first, by instance group then name."""
    views = {key: NodeView(key=key, instance_id=key if key.startswith("i-") else None, hostname=record.get("hostname"),
                           group=record.get("group") or "?", status=record.get("status") or "unknown",
                           hyperpod_status=record.get("hyperpod_status"), read=bool(record.get("read")))
             for key, record in doc["node_index"].items()}
    for number, finding in enumerate(doc["findings"]):
        for node in finding["nodes"]:
            key = node_ref(node)
            view = views.get(key)
            if view is None:
                view = views[key] = NodeView(key=key, instance_id=node["instance_id"], hostname=node["hostname"],
                                             group=node["group"] or "?", status="unknown", hyperpod_status=None,
                                             read=False)
            view.findings.append(NodeFinding(number, finding["id"], finding["title"], finding["severity"],
                                             node["count"]))
    out = set(nodeset.expand(doc["nodes"].get("unavailable_set") or ""))
    for view in views.values():
        view.findings.sort(key=lambda item: (SEVERITY_RANK[item.severity], item.number))
        view.out_of_service = view.name in out or view.key in out
    return sorted(views.values(), key=lambda view: (view.group, natural_key(view.name)))


def by_group(views: list[NodeView]) -> dict[str, list[NodeView]]:
    groups: dict[str, list[NodeView]] = defaultdict(list)
    for view in views:
        groups[view.group].append(view)
    return dict(groups)


def outcome_counts(views: list[NodeView]) -> dict[str, Counter]:
    """Per instance group, how many nodes ended with each collection outcome."""
    return {group: Counter(view.status for view in members) for group, members in by_group(views).items()}


# -- the GPU matrix ------------------------------------------------------------------------------------

@dataclass
class GpuCell:
    severity: str
    codes: list[str] = field(default_factory=list)  # Xid codes, the one that came first on the GPU first
    kinds: list[str] = field(default_factory=list)  # the other GPU findings by kind: ecc, remap, nvlink, ...
    titles: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What the cell shows: its Xid codes, else the kinds of its findings (two at most)."""
        shown = self.codes or self.kinds
        return ",".join(shown[:2]) + ("+" if len(shown) > 2 else "")


@dataclass
class GpuMatrix:
    """One instance group's GPU findings: columns are GPUs by PCI address (NODE_WIDE last)."""

    columns: list[str]
    index_of: dict[str, int]  # PCI address -> nvidia-smi index, where a CSV row of the bundle said it
    rows: list[tuple[NodeView, dict[str, GpuCell]]]


def bus_id(text: str) -> str | None:
    """The first PCI address in the text, as NVRM writes it: 0000:53:00."""
    match = BUS_RE.search(text)
    return f"{match[1][-4:]}:{match[2]}:{match[3]}".lower() if match else None


def gpu_matrices(doc: dict[str, Any], views: list[NodeView]) -> dict[str, GpuMatrix]:
    """Per instance group, the nodes with a GPU finding and where on the node each one is."""
    cells: dict[str, dict[str, GpuCell]] = defaultdict(dict)
    index_of: dict[str, dict[str, int]] = defaultdict(dict)
    for finding in doc["findings"]:
        if not finding["rule"].startswith(GPU_RULES):
            continue
        for node in finding["nodes"]:
            key = node_ref(node)
            index_of[key].update(csv_indexes(node))
            for gpu, first in finding_gpus(finding, node).items():
                add_to_cell(cells[key], gpu, finding, first)
                for consequence in node.get("also_seen", []):  # folded under this one, on its GPUs
                    if consequence["id"].startswith(GPU_RULES):
                        add_to_cell(cells[key], gpu, consequence_finding(consequence), False)
    matrices = {}
    for group, members in by_group(views).items():
        rows = [(view, cells[view.key]) for view in members if cells.get(view.key)]
        if rows:
            rows.sort(key=lambda row: (SEVERITY_RANK[worst_of(row[1])], natural_key(row[0].name)))
            matrices[group] = GpuMatrix(columns=matrix_columns(rows), index_of=agreed_indexes(rows, index_of),
                                        rows=rows)
    return matrices


def finding_gpus(finding: dict[str, Any], node: dict[str, Any]) -> dict[str, bool]:
    """The GPUs a finding is on for one node, each with whether it came first there (the root cause)."""
    if finding["rule"] in SWITCH_RULES:
        return {NODE_WIDE: False}
    named = [bus_id(gpu) for gpu in node.get("gpus", [])]  # the scan's own reading, where the rule names the GPU
    firsts = {bus_id(gpu) or gpu: True for gpu in node.get("first_on_gpus", [])}
    afters = {bus_id(gpu) or gpu: False for gpu in node.get("after_on_gpus", {})}
    if firsts or afters or named:
        return {**{gpu: False for gpu in named if gpu}, **afters, **firsts}
    keyed = bus_id(finding["key"] or "")
    if keyed:
        return {keyed: False}
    seen = {bus_id(item["text"]) for item in node["evidence"]} - {None}
    return {gpu: False for gpu in sorted(seen)} or {NODE_WIDE: False}


def consequence_finding(entry: dict[str, Any]) -> dict[str, Any]:
    """A node's also_seen entry in the shape of a finding: its rule and key from its id."""
    rule, _, key = entry["id"].partition(":")
    return {"rule": rule, "key": key or None, "severity": entry["severity"], "title": entry["title"]}


def add_to_cell(cells: dict[str, GpuCell], gpu: str, finding: dict[str, Any], first: bool) -> None:
    cell = cells.get(gpu)
    if cell is None:
        cell = cells[gpu] = GpuCell(severity=finding["severity"])
    elif SEVERITY_RANK[finding["severity"]] < SEVERITY_RANK[cell.severity]:
        cell.severity = finding["severity"]
    if finding["rule"] == XID_RULE and finding["key"]:
        if first:
            cell.codes.insert(0, finding["key"])
        else:
            cell.codes.append(finding["key"])
    elif finding_kind(finding) not in cell.kinds:
        cell.kinds.append(finding_kind(finding))
    cell.titles.append(finding["title"])


def finding_kind(finding: dict[str, Any]) -> str:
    """gpu.ecc_volatile -> ecc, gpu.remap_pending -> remap: the first word of the rule's name."""
    return finding["rule"].split(".", 1)[-1].split("_", 1)[0]


def csv_indexes(node: dict[str, Any]) -> dict[str, int]:
    """PCI address -> nvidia-smi index, from evidence rows of nvidia_smi_gpus.csv (its own, or of
    the consequences folded under it)."""
    found = {}
    folded = [item for entry in node.get("also_seen", []) for item in entry.get("evidence", [])]
    for item in node["evidence"] + folded:
        match = CSV_INDEX_RE.match(item["text"])
        if match and item["file"].endswith(".csv"):
            found[bus_id(match[2])] = int(match[1])
    return found


def worst_of(cells: dict[str, GpuCell]) -> str:
    return min((cell.severity for cell in cells.values()), key=SEVERITY_RANK.__getitem__)


def matrix_columns(rows: list[tuple[NodeView, dict[str, GpuCell]]]) -> list[str]:
    gpus = sorted({gpu for _, cells in rows for gpu in cells if gpu != NODE_WIDE})
    return gpus + ([NODE_WIDE] if any(NODE_WIDE in cells for _, cells in rows) else [])


def agreed_indexes(rows: list[tuple[NodeView, dict[str, GpuCell]]],
                   index_of: dict[str, dict[str, int]]) -> dict[str, int]:
    """A column's GPU index, when the rows that know one all say the same."""
    seen: dict[str, set[int]] = defaultdict(set)
    for view, _ in rows:
        for gpu, index in index_of.get(view.key, {}).items():
            seen[gpu].add(index)
    return {gpu: next(iter(indexes)) for gpu, indexes in seen.items() if len(indexes) == 1}


# -- the timeline --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """The first moment one finding was seen on one node."""

    utc: dt.datetime
    zone_known: bool
    node: NodeView
    number: int  # the finding's place in doc["findings"]
    finding_id: str
    title: str
    severity: str
    text: str


def collection_time(doc: dict[str, Any]) -> dt.datetime:
    """When the run began (its id is the UTC start time), else when the report was made."""
    try:
        return dt.datetime.strptime(doc["run_id"][:15], "%Y%m%d_%H%M%S").replace(tzinfo=logtime.UTC)
    except ValueError:
        return dt.datetime.fromisoformat(doc["generated"])


def timeline_events(doc: dict[str, Any], views: list[NodeView]) -> list[Event]:
    """Faults (findings above info) with a time stamp in their evidence, earliest first."""
    collected = collection_time(doc)
    offsets = node_offsets(doc)
    by_key = {view.key: view for view in views}
    events = []
    for number, finding in enumerate(doc["findings"]):
        if finding["severity"] == "info":
            continue
        for node in finding["nodes"]:
            key = node_ref(node)
            when = first_time(node["evidence"], offsets.get(key), collected)
            if when is not None:
                events.append(Event(when.utc, when.zone_known, by_key[key], number, finding["id"], finding["title"],
                                    finding["severity"], when.text))
    return sorted(events, key=lambda event: (event.utc, SEVERITY_RANK[event.severity], natural_key(event.node.name)))


@dataclass(frozen=True)
class _Stamped:
    utc: dt.datetime
    zone_known: bool
    text: str


def first_time(evidence: list[dict[str, Any]], offset: dt.timedelta | None,
               collected: dt.datetime) -> _Stamped | None:
    """The earliest stamp of the evidence, preferring stamps whose zone is known."""
    stamped = []
    for item in evidence:
        when = logtime.line_time(item["text"], offset, collected)
        if when is not None:
            stamped.append(_Stamped(when.utc, when.zone_known, item["text"]))
    if not stamped:
        return None
    return min(stamped, key=lambda item: (not item.zone_known, item.utc))


def node_offsets(doc: dict[str, Any]) -> dict[str, dt.timedelta]:
    """Each node's UTC offset, from any of its evidence lines that carries one (its journal's)."""
    offsets: dict[str, dt.timedelta] = {}
    for finding in doc["findings"]:
        for node in finding["nodes"]:
            key = node_ref(node)
            if key in offsets:
                continue
            for item in node["evidence"]:
                offset = logtime.zone_offset(item["text"])
                # A line from another node's bundle tells that node's clock, not this one's.
                if offset is not None and not item.get("bundle"):
                    offsets[key] = offset
                    break
    return offsets
