"""The three renderings of a report: the screen (one screen at 1000 nodes), report.md (rendered here by
GitHub's own Markdown parser, cmark-gfm) and report.html (parsed whole: every node a cell, every
finding a section, nothing loaded from anywhere, every value escaped).

The report is the sick fleet's (tests/fixtures/sick_fleet.py) as the real engine makes it, with a
hostile evidence line; the 1000-node report is that one's findings spread over 1000 nodes
(sick_fleet.spread).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from collectors.report.diff import compare
from collectors.report.engine import build_report
from collectors.report.render_html import html_page
from collectors.report.render_md import MAX_LINE, markdown
from collectors.report.screen import SCREEN_LINES, screen
from tests.conftest import require
from tests.fixtures import sick_fleet

# Everything Markdown or HTML could take for syntax, in one kernel line (kern.oom keeps the whole line).
HOSTILE = ("Out of memory: Killed process 7 (`py|thon`) <script>alert(1)</script> <img src=x onerror=alert(2)> "
           "- 1. # > ``` | --- | *** ~~~ ") + "padding " * 30
FOOTER = ("Details: runs/hp-slurm-sick/20261122_110000/findings.json and report.md beside it",
          "Open:    runs/hp-slurm-sick/20261122_110000/report.html")
PAGE_LIMIT = 3 * 2**20  # issue 18: report.html under 3 MB for 1000 nodes


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    extra = {7: sick_fleet.kernel_lines("ip-10-1-4-7", "08:31:00", HOSTILE)}
    run = sick_fleet.build(tmp_path_factory.mktemp("runs"), extra=extra)
    return build_report(run.run_dir, run.state(), workers=1)


@pytest.fixture(scope="module")
def fleet_of_1000(doc):
    return sick_fleet.spread(doc, 1000)


# -- the screen ----------------------------------------------------------------------------------------

def test_the_screen_of_a_1000_node_run_is_one_screen_and_ends_with_the_page(fleet_of_1000):
    lines = screen(fleet_of_1000, footer=FOOTER).splitlines()
    serious = [f for f in fleet_of_1000["findings"] if f["severity"] != "info"]
    assert len(serious) == 12
    assert len(lines) <= SCREEN_LINES
    assert lines[-1] == FOOTER[-1]
    text = "\n".join(lines)
    for finding in serious:  # every fault is there, as a block or as one line
        assert f"[{finding['id']}] {finding['title']}" in text
    assert "    action    " in text  # the worst get their whole block
    assert max(len(line) for line in lines) <= 200


def test_blocks_go_to_the_worst_findings_and_the_rest_get_a_line_each(doc):
    lines = screen(doc, footer=FOOTER).splitlines()
    serious = [f["id"] for f in doc["findings"] if f["severity"] != "info"]
    blocks = [m[1] for line in lines if (m := re.match(r"^  \[(.+?)\] .*  \(\d+ nodes?\)$", line))]
    single = [m[1] for line in lines if (m := re.match(r"^  \[(.+?)\] .*: \S+$", line))]
    assert len(lines) <= SCREEN_LINES and lines[-2:] == list(FOOTER)
    assert blocks and blocks == serious[:len(blocks)]  # whole blocks for the worst, in order
    assert blocks + [i for i in single if i in serious] == serious  # and every other one on a line of its own


# -- report.md -----------------------------------------------------------------------------------------

def gfm(text: str) -> str:
    """report.md as GitHub renders it: cmark-gfm with GitHub's extensions, raw HTML let through."""
    try:
        import cmarkgfm
        from cmarkgfm.cmark import Options
    except ImportError:
        require(False, "needs cmarkgfm, GitHub's Markdown parser (pip install -e '.[test]')")
    return cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE)


def code_texts(rendered: str) -> list[str]:
    return [" ".join(html.unescape(inner).split()) for inner in re.findall(r"<code>(.*?)</code>", rendered, re.S)]


def test_report_md_renders_on_github_with_every_evidence_line_whole_in_code(doc):
    text = markdown(doc)
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    rendered = gfm(text)
    spans = code_texts(rendered)
    evidence = [item["text"] for f in doc["findings"] for node in f["nodes"] for item in node["evidence"]]
    assert any("<script>" in line for line in evidence)  # the hostile line is evidence
    for line in evidence:
        assert " ".join(line.split()) in spans, line
    assert "<script>" not in rendered and "<img" not in rendered  # inside code spans, escaped


def test_report_md_tables_keep_their_columns(doc):
    rendered = gfm(markdown(doc))
    tables = re.findall(r"<table>(.*?)</table>", rendered, re.S)
    assert len(tables) >= 3  # instance groups, findings, fleet
    for table in tables:
        width = len(re.findall(r"<th[ >]", table.split("</thead>")[0]))
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], re.S):
            assert len(re.findall(r"<td[ >]", row)) == width
    summary = next(table for table in tables if "node set" in table)
    for finding in doc["findings"]:  # a node set with its pipes escaped is still one cell
        assert f"<td><code>{html.escape(finding['node_set'], quote=False)}</code></td>" in summary


def test_report_md_folds_nodes_and_names_every_finding(doc):
    rendered = gfm(markdown(doc))
    assert rendered.count("<details>") == len(doc["findings"])
    headings = [html.unescape(h) for h in re.findall(r"<h3>(.*?)</h3>", rendered)]
    assert headings == [f["title"] for f in doc["findings"]]
    xid74 = next(f for f in doc["findings"] if f["id"] == "gpu.xid:74")
    assert xid74["node_set"] == "ip-10-1-4-[3-5]" and "<code>ip-10-1-4-[3-5]</code>" in rendered


