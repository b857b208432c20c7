"""report.html: one self-contained page, the first thing an on-call engineer opens.

A fleet map (every node a cell), the collection outcome per instance group, a GPU matrix, a
timeline of the faults in UTC, the changes since an earlier run, every finding with its evidence,
and a sortable table of the nodes. Everything is in the file: the style and a small script inline,
the pictures as inline SVG, no fonts, images or requests, and a Content-Security-Policy that lets
the browser fetch nothing even if a value slipped through. The page is static HTML that reads and
prints whole without its script; the script only adds expand/collapse, filters, sorting and the
node panel. Every value from the bundles is escaped.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from collectors.report import nodeset, svg
from collectors.report.catalog import SEVERITIES
from collectors.report.engine import TROUBLE
from collectors.report.findings import SEVERITY_RANK
from collectors.report.fleetview import (NODE_WIDE, OUTCOMES, GpuMatrix, NodeView, by_group, gpu_matrices,
                                         node_views, outcome_counts, timeline_events)
from collectors.report.render import (cluster_head, collected_text, diff_lines, fallout, health_text,
                                      kubernetes_lines, node_name, plural, where)

ASSETS = Path(__file__).resolve().parent / "page"
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
# Nodes of one finding shown with their evidence; the rest are named, findings.json has their lines.
NODES_WITH_EVIDENCE = 50
GPU_MATRIX_ROWS = 100


def html_page(doc: dict[str, Any]) -> str:
    views = node_views(doc)
    anchors = {view.key: f"n{number}" for number, view in enumerate(views)}
    title = f"HyperPod report: {doc['cluster']['name']}, run {doc['run_id']}"
    body = [header(doc, title), contents(doc), map_section(views, anchors), outcome_section(views),
            gpu_section(doc, views, anchors), timeline_section(doc, views, anchors), changes_section(doc),
            findings_section(doc, anchors), nodes_section(views, anchors), fleet_section(doc["fleet"]),
            footer(doc)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='color-scheme' content='light dark'><title>{escape(title)}</title>"
            f"<style>{asset('report.css')}</style></head><body>{''.join(body)}"
            f"<script>{asset('report.js')}</script></body></html>\n")


def asset(name: str) -> str:
    return (ASSETS / name).read_text()


def header(doc: dict[str, Any], title: str) -> str:
    counts = doc["nodes"]["findings_by_severity"]
    chips = "".join(f"<span class='chip s-{severity}{'' if counts.get(severity) else ' zero'}'>"
                    f"{counts.get(severity, 0)} {severity}</span>"
                    for severity in SEVERITIES)
    lines = [cluster_head(doc), collected_text(doc), health_text(doc), *kubernetes_lines(doc)]
    return (f"<header><h1>{escape(title)}</h1><p class='chips'>{chips}</p>"
            f"<ul class='summary'>{''.join(f'<li>{escape(line)}</li>' for line in lines)}</ul>"
            f"<p class='meta'>Generated {escape(doc['generated'])}, signature catalog version "
            f"{escape(str(doc['catalog_version']))}.</p></header>")


def contents(doc: dict[str, Any]) -> str:
    sections = [("map", "Fleet map"), ("outcome", "Collection"), ("gpus", "GPUs"), ("timeline", "Timeline")]
    sections += [("changes", "Changes")] if doc.get("diff") else []
    sections += [("findings", f"Findings ({len(doc['findings'])})"), ("nodes", "Nodes"), ("fleet", "Versions")]
    return "<nav>" + " ".join(f"<a href='#{anchor}'>{label}</a>" for anchor, label in sections) + "</nav>"


def severity_legend(extra: str = "") -> str:
    swatches = "".join(f"<span><i class='s-{severity}'></i>{severity}</span>" for severity in SEVERITIES)
    return (f"<p class='legend'>{swatches}<span><i class='s-ok'></i>no finding</span>"
            f"<span><i class='s-none'></i>not judged</span>{extra}</p>")


def map_section(views: list[NodeView], anchors: dict[str, str]) -> str:
    groups = []
    for group, members in by_group(views).items():
        worst = ", ".join(f"{count} {severity}" for severity in TROUBLE
                          if (count := sum(1 for view in members if view.trouble == severity)))
        picture = svg.fleet_map(members, anchors, len(views))
        groups.append(f"<figure><figcaption><b>{escape(group)}</b> {plural(len(members), 'node')}"
                      f"{' · worst: ' + worst if worst else ''}</figcaption>{picture}</figure>")
    swatches = "".join(f"<span><i class='s-{severity}'></i>{severity}</span>" for severity in TROUBLE)
    legend = (f"<p class='legend'>{swatches}<span><i class='s-ok'></i>healthy (info at most)</span>"
              f"<span><i class='s-none hatched'></i>bundle not read (not collected, damaged)</span>"
              f"<span><i class='s-ok out'></i>out of service (drained, down)</span></p>")
    return (f"<section id='map'><h2>Fleet map</h2>{legend}"
            f"<p class='hint'>Each cell is a node, coloured by its worst finding above info; hover for its findings, "
            f"click for its details.</p>{svg.hatch_defs()}<div class='map-area'><div>{''.join(groups)}</div>"
            f"<aside id='node-panel' hidden></aside></div></section>")


def outcome_section(views: list[NodeView]) -> str:
    counts = outcome_counts(views)
    present = [status for status in OUTCOMES if any(count[status] for count in counts.values())]
    legend = "".join(f"<span><i class='o-{status}'></i>{status.replace('_', ' ')}</span>" for status in present)
    return (f"<section id='outcome'><h2>Collection outcome per instance group</h2><p class='legend'>{legend}</p>"
            f"{svg.outcome_bars(counts)}</section>")


def gpu_section(doc: dict[str, Any], views: list[NodeView], anchors: dict[str, str]) -> str:
    matrices = gpu_matrices(doc, views)
    if not matrices:
        return ("<section id='gpus'><h2>GPU matrix</h2><p>No GPU finding on any node.</p></section>")
    parts = [gpu_table(group, matrix, anchors) for group, matrix in matrices.items()]
    return (f"<section id='gpus'><h2>GPU matrix</h2>{severity_legend()}<p class='hint'>Nodes with a GPU finding, one "
            f"column per GPU by PCI address (with its nvidia-smi index where the bundle gave it), coloured by the "
            f"GPU's worst finding; the cell shows its Xid codes, the first (the root cause) first, or the kinds of its "
            f"other findings (ecc, remap, nvlink, smi, ...). "
            f"<b>{NODE_WIDE}</b>: GPU findings that name no single GPU.</p>{''.join(parts)}</section>")


def gpu_table(group: str, matrix: GpuMatrix, anchors: dict[str, str]) -> str:
    heads = "".join(f"<th>{escape(column_label(column, matrix))}</th>" for column in matrix.columns)
    rows = []
    for view, cells in matrix.rows[:GPU_MATRIX_ROWS]:
        tds = []
        for column in matrix.columns:
            cell = cells.get(column)
            if cell is None:
                tds.append("<td class='empty'></td>")
                continue
            tip = f"{view.name} {column_label(column, matrix)}: " + "; ".join(dict.fromkeys(cell.titles))
            tds.append(f"<td class='s-{cell.severity}' title='{svg.attr(tip)}'>{escape(cell.label)}</td>")
        rows.append(f"<tr><th><a href='#{anchors[view.key]}'>{escape(view.name)}</a></th>{''.join(tds)}</tr>")
    more = len(matrix.rows) - GPU_MATRIX_ROWS
    note = f"<p class='hint'>{more} more node(s) with GPU findings: see the node table.</p>" if more > 0 else ""
    return (f"<figure><figcaption><b>{escape(group)}</b> {plural(len(matrix.rows), 'node')} with GPU findings"
            f"</figcaption><table class='gpu-matrix'><tr><th>node</th>{heads}</tr>{''.join(rows)}</table>"
            f"{note}</figure>")


def column_label(column: str, matrix: GpuMatrix) -> str:
    if column == NODE_WIDE:
        return NODE_WIDE
    short = column.split(":", 1)[1] if column.startswith("0000:") else column
    index = matrix.index_of.get(column)
    return f"GPU {index} · {short}" if index is not None else short


def timeline_section(doc: dict[str, Any], views: list[NodeView], anchors: dict[str, str]) -> str:
    events = timeline_events(doc, views)
    head = "<section id='timeline'><h2>Timeline (UTC)</h2>"
    if not events:
        return head + "<p>No finding above info has a time stamp in its evidence.</p></section>"
    picture, left_out = svg.timeline(events, anchors)
    nodes = len({event.node.key for event in events})
    notes = [f"{plural(len(events), 'fault')} on {plural(nodes, 'node')}, from {svg.utc_text(events[0].utc)} to "
             f"{svg.utc_text(max(event.utc for event in events))}: the first moment each finding was seen on each "
             f"node, from the time stamps of its evidence lines (the journal's, with their zone; dmesg -T and "
             f"syslog's, in the node's zone when its journal gave it)."]
    assumed = sum(1 for event in events if not event.zone_known)
    if assumed:
        notes.append(f"{plural(assumed, 'fault')} (hollow dots) had only stamps without a zone and no journal line "
                     f"to learn the node's offset from: taken as UTC.")
    if left_out:
        notes.append(f"{plural(left_out, 'more node')} with faults later than these are counted in the strip, "
                     f"not drawn as rows.")
    return (f"{head}{severity_legend()}{picture}"
            f"{''.join(f'<p class=hint>{escape(note)}</p>' for note in notes)}</section>")


def changes_section(doc: dict[str, Any]) -> str:
    diff = doc.get("diff")
    if not diff:
        return ""
    rows = [("new", e["severity"], e["title"], e["id"], e["node_set"]) for e in diff["new"]]
    rows += [("cleared", e["severity"], e["title"], e["id"], e["node_set"]) for e in diff["cleared"]]
    rows += [("grew", "", f"{e['before']} → {e['after']}", e["id"], e["node"]) for e in diff["grew"]]
    rows += [("counter grew", "", f"{e['before']} → {e['after']}", e["counter"], e["node"]) for e in diff["counters"]]
    rows += [(f"nodes {label}", "", "", "", diff["nodes"][label]) for label in ("appeared", "gone")
             if diff["nodes"][label]]
    head = f"<section id='changes'><h2>Changes since run {escape(diff['against'])}</h2>"
    if diff.get("note"):
        head += f"<p class='hint'>{escape(diff['note'])}</p>"
    if not rows:
        return f"{head}<p>Nothing changed.</p></section>"
    body = "".join(f"<tr class='change-{change.split()[0]}'><td>{escape(change)}</td>"
                   f"<td>{badge(severity) if severity else ''}</td><td>{escape(what)}</td>"
                   f"<td><code>{escape(ident)}</code></td><td><code>{escape(nodes)}</code></td></tr>"
                   for change, severity, what, ident, nodes in rows)
    return (f"{head}"
            f"<table class='changes'><tr><th>change</th><th>severity</th><th>what</th><th>finding</th><th>nodes</th>"
            f"</tr>{body}</table><details class='plain'><summary>as text</summary>"
            f"<pre>{escape(chr(10).join(diff_lines(diff)))}</pre></details></section>")


def badge(severity: str) -> str:
    return f"<span class='badge s-{severity}'>{severity}</span>"


def findings_section(doc: dict[str, Any], anchors: dict[str, str]) -> str:
    boxes = "".join(f"<label><input type='checkbox' data-severity='{severity}' checked> {severity}</label>"
                    for severity in SEVERITIES)
    toolbar = ("<div class='toolbar'><button type='button' id='expand-all'>Expand all</button>"
               "<button type='button' id='collapse-all'>Collapse all</button>"
               f"{boxes}<input type='search' id='finding-filter' placeholder='filter: text, node, id'>"
               "<span id='finding-count'></span></div>")
    items = "".join(finding_details(number, finding, anchors) for number, finding in enumerate(doc["findings"]))
    return (f"<section id='findings'><h2>Findings</h2>{toolbar}"
            f"{items or '<p>No findings.</p>'}</section>")


def finding_details(number: int, finding: dict[str, Any], anchors: dict[str, str]) -> str:
    after = fallout(finding)
    shown = finding["nodes"][:NODES_WITH_EVIDENCE]
    rows = "".join(node_row(node, anchors) for node in shown)
    return (f"<details class='finding' id='f{number}' data-severity='{finding['severity']}'>"
            f"<summary>{badge(finding['severity'])} <span class='title'>{escape(finding['title'])}</span> "
            f"<span class='count'>{plural(finding['node_count'], 'node')}</span> "
            f"<code class='set'>{escape(finding['node_set'])}</code></summary><div class='body'>"
            f"<p><code>{escape(finding['id'])}</code> {escape(finding['meaning'])}</p>"
            f"<p><b>Action.</b> {escape(finding['action'])}</p>"
            f"{f'<p class=after><b>After.</b> {escape(after)}</p>' if after else ''}{also_seen_list(finding)}"
            f"<table class='evidence'><tr><th>node</th><th>instance</th><th>group</th><th>count</th><th>evidence</th>"
            f"</tr>{rows}</table>{rest_of_nodes(finding, len(shown))}</div></details>")


def also_seen_list(finding: dict[str, Any]) -> str:
    """The consequences folded under this finding, each with its nodes (findings.py's also_seen)."""
    entries = finding.get("also_seen") or []
    if not entries:
        return ""
    items = "".join(f"<li>{badge(entry['severity'])} {escape(entry['title'])} <code>{escape(entry['id'])}</code> on "
                    f"<code>{escape(entry['node_set'])}</code></li>" for entry in entries)
    return f"<div class='also'><b>Also seen</b>, its consequences, folded here:<ul>{items}</ul></div>"


def evidence_lines(items: list[dict[str, Any]]) -> str:
    return "".join(f"<div class='ev'><span class='where'>{escape(where(item))}</span> <code>{escape(item['text'])}"
                   f"</code></div>" for item in items)


def node_row(node: dict[str, Any], anchors: dict[str, str]) -> str:
    key = node["instance_id"] or node["hostname"]
    lines = evidence_lines(node["evidence"])
    lines += "".join(f"<div class='also-ev'>also {badge(entry['severity'])} {escape(entry['title'])}"
                     f"{evidence_lines(entry.get('evidence', []))}</div>" for entry in node.get("also_seen", []))
    name = escape(node_name(node))
    link = f"<a href='#{anchors[key]}'>{name}</a>" if key in anchors else name
    return (f"<tr><td>{link}</td><td>{escape(node['instance_id'] or '-')}</td><td>{escape(node['group'] or '-')}</td>"
            f"<td>{node['count']}</td><td>{lines or '-'}</td></tr>")


def rest_of_nodes(finding: dict[str, Any], shown: int) -> str:
    """The nodes past NODES_WITH_EVIDENCE: named and their instance ids listed, evidence left to findings.json."""
    rest = finding["nodes"][shown:]
    if not rest:
        return ""
    ids: dict[str, list[str]] = {}
    for node in rest:
        ids.setdefault(node["group"] or "?", []).append(node["instance_id"] or node["hostname"])
    listed = "".join(f"<li>{escape(group)}: {escape(', '.join(members))}</li>" for group, members in ids.items())
    return (f"<p class='hint'>{plural(len(rest), 'more node')}, evidence in findings.json: "
            f"<code>{escape(nodeset.fold(node_name(node) for node in rest))}</code></p><ul class='ids'>{listed}</ul>")


def nodes_section(views: list[NodeView], anchors: dict[str, str]) -> str:
    heads = [("node", "name"), ("instance id", "text"), ("group", "text"), ("outcome", "text"),
             ("HyperPod", "text"), ("worst", "number"), *((severity, "number") for severity in SEVERITIES),
             ("findings", "text")]
    head = "".join(f"<th data-sort='{kind}' tabindex='0'>{escape(label)}</th>" for label, kind in heads)
    rows = "".join(node_table_row(view, anchors[view.key]) for view in views)
    return (f"<section id='nodes'><h2>Nodes ({len(views)})</h2><p class='hint'>Click a column to sort.</p>"
            f"<table class='nodes sortable'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>")


def node_table_row(view: NodeView, anchor: str) -> str:
    rank = SEVERITY_RANK[view.worst] if view.worst else len(SEVERITIES)
    worst = badge(view.worst) if view.worst else ("-" if view.read else "not judged")
    links = ", ".join(f"<a href='#f{finding.number}' class='s-text-{finding.severity}'>{escape(finding.title)}</a>"
                      for finding in view.findings)
    counts = "".join(f"<td>{view.count(severity) or ''}</td>" for severity in SEVERITIES)
    return (f"<tr id='{anchor}'><td>{escape(view.name)}</td><td>{escape(view.instance_id or '-')}</td>"
            f"<td>{escape(view.group)}</td><td class='o-text-{view.status}'>{escape(view.status)}</td>"
            f"<td>{escape(view.hyperpod_status or '-')}</td><td data-value='{rank}'>{worst}</td>{counts}"
            f"<td>{links}</td></tr>")


def fleet_section(fleet: dict[str, dict[str, dict[str, int]]]) -> str:
    if not fleet:
        return "<section id='fleet'><h2>Versions</h2><p>No bundle gave versions.</p></section>"
    rows = []
    for group, facts in fleet.items():
        for fact, values in facts.items():
            shown = ", ".join(f"{value} ({count})" for value, count in sorted(values.items(), key=lambda v: -v[1]))
            drift = " class='drift'" if len(values) > 1 else ""
            rows.append(f"<tr{drift}><td>{escape(group)}</td><td>{escape(fact)}</td><td>{escape(shown)}</td></tr>")
    return (f"<section id='fleet'><h2>Versions per instance group</h2><table class='facts'><tr><th>group</th>"
            f"<th>fact</th><th>values (nodes)</th></tr>{''.join(rows)}</table></section>")


def footer(doc: dict[str, Any]) -> str:
    scan = doc["scan"]
    return (f"<footer>{scan['bundles']} bundle(s), {scan['files_read']} file(s) and "
            f"{scan['bytes_read'] / 2**20:.1f} MB of text read in {scan['seconds']:.1f} s. The whole report, "
            f"for machines: findings.json beside this file.</footer>")
