"""report.html's pictures as inline SVG: the fleet map, the outcome bars and the timeline.

Hand-written SVG rather than a charting library: three simple pictures need no dependency, stay
small at 1000 nodes (a cell is one rect), print sharp, and take their colours from the page's
stylesheet (classes s-<severity>, o-<outcome>), so dark mode and print recolour them. Hovering
shows each shape's <title>; nothing here needs the page's script.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from html import escape
from typing import Iterable

from collectors.report.fleetview import OUTCOMES, Event, NodeView

# Cells of a large fleet are small enough for 1000 nodes to fit one screen (20 rows of 50).
CELL, LARGE_CELL, GAP = 14, 22, 3
LARGE_CELLS_UP_TO = 200
MAP_COLUMNS, LARGE_MAP_COLUMNS = 50, 32
FINDINGS_IN_TOOLTIP = 6
BAR_LABEL, BAR_WIDTH, BAR_HEIGHT = 190, 620, 22
PLOT_LABEL, PLOT_WIDTH, ROW_HEIGHT, STRIP_HEIGHT = 150, 720, 14, 36
TIMELINE_ROWS = 40
STRIP_BUCKETS = 72
TICK_STEPS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


def attr(value: object) -> str:
    return escape(str(value), quote=True)


def severity_class(view: NodeView) -> str:
    if view.trouble:
        return f"s-{view.trouble}"
    return "s-ok" if view.read else "s-none"


def hatch_defs() -> str:
    """The hatching that marks a node whose bundle could not be read; referenced by every map."""
    return ("<svg width='0' height='0' class='defs' aria-hidden='true'><defs>"
            "<pattern id='hatch' width='5' height='5' patternUnits='userSpaceOnUse' patternTransform='rotate(45)'>"
            "<rect width='2' height='5' class='hatch-line'/></pattern></defs></svg>")


def fleet_map(views: list[NodeView], anchors: dict[str, str], fleet_size: int) -> str:
    """One cell per node of a group; `anchors` maps a node's key to its row in the node table."""
    large = fleet_size <= LARGE_CELLS_UP_TO
    size, columns = (LARGE_CELL, LARGE_MAP_COLUMNS) if large else (CELL, MAP_COLUMNS)
    columns = min(columns, len(views)) or 1
    rows = -(-len(views) // columns)
    pitch = size + GAP
    cells = []
    for number, view in enumerate(views):
        x, y = number % columns * pitch, number // columns * pitch
        box = f"x='{x}' y='{y}' width='{size}' height='{size}'"
        mark = "" if view.read else f"<rect {box} class='hatch'/>"
        if view.out_of_service:  # a bar across the cell, as on a no-entry sign
            mark += (f"<rect x='{x + 3}' y='{y + size / 2 - 1.5}' width='{size - 6}' height='3' "
                     f"class='out-mark'/>")
        cells.append(f"<a href='#{anchors[view.key]}' class='cell' data-node='{anchors[view.key]}'>"
                     f"<rect {box} rx='2' class='{severity_class(view)}'/>{mark}"
                     f"<title>{escape(tooltip(view))}</title></a>")
    width, height = columns * pitch - GAP, rows * pitch - GAP
    return (f"<svg class='map' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='{len(views)} nodes'>{''.join(cells)}</svg>")


def tooltip(view: NodeView) -> str:
    lines = [" · ".join(part for part in (view.hostname, view.instance_id, view.group) if part),
             f"collection: {view.status}" + (f" · HyperPod: {view.hyperpod_status}" if view.hyperpod_status else "")
             + ("" if view.read else " · bundle not read") + (" · out of service" if view.out_of_service else "")]
    lines += [f"{finding.severity.upper()} {finding.title}" for finding in view.findings[:FINDINGS_IN_TOOLTIP]]
    if len(view.findings) > FINDINGS_IN_TOOLTIP:
        lines.append(f"… {len(view.findings) - FINDINGS_IN_TOOLTIP} more")
    if not view.findings:
        lines.append("no findings")
    return "\n".join(lines)


def outcome_bars(counts: dict[str, Counter]) -> str:
    """One stacked bar per instance group: how its nodes' collection ended."""
    rows = []
    for number, (group, outcome) in enumerate(counts.items()):
        total = sum(outcome.values()) or 1
        y, x = number * (BAR_HEIGHT + 8), BAR_LABEL
        parts = [f"<text x='0' y='{y + BAR_HEIGHT - 6}' class='label'>{escape(group)} ({total})</text>"]
        for status in OUTCOMES:
            if not outcome.get(status):
                continue
            width = outcome[status] / total * BAR_WIDTH
            parts.append(f"<rect x='{x:.1f}' y='{y}' width='{width:.1f}' height='{BAR_HEIGHT}' class='o-{status}'>"
                         f"<title>{escape(group)}: {outcome[status]} {status}</title></rect>")
            if width >= 9 * len(str(outcome[status])) + 6:
                parts.append(f"<text x='{x + width / 2:.1f}' y='{y + BAR_HEIGHT - 6}' class='in-bar'>"
                             f"{outcome[status]}</text>")
            x += width
        rows.append("".join(parts))
    height = len(counts) * (BAR_HEIGHT + 8)
    width = BAR_LABEL + BAR_WIDTH
    return (f"<svg class='bars' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='collection outcome per instance group'>{''.join(rows)}</svg>")


# -- the timeline --------------------------------------------------------------------------------------

def timeline(events: list[Event], anchors: dict[str, str]) -> tuple[str, int]:
    """A strip counting the nodes whose faults began in each slice of time (a fleet-wide event is a
    tall bar), then one row per node, earliest first, each fault a dot. Returns the picture and the
    number of nodes with events left out of the rows."""
    start, end = span(events)
    scale = PLOT_WIDTH / (end - start).total_seconds()

    def x_of(moment: dt.datetime) -> float:
        return PLOT_LABEL + (moment - start).total_seconds() * scale

    nodes: dict[str, NodeView] = {}  # by their first fault, as events come earliest first
    for event in events:
        nodes.setdefault(event.node.key, event.node)
    drawn = list(nodes)[:TIMELINE_ROWS]
    row_of = {key: number for number, key in enumerate(drawn)}
    top = STRIP_HEIGHT + 10
    parts = strip(events, start, end, x_of)
    for key, number in row_of.items():
        node = nodes[key]
        y = top + number * ROW_HEIGHT
        parts.append(f"<a href='#{anchors[key]}'><text x='{PLOT_LABEL - 6}' y='{y + ROW_HEIGHT - 3}' "
                     f"class='label end'>{escape(node.name)}</text></a>"
                     f"<line x1='{PLOT_LABEL}' x2='{PLOT_LABEL + PLOT_WIDTH}' y1='{y + ROW_HEIGHT / 2}' "
                     f"y2='{y + ROW_HEIGHT / 2}' class='row-line'/>")
    for event in events:
        if event.node.key in row_of:
            y = top + row_of[event.node.key] * ROW_HEIGHT + ROW_HEIGHT / 2
            parts.append(dot(event, x_of(event.utc), y))
    bottom = top + len(drawn) * ROW_HEIGHT
    parts += axis(start, end, x_of, bottom)
    height, width = bottom + 30, PLOT_LABEL + PLOT_WIDTH + 10
    picture = (f"<svg class='timeline' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
               f"aria-label='faults over time, UTC'>{''.join(parts)}</svg>")
    return picture, len(nodes) - len(drawn)


def span(events: list[Event]) -> tuple[dt.datetime, dt.datetime]:
    """The events' time range, widened a little, and to a minute at least."""
    start, end = events[0].utc, max(event.utc for event in events)
    pad = max((end - start) * 0.03, dt.timedelta(seconds=30))
    return start - pad, end + pad


def strip(events: list[Event], start: dt.datetime, end: dt.datetime, x_of) -> list[str]:
    bucket = (end - start) / STRIP_BUCKETS
    first_per_node: dict[str, dt.datetime] = {}
    for event in events:
        first_per_node.setdefault(event.node.key, event.utc)
    counts = Counter(min(STRIP_BUCKETS - 1, int((moment - start) / bucket)) for moment in first_per_node.values())
    tallest = max(counts.values())
    parts = [f"<text x='{PLOT_LABEL - 6}' y='{STRIP_HEIGHT - 4}' class='label end'>nodes, first fault</text>",
             f"<line x1='{PLOT_LABEL}' x2='{PLOT_LABEL + PLOT_WIDTH}' y1='{STRIP_HEIGHT}' y2='{STRIP_HEIGHT}' "
             f"class='axis'/>"]
    width = max(1.0, x_of(start + bucket) - x_of(start) - 1)
    for slot, count in sorted(counts.items()):
        height = max(2.0, count / tallest * (STRIP_HEIGHT - 4))
        left = x_of(start + bucket * slot)
        parts.append(f"<rect x='{left:.1f}' y='{STRIP_HEIGHT - height:.1f}' width='{width:.1f}' "
                     f"height='{height:.1f}' class='strip'><title>{count} node(s) from "
                     f"{utc_text(start + bucket * slot)}</title></rect>")
    return parts


def dot(event: Event, x: float, y: float) -> str:
    assumed = "" if event.zone_known else " (no zone in the stamp: taken as UTC)"
    return (f"<a href='#f{event.number}'><circle cx='{x:.1f}' cy='{y:.1f}' r='4' "
            f"class='s-{event.severity}{'' if event.zone_known else ' assumed'}'>"
            f"<title>{escape(event.node.name)} {utc_text(event.utc)}{assumed}\n{event.severity.upper()} "
            f"{escape(event.title)}\n{escape(event.text)}</title></circle></a>")


def axis(start: dt.datetime, end: dt.datetime, x_of, y: float) -> list[str]:
    seconds = (end - start).total_seconds()
    step = next((step for step in TICK_STEPS if seconds / step <= 8), TICK_STEPS[-1])
    first = dt.datetime.fromtimestamp(-(-start.timestamp() // step) * step, dt.timezone.utc)
    parts = [f"<line x1='{PLOT_LABEL}' x2='{PLOT_LABEL + PLOT_WIDTH}' y1='{y}' y2='{y}' class='axis'/>"]
    for tick in ticks(first, end, dt.timedelta(seconds=step)):
        x = x_of(tick)
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{STRIP_HEIGHT}' y2='{y + 4}' class='grid'/>"
                     f"<text x='{x:.1f}' y='{y + 16}' class='tick'>{tick_text(tick, step)}</text>")
    return parts


def ticks(first: dt.datetime, end: dt.datetime, step: dt.timedelta) -> Iterable[dt.datetime]:
    tick = first
    while tick <= end:
        yield tick
        tick += step


def tick_text(moment: dt.datetime, step: int) -> str:
    if step >= 86400:
        return moment.strftime("%b %d")
    if step >= 60:
        return moment.strftime("%b %d %H:%M") if moment.hour == 0 and moment.minute == 0 else moment.strftime("%H:%M")
    return moment.strftime("%H:%M:%S")


def utc_text(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
