"""report: the signature catalog over the run's downloaded bundles, findings folded across nodes.

Writes findings.json (for machines), report.md and report.html (one self-contained file) into the
run folder and prints the summary. Findings are the tool's product, not its failure: the exit code is 0
whenever a report was made, 2 when the run cannot be reported on (not there, not downloaded).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from collectors import console
from collectors.context import StageContext
from collectors.errors import EXIT_OK, UsageError
from collectors.report.render_html import html_page
from collectors.report.render_md import markdown
from collectors.report.screen import screen
from collectors.report.diff import compare
from collectors.report.engine import REPORT_SCHEMA_VERSION, RESULTS_DIR, build_report
from collectors.state import RunState

FINDINGS_NAME = "findings.json"
MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"


def execute(ctx: StageContext) -> int:
    state = ctx.state
    require_downloaded(state)
    console.log(f"report: reading {count_bundles(state.run_dir)} bundle(s) in {state.run_dir / RESULTS_DIR}")
    doc = build_report(state.run_dir, state.data)
    if ctx.options.get("against"):
        doc["diff"] = compare(doc, earlier_report(ctx, ctx.options["against"]))
    written = [write_atomically(state.run_dir / FINDINGS_NAME, json.dumps(doc, indent=1) + "\n"),
               write_atomically(state.run_dir / MARKDOWN_NAME, markdown(doc)),
               write_atomically(state.run_dir / HTML_NAME, html_page(doc))]
    state.mark_stage("report", "done", files=[str(path) for path in written],
                     findings=doc["nodes"]["findings_by_severity"], healthy=doc["nodes"]["healthy"],
                     against=ctx.options.get("against"))
    # Logged before the summary, so that the summary's last line, the page to open, ends the output.
    console.log(f"report: {', '.join(str(path) for path in written)} ({doc['scan']['seconds']:.1f}s)")
    console.out(json.dumps(doc, indent=1) if ctx.options.get("json") else screen(doc, footer=paths_footer(written)))
    return EXIT_OK


def paths_footer(written: list[Path]) -> tuple[str, ...]:
    findings, md, page = written
    return (f"Details: {findings} and {md.name} beside it", f"Open:    {page}")


def count_bundles(run_dir: Path) -> int:
    return sum(1 for _ in (run_dir / RESULTS_DIR).glob("*.tar.gz"))


def require_downloaded(state: RunState) -> None:
    """A run whose bundles were never downloaded would report every node as missing: refuse it."""
    download = state.data["stages"].get("download", {}).get("status")
    if download in ("done", "incomplete") or (state.run_dir / RESULTS_DIR).is_dir():
        return
    raise UsageError(f"run {state.run_id} is not downloaded: run `invoke download --run-id {state.run_id}` first")


def earlier_report(ctx: StageContext, run_id: str) -> dict[str, Any]:
    """The earlier run's findings.json, or a report made now from its bundles when it has none."""
    if run_id == ctx.state.run_id:
        raise UsageError(f"--against {run_id} is this run itself: name an earlier run of the cluster")
    earlier = RunState.load(ctx.settings.runs_dir, ctx.settings.require_cluster(), run_id)
    saved = earlier.run_dir / FINDINGS_NAME
    if saved.is_file():
        try:
            doc = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {saved}: {exc}") from None
        if doc.get("schema_version") == REPORT_SCHEMA_VERSION:
            return doc
        console.log(f"report: {saved} has another schema version; judging run {run_id} again from its bundles")
    require_downloaded(earlier)
    return build_report(earlier.run_dir, earlier.data)


def write_atomically(path: Path, text: str) -> Path:
    """Temp file and rename: automation reading findings.json never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
