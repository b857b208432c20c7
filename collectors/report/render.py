"""The report document as text: the screen summary, report.md, and a one-file report.html.

The screen is for 3 a.m.: the cluster's state first, then findings from the worst down, each
with its nodes folded, one evidence line and the action. Healthy nodes are counted, never
listed; info findings get one line each. report.md and report.html hold everything else.
"""

from __future__ import annotations

import html
from typing import Any

from collectors.report import nodeset
from collectors.report.catalog import SEVERITIES

# Findings about the collector itself (an item that failed), not about the cluster.
COLLECTION_RULES = ("collect.item_",)
IDS_PER_GROUP = 6
INFO_LINES = 8
EVIDENCE_WIDTH = 160
MD_NODES_WITH_EVIDENCE = 20


def screen(doc: dict[str, Any]) -> str:
    lines = cluster_lines(doc)
    for severity in SEVERITIES:
        found = [f for f in doc["findings"] if f["severity"] == severity]
        if found:
            lines += ["", severity.upper()]
            lines += info_lines(found) if severity == "info" else [line for f in found for line in finding_lines(f)]
    if not doc["findings"]:
        lines += ["", "No findings."]
    if doc.get("diff"):
        lines += [""] + diff_lines(doc["diff"])
    return "\n".join(lines)


def cluster_lines(doc: dict[str, Any]) -> list[str]:
    cluster, nodes = doc["cluster"], doc["nodes"]
    lines = [f"Cluster {cluster['name']} ({cluster.get('type') or '?'}, {cluster.get('status') or 'status unknown'}), "
             f"run {doc['run_id']}: {nodes['total']} node(s) in {len(nodes['groups'])} instance group(s)"]
    for name, group in nodes["groups"].items():
        lines.append(f"  {name:<24} {', '.join(group['instance_types']) or '?':<20} {group['nodes']} node(s)")
    statuses = ", ".join(f"{count} {status}" for status, count in nodes["status_counts"].items())
    lines.append(f"  collected {nodes['collected']} of {nodes['total']} ({statuses or 'no state'})")
    counts = ", ".join(f"{count} {severity}" for severity, count in nodes["findings_by_severity"].items() if count)
    lines.append(f"  healthy: {nodes['healthy']} node(s) with nothing above info; findings: {counts or 'none'}")
    kubectl = doc["kubectl"]
    lines.append(f"  Kubernetes: {kubectl['nodes']} nodes and {kubectl['pods']} pods read" if kubectl["read"]
                 else f"  Kubernetes: {kubectl['note']}")
    lines += [f"  Kubernetes bundle problem: {problem}" for problem in kubectl.get("problems", [])]
    return lines


def finding_lines(finding: dict[str, Any]) -> list[str]:
    lines = [f"  [{finding['id']}] {finding['title']}  ({plural(finding['node_count'], 'node')})",
             f"    nodes     {finding['node_set']}"]
    lines += [f"              {group}: {ids_text(ids)}" for group, ids in finding["by_group"].items()
              if any(i.startswith("i-") for i in ids)]
    first = first_evidence(finding)
    if first:
        lines.append(f"    evidence  {first}")
    lines += fallout_lines(finding)
    lines.append(f"    action    {finding['action']}")
    return lines


def fallout_lines(finding: dict[str, Any]) -> list[str]:
    """Where this came after another key on the same GPU: the earlier one is the cause to act on."""
    after = [node for node in finding["nodes"] if node.get("after_on_gpus") and not node.get("first_on_gpus")]
    if not after:
        return []
    earlier = sorted({f"{finding['rule']}:{key}" for node in after for key in node["after_on_gpus"].values()})
    names = nodeset.fold(node["hostname"] or node["instance_id"] for node in after)
    return [f"    after     on {names} {', '.join(earlier)} came first on the same GPU: act on that one"]


def info_lines(findings: list[dict[str, Any]]) -> list[str]:
    """One line per info finding about the cluster; the collector's own (items that failed on a
    node) share one line at the end, since they say what is missing, not what is wrong."""
    about_cluster = [f for f in findings if not f["rule"].startswith(COLLECTION_RULES)]
    lines = [f"  [{f['id']}] {f['title']}: {f['node_set']}" for f in about_cluster[:INFO_LINES]]
    if len(about_cluster) > INFO_LINES:
        lines.append(f"  ... {len(about_cluster) - INFO_LINES} more info finding(s) in report.md")
    collection = [f for f in findings if f["rule"].startswith(COLLECTION_RULES)]
    if collection:
        items = ", ".join(f"{f['key'] or f['rule']} ({plural(f['node_count'], 'node')})" for f in collection)
        lines.append(f"  collection: {one_line(items, EVIDENCE_WIDTH)} (see each bundle's manifest.tsv)")
    return lines


def ids_text(ids: list[str]) -> str:
    shown = ", ".join(ids[:IDS_PER_GROUP])
    return shown + (f" (+{len(ids) - IDS_PER_GROUP} more)" if len(ids) > IDS_PER_GROUP else "")


def first_evidence(finding: dict[str, Any]) -> str | None:
    for node in finding["nodes"]:
        if node["evidence"]:
            item = node["evidence"][0]
            name = node["hostname"] or node["instance_id"]
            return f"{name} {where(item)}  {one_line(item['text'])}"
    return None


