"""report.md: the report as GitHub-flavoured Markdown, to paste into an issue or a support case.

Pasted, it must render: tables, node sets folded (ip-10-1-4-[1-3,9]), evidence in code spans,
node lists folded away in <details>, and no line over MAX_LINE characters (long lines are what
mail clients and support-case forms break). GFM's rules that shape this (github.github.com/gfm):
a `|` inside a table cell must be escaped even inside a code span (section 4.10); a code span is
opened and closed by backtick runs of the same length and may run over several lines, each line
end read as a space (section 6.1); and a line that begins like a block (`-`, `#`, `>`, a digit
and `.`) may end the paragraph it is in, so a code span is only continued on a line that begins
with a letter.
"""

from __future__ import annotations

import re
from typing import Any

from collectors.report.fleetview import OUTCOMES, node_views, outcome_counts
from collectors.report.render import (by_severity, cluster_head, collected_text, fallout,
                                      health_text, kubernetes_lines, node_name, one_line, plural, where)

MAX_LINE = 200
# Nodes of one finding whose evidence report.md shows: a paste stays short; findings.json has the rest.
NODES_WITH_EVIDENCE = 20
WRAP_AT = 180
CELL_WIDTH = 60
# What may begin a block and so end a paragraph (CommonMark 0.30 sections 4 and 5, GFM 4.10): list
# markers, headings, quotes, fences, HTML, setext and thematic rules, table delimiter rows.
UNSAFE_START_RE = re.compile(r"(?:[-+*]|#{1,6}|\d{1,9}[.)])(?:\s|$)|>|`{3}|~{3}|<|[|:=_*-]")


def markdown(doc: dict[str, Any]) -> str:
    parts = [f"# HyperPod report: {doc['cluster']['name']}, run {doc['run_id']}", "",
             f"Generated {doc['generated']} with signature catalog version {doc['catalog_version']}.", ""]
    parts += cluster_part(doc)
    if doc.get("diff"):
        parts += diff_part(doc["diff"])
    parts += summary_table(doc)
    for severity, found in by_severity(doc):
        parts += [f"## {severity.capitalize()} ({len(found)})", ""]
        for finding in found:
            parts += finding_part(finding)
    parts += fleet_part(doc["fleet"])
    return "\n".join(parts) + "\n"


def cluster_part(doc: dict[str, Any]) -> list[str]:
    parts = ["## Cluster", ""]
    for paragraph in (cluster_head(doc), f"{collected_text(doc)}; {health_text(doc)}", *kubernetes_lines(doc)):
        parts += wrapped(f"{paragraph}.") + [""]
    counts = outcome_counts(node_views(doc))
    shown = [outcome for outcome in OUTCOMES if any(count[outcome] for count in counts.values())]
    parts += [row(["instance group", "instance types", "nodes", *shown]), row(["---"] * (3 + len(shown)))]
    for name, group in doc["nodes"]["groups"].items():
        outcome = counts.get(name, {})
        parts.append(row([name, ", ".join(group["instance_types"]) or "?", str(group["nodes"]),
                          *[str(outcome.get(status, 0)) for status in shown]]))
    return parts + [""]


def diff_part(diff: dict[str, Any]) -> list[str]:
    parts = [f"## Changes since run {diff['against']}", ""]
    if diff.get("note"):
        parts += [f"Note: {diff['note']}.", ""]
    rows = [["new", e["severity"], e["title"], code(e["id"]), code(e["node_set"])] for e in diff["new"]]
    rows += [["cleared", e["severity"], e["title"], code(e["id"]), code(e["node_set"])] for e in diff["cleared"]]
    rows += [["grew", "", f"{e['before']} -> {e['after']}", code(e["id"]), code(e["node"])] for e in diff["grew"]]
    rows += [["counter grew", "", f"{e['before']} -> {e['after']}", code(e["counter"]), code(e["node"])]
             for e in diff["counters"]]
    rows += [[f"nodes {label}", "", "", "", code(diff["nodes"][label])] for label in ("appeared", "gone")
             if diff["nodes"][label]]
    if not rows:
        return parts + ["Nothing changed.", ""]
    return parts + [row(["change", "severity", "what", "finding", "nodes"]), row(["---"] * 5)] + \
        [row(cells) for cells in rows] + [""]


def summary_table(doc: dict[str, Any]) -> list[str]:
    if not doc["findings"]:
        return ["No findings.", ""]
    parts = ["## Findings", "", row(["severity", "finding", "id", "nodes", "node set"]), row(["---"] * 5)]
    parts += [row([f["severity"], f["title"], code(f["id"]), str(f["node_count"]), code(f["node_set"])])
              for f in doc["findings"]]
    return parts + [""]


