"""report.html in a real browser: headless Chromium (Debian's chromium package) opens the sick
fleet's page as `invoke report` writes it, and the page works as it says.

No console error, one fleet-map cell per node, expand-all opens every finding, the filters, the
node panel and sorting work, 1000 nodes fit one screen, dark mode and print are readable.
Screenshots go to the test's tmp folder. The report is made from fixture bundles
(tests/fixtures/sick_fleet.py), not a sandbox: it is the page under test, not the collection.
"""

from __future__ import annotations

import json

import pytest

from collectors import pipeline
from collectors.report.render_html import html_page
from collectors.settings import Settings
from tests.conftest import require_tool
from tests.fixtures import sick_fleet
from tests.integration.chromium import Chromium

VIEWPORT = (1440, 900)  # a laptop screen
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sick_fleet.build(root)
    settings = Settings.from_config({"runs_dir": str(root)}, cluster="hp-slurm-sick")
    assert pipeline.run_stage("report", settings, {}) == 0
    return root / "hp-slurm-sick" / sick_fleet.RUN_ID


@pytest.fixture(scope="module")
def browser():
    require_tool("chromium", "chromium")
    with Chromium(*VIEWPORT) as chromium:
        yield chromium


@pytest.fixture
def page(browser, run_dir):
    """The sick fleet's report.html, freshly loaded, in the light scheme on screen."""
    browser.page("Emulation.setEmulatedMedia", {"media": "", "features": []})
    browser.events.clear()
    browser.open(run_dir / "report.html")
    return browser


def click(browser: Chromium, selector: str) -> None:
    found = browser.evaluate(f"""(() => {{ const element = document.querySelector({json.dumps(selector)});
        if (!element) {{ return false; }}
        element.dispatchEvent(new MouseEvent("click", {{bubbles: true, cancelable: true}})); return true; }})()""")
    assert found, selector


def test_the_page_loads_clean_with_a_cell_per_node(page, run_dir, tmp_path):
    state = json.loads((run_dir / "state.json").read_text())
    assert page.problems() == []
    assert page.evaluate("document.querySelectorAll('svg.map a.cell').length") == len(state["nodes"])
    hatched = page.evaluate("document.querySelectorAll('svg.map rect.hatch').length")
    assert hatched == sum(1 for node in state["nodes"].values() if node["status"] in ("unreachable", "skipped",
                                                                                     "timeout"))
    shot = page.screenshot(tmp_path / "report.png")
    assert shot.read_bytes().startswith(PNG_MAGIC)


def test_expand_all_opens_every_finding_and_collapse_all_closes_them(page, run_dir, tmp_path):
    findings = "Array.from(document.querySelectorAll('details.finding'))"
    assert page.evaluate(f"{findings}.length") == len(json.loads((run_dir / "findings.json").read_text())["findings"])
    assert page.evaluate(f"{findings}.filter(d => d.open).length") == 0
    click(page, "#expand-all")
    assert page.evaluate(f"{findings}.every(d => d.open && d.querySelector('.body').offsetHeight > 0)")
    page.screenshot(tmp_path / "expanded.png", full_page=False)
    click(page, "#collapse-all")
    assert page.evaluate(f"{findings}.filter(d => d.open).length") == 0


def test_the_filters_hide_what_does_not_match(page):
    shown = "Array.from(document.querySelectorAll('details.finding')).filter(d => d.offsetParent !== null)"
    everything = page.evaluate(f"{shown}.length")
    click(page, "input[data-severity='critical']")  # unchecks it
    left = page.evaluate(f"{shown}.map(d => d.dataset.severity)")
    assert left and "critical" not in left and len(left) < everything
    assert page.evaluate("document.getElementById('finding-count').textContent") == \
        f"{len(left)} of {everything} findings shown"
    page.evaluate("""(() => { const box = document.getElementById('finding-filter'); box.value = 'ip-10-1-5-4';
        box.dispatchEvent(new Event('input')); })()""")
    assert page.evaluate(f"{shown}.map(d => d.querySelector('.title').textContent)") == ["Slurm reason: Kill task failed"]


def test_a_click_on_a_cell_shows_the_node_and_its_findings(page):
    assert page.evaluate("document.getElementById('node-panel').hidden")
    row = page.evaluate("Array.from(document.querySelectorAll('table.nodes tbody tr'))"
                        ".find(r => r.cells[0].textContent === 'ip-10-1-4-1').id")
    click(page, f"svg.map a.cell[data-node='{row}']")
    panel = page.evaluate("(() => { const p = document.getElementById('node-panel'); "
                          "return {hidden: p.hidden, text: p.textContent}; })()")
    assert not panel["hidden"]
    assert "ip-10-1-4-1" in panel["text"] and "Xid 79: GPU has fallen off the bus" in panel["text"]
    assert page.evaluate("location.hash") == ""  # the click showed the panel instead of jumping away


def test_the_node_table_sorts(page):
    rows = "Array.from(document.querySelectorAll('table.nodes tbody tr'))"
    click(page, "table.nodes th:nth-child(6)")  # worst
    worst = page.evaluate(f"{rows}.map(r => r.cells[5].textContent)")
    assert worst[0] == "critical" and worst.index("high") > worst.count("critical") - 1
    click(page, "table.nodes th:nth-child(1)")
    click(page, "table.nodes th:nth-child(1)")  # by name, descending: ip-10-1-5-4 ... ip-10-1-0-10 last
    names = page.evaluate(f"{rows}.map(r => r.cells[0].textContent)")
    assert names[0] == "ip-10-1-5-4" and names[-1] == "ip-10-1-0-10"
    assert names.index("ip-10-1-4-8") < names.index("ip-10-1-4-1")


def test_1000_nodes_fit_one_screen(browser, run_dir, tmp_path):
    doc = json.loads((run_dir / "findings.json").read_text())
    path = tmp_path / "report-1000.html"
    path.write_text(html_page(sick_fleet.spread(doc, 1000)))
    browser.events.clear()
    browser.open(path)
    assert browser.problems() == []
    box = browser.evaluate("""(() => { const maps = Array.from(document.querySelectorAll('svg.map'));
        const top = maps[0].getBoundingClientRect().top, bottom = maps[maps.length - 1].getBoundingClientRect().bottom;
        const widest = Math.max(...maps.map(m => m.getBoundingClientRect().right));
        return {cells: document.querySelectorAll('svg.map a.cell').length, height: bottom - top, right: widest}; })()""")
    assert box["cells"] == 1000
    assert box["height"] <= VIEWPORT[1] and box["right"] <= VIEWPORT[0]
    browser.screenshot(tmp_path / "report-1000.png", full_page=False)


def test_dark_mode_and_print_are_readable(page, tmp_path):
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) == "rgb(255, 255, 255)"
    page.page("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    assert page.evaluate(background) == "rgb(20, 24, 28)"
    assert page.evaluate("getComputedStyle(document.querySelector('details.finding code')).color") != \
        page.evaluate(background)
    page.screenshot(tmp_path / "dark.png", full_page=False)
    # On paper: light again, and every finding's evidence printed though the findings are closed.
    page.page("Emulation.setEmulatedMedia", {"media": "print",
                                             "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    assert page.evaluate(background) == "rgb(255, 255, 255)"
    assert page.evaluate("Array.from(document.querySelectorAll('details.finding')).every("
                         "d => !d.open && d.querySelector('.body').offsetHeight > 0)")
    assert page.evaluate("getComputedStyle(document.querySelector('.toolbar')).display") == "none"
    pdf = page.pdf(tmp_path / "report.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
