"""What the three renderings of a report say the same way: the screen (screen.py), report.md
(render_md.py) and report.html (render_html.py) all name nodes, places and causes with these.
"""

from __future__ import annotations

from typing import Any

from collectors.report import nodeset
from collectors.report.catalog import SEVERITIES

# Findings about the collector itself (an item that failed on a node), not about the cluster.
COLLECTION_RULES = ("collect.item_",)
# An evidence line on screen: with its label, node and place it stays within 160 columns.
EVIDENCE_WIDTH = 110


def by_severity(doc: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The findings under each severity that has any, the worst first."""
    found = [(severity, [f for f in doc["findings"] if f["severity"] == severity]) for severity in SEVERITIES]
    return [(severity, findings) for severity, findings in found if findings]


def is_about_collection(finding: dict[str, Any]) -> bool:
    return finding["rule"].startswith(COLLECTION_RULES)


def node_name(node: dict[str, Any]) -> str:
    return node["hostname"] or node["instance_id"]


def where(item: dict[str, Any]) -> str:
    place = f"{item['file']}:{item['line']}" if item.get("line") is not None else item["file"]
    return f"{place} in {item['bundle']}'s bundle" if item.get("bundle") else place


def first_evidence_line(finding: dict[str, Any]) -> str | None:
    """The first evidence line of the finding, with its node and place, on one line."""
    for node in finding["nodes"]:
        if node["evidence"]:
            item = node["evidence"][0]
            return f"{node_name(node)} {where(item)}  {one_line(item['text'])}"
    return None


def one_line(text: str, width: int = EVIDENCE_WIDTH) -> str:
    flat = " ".join(text.replace("\t", " ").split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def fallout(finding: dict[str, Any]) -> str | None:
    """Where this came after another key on the same GPU, the sentence that points at the earlier
    one: that is the cause to act on (anchors.md 4.5)."""
    after = [node for node in finding["nodes"] if node.get("after_on_gpus") and not node.get("first_on_gpus")]
    if not after:
        return None
    earlier = sorted({f"{finding['rule']}:{key}" for node in after for key in node["after_on_gpus"].values()})
    names = nodeset.fold(node_name(node) for node in after)
    return f"on {names} {', '.join(earlier)} came first on the same GPU: act on that one"


def also_seen_text(finding: dict[str, Any]) -> str | None:
    """The consequences folded under this finding (findings.py), each with the nodes it was seen on."""
    also = finding.get("also_seen") or []
    if not also:
        return None
    return "; ".join(f"{entry['title']} ({entry['node_set']})" for entry in also)


def cluster_head(doc: dict[str, Any]) -> str:
    cluster, nodes = doc["cluster"], doc["nodes"]
    return (f"Cluster {cluster['name']} ({cluster.get('type') or '?'}, {cluster.get('status') or 'status unknown'}), "
            f"run {doc['run_id']}: {nodes['total']} node(s) in {len(nodes['groups'])} instance group(s)")


def collected_text(doc: dict[str, Any]) -> str:
    nodes = doc["nodes"]
    statuses = ", ".join(f"{count} {status}" for status, count in nodes["status_counts"].items())
    return f"collected {nodes['collected']} of {nodes['total']} ({statuses or 'no state'})"


def health_text(doc: dict[str, Any]) -> str:
    nodes = doc["nodes"]
    counts = ", ".join(f"{count} {severity}" for severity, count in nodes["findings_by_severity"].items() if count)
    out = f"; out of service: {nodes['unavailable']} ({nodes['unavailable_set']})" if nodes.get("unavailable") else ""
    return f"healthy: {nodes['healthy']} node(s) with nothing above info{out}; findings: {counts or 'none'}"


def kubernetes_lines(doc: dict[str, Any]) -> list[str]:
    kubectl = doc["kubectl"]
    lines = [f"Kubernetes: {kubectl['nodes']} nodes and {kubectl['pods']} pods read" if kubectl["read"]
             else f"Kubernetes: {kubectl['note']}"]
    return lines + [f"Kubernetes bundle problem: {problem}" for problem in kubectl.get("problems", [])]


def diff_lines(diff: dict[str, Any]) -> list[str]:
    """The changes since the earlier run, one line each (the screen and report.md)."""
    lines = [f"CHANGES since run {diff['against']}"]
    if diff.get("note"):
        lines.append(f"  note: {diff['note']}")
    for label, entries in (("new", diff["new"]), ("cleared", diff["cleared"])):
        for entry in entries:
            lines.append(f"  {label:<9} [{entry['id']}] {entry['title']} ({entry['severity']}): {entry['node_set']}")
    for entry in diff["grew"]:
        lines.append(f"  {'grew':<9} [{entry['id']}] {entry['node']}: {entry['before']} -> {entry['after']}")
    for entry in diff["counters"]:
        lines.append(f"  {'counter':<9} {entry['counter']} on {entry['node']}: {entry['before']} -> {entry['after']}")
    for label in ("appeared", "gone"):
        if diff["nodes"][label]:
            lines.append(f"  {'nodes ' + label:<9} {diff['nodes'][label]}")
    if len(lines) == 1 + bool(diff.get("note")):
        lines.append("  nothing changed")
    return lines