def finding_part(finding: dict[str, Any]) -> list[str]:
    parts = [f"### {one_line(finding['title'], WRAP_AT)}", ""]
    parts += wrapped(f"{code(finding['id'])}, {finding['severity']}, {plural(finding['node_count'], 'node')}: "
                     f"{node_set_spans(finding['node_set'])}")
    parts += [""] + wrapped(f"**Meaning.** {finding['meaning']}") + [""] + wrapped(f"**Action.** {finding['action']}")
    also = "; ".join(f"{entry['title']} on {node_set_spans(entry['node_set'])}"
                     for entry in finding.get("also_seen", []))
    if also:
        parts += [""] + wrapped(f"**Also seen** (its consequences, folded here): {also}.")
    after = fallout(finding)
    if after:
        parts += [""] + wrapped(f"**After.** {after}.")
    shown = finding["nodes"][:NODES_WITH_EVIDENCE]
    parts += ["", f"<details><summary>{nodes_summary(finding, len(shown))}</summary>", "",
              row(["group", "instance", "host", "count"]), row(["---"] * 4)]
    parts += [row([n["group"] or "-", n["instance_id"] or "-", n["hostname"] or "-", str(n["count"])]) for n in shown]
    parts.append("")
    for node in shown:
        for item in node["evidence"]:
            parts += code_item(f"- {code(node_name(node))} {code(where(item))}: ", item["text"])
    if len(finding["nodes"]) > len(shown):
        parts += ["", f"Evidence of {len(finding['nodes']) - len(shown)} more node(s) is in findings.json and "
                      f"report.html."]
    return parts + ["", "</details>", ""]


def nodes_summary(finding: dict[str, Any], shown: int) -> str:
    if shown == finding["node_count"]:
        return f"{plural(shown, 'node')}: instance ids and evidence"
    return f"the first {shown} of {finding['node_count']} nodes: instance ids and evidence"


def fleet_part(fleet: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    if not fleet:
        return []
    parts = ["## Fleet", "", row(["group", "fact", "values (nodes)"]), row(["---"] * 3)]
    for group, facts in fleet.items():
        for fact, values in facts.items():
            shown = ", ".join(f"{value} ({count})" for value, count in sorted(values.items(), key=lambda v: -v[1]))
            parts.append(row([group, fact, one_line(shown, WRAP_AT - 40)]))
    return parts + [""]


# -- GFM pieces -------------------------------------------------------------------------------------------

def code(text: str) -> str:
    """A code span that holds any text: the fence is longer than every backtick run inside."""
    text = flat(text)
    fence = fence_for(text)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def flat(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def fence_for(text: str) -> str:
    return "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


def node_set_spans(node_set: str) -> str:
    """A folded node set as one code span per name or range, so that a long set can break between
    them; a single range too long for a line is cut (findings.json has every node)."""
    spans, joined, depth = [], [], 0
    for part in node_set.split(","):  # commas inside brackets (ip-10-1-4-[1-3,9]) belong to their name
        joined.append(part)
        depth += part.count("[") - part.count("]")
        if depth == 0:
            spans.append(code(one_line(",".join(joined), WRAP_AT // 2)))
            joined = []
    if joined:
        spans.append(code(one_line(",".join(joined), WRAP_AT // 2)))
    return ", ".join(spans)


def row(cells: list[str]) -> str:
    """A table row, every cell cut to CELL_WIDTH and its pipes escaped (GFM 4.10)."""
    return "| " + " | ".join(cell_text(cell) for cell in cells) + " |"


def cell_text(text: str) -> str:
    if len(text) > CELL_WIDTH:
        is_code = text.startswith("`")
        text = code(one_line(text.strip("`").strip(), CELL_WIDTH - 4)) if is_code else one_line(text, CELL_WIDTH)
    return text.replace("|", "\\|")


def can_continue(word: str) -> bool:
    """Whether a line may begin with this word and still continue the paragraph it is in."""
    return UNSAFE_START_RE.match(word) is None


def wrapped(text: str, indent: str = "") -> list[str]:
    """Prose (with short code spans) in lines of at most WRAP_AT characters: a line end reads as a
    space, so lines are broken at spaces, and only before a word a line may begin with."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > WRAP_AT and can_continue(word) and line.strip():
            lines.append(line)
            line = indent + word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def code_item(prefix: str, text: str, indent: str = "  ") -> list[str]:
    """`prefix` then the text as one code span, wrapped inside the span at spaces; a word that fits
    nowhere within MAX_LINE is cut there, and the span is still closed."""
    text = flat(text)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    opening, closing = fence_for(text) + pad, pad + fence_for(text)
    lines, line, started = [], prefix + opening, False
    for word in text.split(" "):
        joined = f"{line} {word}" if started else line + word
        if len(joined) + len(closing) <= WRAP_AT:
            line, started = joined, True
        elif started and can_continue(word) and len(indent + word + closing) <= WRAP_AT:
            lines.append(line)
            line = indent + word
        elif len(joined) + len(closing) <= MAX_LINE:
            line, started = joined, True
        else:
            room = max(0, MAX_LINE - len(closing) - len(line) - 2)  # 2: the space and the ellipsis
            line = (f"{line} {word[:room]}" if started else line + word[:room + 1]).rstrip() + "…"
            break
    return lines + [line + closing]