def where(item: dict[str, Any]) -> str:
    place = f"{item['file']}:{item['line']}" if item.get("line") is not None else item["file"]
    return f"{place} in {item['bundle']}'s bundle" if item.get("bundle") else place


def one_line(text: str, width: int = EVIDENCE_WIDTH) -> str:
    flat = " ".join(text.replace("\t", " ").split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def diff_lines(diff: dict[str, Any]) -> list[str]:
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


# -- report.md ---------------------------------------------------------------------------------------

def markdown(doc: dict[str, Any]) -> str:
    parts = [f"# HyperPod report: {doc['cluster']['name']}, run {doc['run_id']}", "",
             f"Generated {doc['generated']} with signature catalog version {doc['catalog_version']}.", "",
             "## Cluster", "", "```", *cluster_lines(doc), "```", ""]
    if doc.get("diff"):
        parts += ["## Changes", "", "```", *diff_lines(doc["diff"]), "```", ""]
    for severity in SEVERITIES:
        found = [f for f in doc["findings"] if f["severity"] == severity]
        if found:
            parts += [f"## {severity.capitalize()} ({len(found)})", ""]
            for finding in found:
                parts += markdown_finding(finding)
    parts += markdown_fleet(doc["fleet"])
    return "\n".join(parts) + "\n"


def markdown_finding(finding: dict[str, Any]) -> list[str]:
    parts = [f"### {finding['title']}", "",
             f"`{finding['id']}`, {finding['severity']}, {plural(finding['node_count'], 'node')}: "
             f"`{finding['node_set']}`", "",
             f"**Meaning.** {finding['meaning']}", "", f"**Action.** {finding['action']}", ""]
    parts += ["| group | instance | host | count |", "|---|---|---|---|"]
    parts += [f"| {n['group'] or '-'} | {n['instance_id'] or '-'} | {n['hostname'] or '-'} | {n['count']} |"
              for n in finding["nodes"]]
    parts.append("")
    shown = finding["nodes"][:MD_NODES_WITH_EVIDENCE]
    parts.append("```")
    for node in shown:
        for item in node["evidence"]:
            line = f"{node['hostname'] or node['instance_id']} {where(item)}: {item['text']}"
            parts.append(line.replace("```", "'''"))  # a fence inside evidence must not end the block
    parts.append("```")
    if len(finding["nodes"]) > len(shown):
        parts.append(f"(evidence of {len(finding['nodes']) - len(shown)} more node(s) in findings.json)")
    parts.append("")
    return parts


def markdown_fleet(fleet: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    if not fleet:
        return []
    parts = ["## Fleet", "", "| group | fact | values (nodes) |", "|---|---|---|"]
    for group, facts in fleet.items():
        for fact, values in facts.items():
            shown = ", ".join(f"{value} ({count})" for value, count in sorted(values.items(), key=lambda v: -v[1]))
            parts.append(f"| {group} | {fact} | {shown} |")
    return parts + [""]


# -- report.html -------------------------------------------------------------------------------------

HTML_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}
details{border-left:4px solid #999;margin:.6em 0;padding:.2em .8em}
.critical{border-color:#b00}.high{border-color:#e70}.warning{border-color:#cb0}.info{border-color:#69c}
summary{cursor:pointer;font-weight:600}table{border-collapse:collapse}td,th{padding:.1em .6em;text-align:left}
"""


def html_page(doc: dict[str, Any]) -> str:
    """One self-contained file: inline style, no script, every value escaped."""
    esc = html.escape
    body = [f"<h1>HyperPod report: {esc(str(doc['cluster']['name']))}, run {esc(doc['run_id'])}</h1>",
            f"<pre>{esc(chr(10).join(cluster_lines(doc)))}</pre>"]
    if doc.get("diff"):
        body.append(f"<h2>Changes</h2><pre>{esc(chr(10).join(diff_lines(doc['diff'])))}</pre>")
    for finding in doc["findings"]:
        rows = "".join(f"<tr><td>{esc(n['group'] or '-')}</td><td>{esc(n['instance_id'] or '-')}</td>"
                       f"<td>{esc(n['hostname'] or '-')}</td><td>{n['count']}</td></tr>" for n in finding["nodes"])
        proof = "\n".join(f"{n['hostname'] or n['instance_id']} {where(i)}: {i['text']}"
                          for n in finding["nodes"][:MD_NODES_WITH_EVIDENCE] for i in n["evidence"])
        body.append(
            f"<details class='{esc(finding['severity'])}'><summary>{esc(finding['severity'].upper())} "
            f"{esc(finding['title'])} ({plural(finding['node_count'], 'node')}: {esc(finding['node_set'])})</summary>"
            f"<p><code>{esc(finding['id'])}</code> {esc(finding['meaning'])}</p>"
            f"<p><b>Action.</b> {esc(finding['action'])}</p>"
            f"<table><tr><th>group</th><th>instance</th><th>host</th><th>count</th></tr>{rows}</table>"
            f"<pre>{esc(proof)}</pre></details>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HyperPod report {esc(doc['run_id'])}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