def test_report_md_of_1000_nodes_keeps_its_lines_short(fleet_of_1000):
    text = markdown(fleet_of_1000)
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    assert "Evidence of 980 more node(s)" in text  # the fleet-wide info finding: the first 20 nodes shown


# -- report.html ---------------------------------------------------------------------------------------

class Page(HTMLParser):
    """What the page holds: elements by tag with their attributes, the text of <code> elements."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.codes: list[str] = []
        self._in_code = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "code":
            self._in_code += 1
            self.codes.append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_code -= 1

    def handle_data(self, data):
        if self._in_code:
            self.codes[-1] += data

    def all(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.elements if name == tag
                and all(wanted[key] in attrs.get(key, "").split() for key in wanted)]


def test_the_page_has_a_cell_per_node_a_section_per_finding_and_a_row_per_node(doc):
    page = Page(html_page(doc))
    cells = page.all("a", **{"class": "cell"})
    assert len(cells) == len(doc["node_index"])
    assert {cell["href"] for cell in cells} == {f"#{row['id']}" for row in page.all("tr") if row.get("id")}
    findings = page.all("details", **{"class": "finding"})
    assert [item["id"] for item in findings] == [f"f{n}" for n in range(len(doc["findings"]))]
    assert [item["data-severity"] for item in findings] == [f["severity"] for f in doc["findings"]]
    tooltip = re.search(r"<title>(ip-10-1-4-1 · [^<]*)</title>", html_page(doc))[1]  # what hovering shows
    assert "CRITICAL Xid 79: GPU has fallen off the bus" in tooltip and "collection: ok" in tooltip
    not_read = [key for key, node in doc["node_index"].items() if not node["read"]]
    assert len(page.all("rect", **{"class": "hatch"})) == len(not_read) == 3  # unreachable, skipped, timed out
    # Out of service (engine.py's unavailable: the drained ip-10-1-5-4, the failed ip-10-1-5-1): barred.
    assert doc["nodes"]["unavailable_set"] == "ip-10-1-5-[1,4]"
    assert len(page.all("rect", **{"class": "out-mark"})) == doc["nodes"]["unavailable"] == 2


def test_the_page_loads_nothing_and_escapes_every_value(doc):
    text = html_page(doc)
    page = Page(text)
    assert not [attrs for _, attrs in page.elements if "src" in attrs]
    assert not page.all("link") and "@import" not in text
    assert all(attrs["href"].startswith("#") for _, attrs in page.elements if "href" in attrs)
    assert re.findall(r"url\(([^)]*)\)", text) == ["#hatch"]
    csp = page.all("meta", **{"http-equiv": "Content-Security-Policy"})
    assert csp and csp[0]["content"].startswith("default-src 'none'")
    assert "<script>alert" not in text and "<img src=x" not in text
    assert len(page.all("script")) == 1 and not page.all("img")
    hostile = next(item["text"] for f in doc["findings"] for node in f["nodes"] for item in node["evidence"]
                   if "<script>" in item["text"])
    assert hostile in page.codes  # shown whole, as text


def test_the_gpu_matrix_and_the_timeline_are_drawn(doc):
    text = html_page(doc)
    page = Page(text)
    matrix = page.all("table", **{"class": "gpu-matrix"})
    assert len(matrix) == 1  # one instance group has GPU findings
    assert re.search(r"<td class='s-critical' title='ip-10-1-4-1 53:00: [^']*'>79,13</td>", text)
    dots = page.all("circle")
    assert len(dots) >= 6 and {"s-critical", "s-high"} <= {name for dot in dots for name in dot["class"].split()}
    assert "10:15" in text and "Timeline (UTC)" in text


def test_a_1000_node_page_stays_under_3_mb(fleet_of_1000):
    text = html_page(fleet_of_1000)
    assert len(text.encode()) < PAGE_LIMIT
    assert text.count("class='cell'") == 1000


def test_the_changes_since_an_earlier_run_are_on_the_page(doc, tmp_path):
    """An earlier run had a full disk on ip-10-1-4-8 and one OOM kill on ip-10-1-4-7 (now two)."""
    disk = {"disk_usage.txt": "/dev/md1         28T   27T  500G  99% /opt/dlami/nvme"}
    earlier_run = sick_fleet.build(tmp_path, run_id="20261121_110000", extra={8: disk})
    earlier = build_report(earlier_run.run_dir, earlier_run.state(), workers=1)
    assert "id='changes'" not in html_page(doc)
    text = html_page({**doc, "diff": compare(doc, earlier)})
    section = text[text.index("<section id='changes'>"):]
    section = section[:section.index("</section>")]
    assert "Changes since run 20261121_110000" in section
    assert re.search(r"<td>cleared</td><td><span class='badge s-high'>high</span></td><td>File system /opt/dlami/nvme "
                     r"nearly full</td><td><code>disk.full:/opt/dlami/nvme</code></td><td><code>ip-10-1-4-8</code>",
                     section)
    assert re.search(r"<td>grew</td><td></td><td>1 → 2</td><td><code>kern.oom</code></td><td><code>ip-10-1-4-7</code>",
                     section)
    assert "<a href='#changes'>Changes</a>" in text
