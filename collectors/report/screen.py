"""The report on screen: for 3 a.m., and one screen whatever the size of the fleet.

The cluster's state first, then findings from the worst down, each with its nodes folded, their
instance ids by group, one evidence line and the action; the path of report.html last. Healthy
nodes are counted, never listed. When a block per finding would not fit in SCREEN_LINES, the
least severe findings get one line each (id, title, nodes), and report.md and report.html have
the rest.
"""

from __future__ import annotations

from typing import Any

from collectors.report.render import (EVIDENCE_WIDTH, also_seen_text, by_severity, cluster_head, collected_text,
                                      diff_lines, fallout, first_evidence_line, health_text, is_about_collection,
                                      kubernetes_lines, one_line, plural)

# One screen: a terminal of 50 rows (a laptop's full-screen terminal shows more, the 80x24 default less).
SCREEN_LINES = 50
GROUP_LINES = 8
DIFF_LINES = 12
IDS_PER_GROUP = 6
INFO_LINES = 8
NODE_SET_WIDTH = 110
SCREEN_WIDTH = 150  # what a one-line finding may take before a terminal of that width wraps it


def screen(doc: dict[str, Any], footer: tuple[str, ...] = ()) -> str:
    head = head_lines(doc)
    tail = diff_part(doc) + ([""] + list(footer) if footer else [])
    body = findings_part(doc, SCREEN_LINES - len(head) - len(tail))
    return "\n".join(head + body + tail)


def head_lines(doc: dict[str, Any]) -> list[str]:
    groups = doc["nodes"]["groups"]
    lines = [cluster_head(doc)]
    for name, group in list(groups.items())[:GROUP_LINES]:
        lines.append(f"  {name:<24} {', '.join(group['instance_types']) or '?':<20} {group['nodes']} node(s)")
    if len(groups) > GROUP_LINES:
        rest = list(groups.values())[GROUP_LINES:]
        lines.append(f"  ... {len(rest)} more instance group(s), {sum(g['nodes'] for g in rest)} node(s)")
    lines += [f"  {collected_text(doc)}", f"  {health_text(doc)}"]
    return lines + [f"  {line}" for line in kubernetes_lines(doc)]


def diff_part(doc: dict[str, Any]) -> list[str]:
    if not doc.get("diff"):
        return []
    lines = diff_lines(doc["diff"])
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES - 1] + [f"  ... {len(lines) - DIFF_LINES + 1} more change(s) in report.md"]
    return [""] + lines


def findings_part(doc: dict[str, Any], budget: int) -> list[str]:
    """Every severity's findings in at most `budget` lines: first one line per finding, then whole
    blocks for the worst while they fit."""
    sections = by_severity(doc)
    if not sections:
        return ["", "No findings."]
    serious = [(severity, found) for severity, found in sections if severity != "info"]
    info = next((found for severity, found in sections if severity == "info"), [])
    info_floor = info_part(info, 1) if info else []
    room = budget - sum(2 + len(found) for _, found in serious) - len(info_floor)
    blocks: dict[str, list[str]] = {}
    for _, found in serious:
        for finding in found:
            block = finding_lines(finding)
            if len(block) - 1 <= room:
                blocks[finding["id"]] = block
                room -= len(block) - 1
    lines = []
    for severity, found in serious:
        lines += ["", severity.upper()]
        lines += [line for f in found for line in blocks.get(f["id"], [compact_line(f)])]
    if info:
        lines += info_part(info, max(1, room + len(info_floor) - 2))
    return cut_to(lines, budget)


def cut_to(lines: list[str], budget: int) -> list[str]:
    """More kinds of finding than lines: the rest are counted, and report.md lists them."""
    if len(lines) <= budget:
        return lines
    kept = lines[:max(1, budget - 1)]
    left = sum(1 for line in lines[len(kept):] if line.startswith("  ["))
    return kept + [f"  ... {plural(left, 'more finding')} in report.md and report.html"]


def finding_lines(finding: dict[str, Any]) -> list[str]:
    lines = [f"  [{finding['id']}] {finding['title']}  ({plural(finding['node_count'], 'node')})",
             f"    nodes     {node_set_text(finding)}"]
    lines += [f"              {group}: {ids_text(ids)}" for group, ids in finding["by_group"].items()
              if any(i.startswith("i-") for i in ids)]
    first = first_evidence_line(finding)
    if first:
        lines.append(f"    evidence  {first}")
    also = also_seen_text(finding)
    if also:
        lines.append(f"    also seen {one_line(also, EVIDENCE_WIDTH)}")
    after = fallout(finding)
    if after:
        lines.append(f"    after     {after}")
    lines.append(f"    action    {finding['action']}")
    return lines


def compact_line(finding: dict[str, Any]) -> str:
    """One line: the node set whole when it fits SCREEN_WIDTH, else cut, with how many nodes (the
    eye, and tests/integration/test_report.py, read `: <nodes>` at the end)."""
    line = f"  [{finding['id']}] {finding['title']}: "
    if len(line) + len(finding["node_set"]) <= SCREEN_WIDTH:
        return line + finding["node_set"]
    count = f"  ({plural(finding['node_count'], 'node')})"
    return line + one_line(finding["node_set"], max(20, SCREEN_WIDTH - len(line) - len(count))) + count


def node_set_text(finding: dict[str, Any]) -> str:
    return one_line(finding["node_set"], NODE_SET_WIDTH)


def info_part(findings: list[dict[str, Any]], lines_left: int) -> list[str]:
    """Info findings about the cluster one line each, as many as fit (at most INFO_LINES); the
    collector's own (items that failed on a node) share one line at the end, since they say what
    is missing, not what is wrong."""
    about_cluster = [f for f in findings if not is_about_collection(f)]
    collection = [f for f in findings if is_about_collection(f)]
    room = min(INFO_LINES, lines_left - bool(collection))
    shown = about_cluster[:room] if room >= len(about_cluster) else about_cluster[:max(0, room - 1)]
    lines = ["", "INFO"] + [compact_line(f) for f in shown]
    if len(shown) < len(about_cluster):
        lines.append(f"  ... {len(about_cluster) - len(shown)} more info finding(s) in report.md")
    if collection:
        items = ", ".join(f"{f['key'] or f['rule']} ({plural(f['node_count'], 'node')})" for f in collection)
        lines.append(f"  collection: {one_line(items)} (see each bundle's manifest.tsv)")
    return lines


def ids_text(ids: list[str]) -> str:
    shown = ", ".join(ids[:IDS_PER_GROUP])
    return shown + (f" (+{len(ids) - IDS_PER_GROUP} more)" if len(ids) > IDS_PER_GROUP else "")
