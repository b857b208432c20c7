"""Bench: `invoke report` over a 1000-node run folder; prints the figures.

    python bench/report.py [--nodes 1000] [--log-mb 0.1] [--sick-every 20] [--kinds 12] [--workers N] [--keep DIR]

Builds the run folder first (not timed): one bundle per node from the healthy fixture bundle of
the tests (tests/fixtures/bundles/healthy, a p5.48xlarge Slurm node), its kernel logs and syslog
padded with ordinary log lines to `--log-mb` MB of text per node, and every `--sick-every`-th node
given one fault of the first `--kinds` rules in tests/fixtures/bundles/positive.yaml. Then it times
the report stage's work (scan every bundle, run every rule, fold, write findings.json, report.md,
report.html) and prints wall time, throughput and peak memory (goal, issue 7: under 30 s for 1000
nodes here); then what people look at (issue 18): report.html's size (goal: under 3 MB at 1000
nodes) and render time, report.md's size and longest line (at most 200 characters), and how many
lines the screen summary takes (goal: one screen, at most 50).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from collectors.report.catalog import load  # noqa: E402 - after the path is set
from collectors.report.engine import build_report, default_workers  # noqa: E402
from collectors.report.render_html import html_page  # noqa: E402
from collectors.report.render_md import MAX_LINE, markdown  # noqa: E402
from collectors.report.screen import SCREEN_LINES, screen  # noqa: E402
from tests.fixtures.bundles.builder import RunBuilder, changed_files, positive_cases  # noqa: E402

GOAL_SECONDS = 30.0
GOAL_PAGE_MB = 3.0
PADDED_FILES = {"dmesg_T.txt": 0.3, "journal_kernel.txt": 0.2, "kern.log": 0.2, "syslog": 0.3}


def filler(megabytes: float, host: str) -> str:
    """Ordinary, harmless log lines: what most of a real node's logs are."""
    lines, size, number = [], 0, 0
    templates = (
        "Nov 22 {h:02d}:{m:02d}:{s:02d} {host} systemd[1]: Started Session {n} of User root.",
        "Nov 22 {h:02d}:{m:02d}:{s:02d} {host} kernel: [{n}.{s:06d}] audit: type=1400 audit({n}.123:{s}): "
        "apparmor=\"STATUS\" operation=\"profile_replace\" profile=\"unconfined\" name=\"docker-default\"",
        "Nov 22 {h:02d}:{m:02d}:{s:02d} {host} slurmd[3120]: slurmd: launch task StepId={n}.0 request from "
        "UID:1000 GID:1000 HOST:10.1.0.5 PORT:41234",
        "Nov 22 {h:02d}:{m:02d}:{s:02d} {host} amazon-ssm-agent[1410]: INFO [ssm-agent-worker] [MessageService] "
        "SendReply for message {n}",
    )
    while size < megabytes * 2**20:
        line = templates[number % len(templates)].format(h=number // 3600 % 24, m=number // 60 % 60, s=number % 60,
                                                          n=number, host=host)
        lines.append(line)
        size += len(line) + 1
        number += 1
    return "\n".join(lines)


def build_run(root: Path, nodes: int, log_mb: float, sick_every: int,
              kinds: int | None = None) -> tuple[RunBuilder, int]:
    faults = fault_kinds(kinds)
    run = RunBuilder(root, cluster="hp-bench")
    pads = {name: filler(log_mb * share, "HOST") for name, share in PADDED_FILES.items()}
    sick = 0
    for number in range(nodes):
        host = f"ip-10-1-{number // 250}-{number % 250 + 1}"
        replace = {name: text.replace("HOST", host) for name, text in pads.items()}
        append = None
        if sick_every and number % sick_every == 0:
            append = faults[(number // sick_every) % len(faults)]["append"]
            sick += 1
        files = changed_files(append=append, hostname=host)
        for name, text in replace.items():
            files[name] = text.encode() + b"\n" + files[name]
        run.add_node(f"i-0b{number:015x}", host, files, group=f"worker-group-{number % 2 + 1}")
    run.write()
    return run, sick


def fault_kinds(kinds: int | None) -> list[dict]:
    """The first case of each rule that a few appended lines make fire: one kind of fault per rule
    (rules with same_as name another rule's fault, so they are left out)."""
    catalog = load()
    cases: dict[str, dict] = {}
    for rule, case in positive_cases():
        if set(case) <= {"append", "expect"} and not case["expect"].get("absent") and rule not in cases \
                and not catalog.rule(rule).same_as:
            cases[rule] = case
    return list(cases.values())[:kinds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--log-mb", type=float, default=0.1,
                        help="MB of ordinary log lines added per node (default 0.1: a sandbox node's bundle size)")
    parser.add_argument("--sick-every", type=int, default=20, help="every Nth node gets one fault (0: none)")
    parser.add_argument("--kinds", type=int, default=12,
                        help="rules whose faults the sick nodes share, one each (default 12)")
    parser.add_argument("--workers", type=int, default=None, help="scan processes (default: CPUs, at most 8)")
    parser.add_argument("--keep", type=Path, default=None, help="build the run folder here and leave it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        started = time.monotonic()
        run, sick = build_run(root, args.nodes, args.log_mb, args.sick_every, args.kinds)
        bundles = sorted((run.run_dir / "results").glob("*.tar.gz"))
        packed = sum(path.stat().st_size for path in bundles)
        print(f"built {len(bundles)} bundles ({sick} with a fault), {packed / 2**20:.0f} MB compressed, "
              f"in {time.monotonic() - started:.1f} s")
        workers = args.workers or default_workers()
        started, cpu_before = time.monotonic(), cpu_seconds()
        doc = build_report(run.run_dir, run.state(), workers=workers)
        (run.run_dir / "findings.json").write_text(json.dumps(doc, indent=1))
        (run.run_dir / "report.md").write_text(markdown(doc))
        (run.run_dir / "report.html").write_text(html_page(doc))
        wall = time.monotonic() - started
        print_figures(doc, wall, cpu_seconds() - cpu_before, workers)
        print_documents(doc, run.run_dir)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def cpu_seconds() -> float:
    """CPU time of this process and its finished workers: unlike wall time, it does not depend on
    what else the machine is running."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def print_figures(doc: dict, wall: float, cpu: float, workers: int) -> None:
    scanned = doc["scan"]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    counts = ", ".join(f"{n} {severity}" for severity, n in doc["nodes"]["findings_by_severity"].items() if n)
    print(f"report: {scanned['bundles']} bundles, {scanned['bytes_read'] / 2**20:.0f} MB of text read, "
          f"{workers} worker process(es)")
    print(f"report: {wall:.1f} s wall ({scanned['bytes_read'] / 2**20 / wall:.0f} MB/s), {cpu:.1f} s CPU, "
          f"goal < {GOAL_SECONDS:.0f} s: {'met' if wall < GOAL_SECONDS else 'NOT met'}")
    print(f"report: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while it ran")
    print(f"report: peak RSS {own:.0f} MB (main process), {children:.0f} MB (largest worker)")
    print(f"report: {len(doc['findings'])} findings ({counts}); {doc['nodes']['healthy']} healthy nodes")


def print_documents(doc: dict, run_dir: Path) -> None:
    """What people look at: the renderings alone, timed on the document the scan made."""
    started = time.monotonic()
    page = html_page(doc)
    html_seconds = time.monotonic() - started
    started = time.monotonic()
    text = markdown(doc)
    md_seconds = time.monotonic() - started
    megabytes = len(page.encode()) / 2**20
    summary = screen(doc, footer=(f"Details: {run_dir / 'findings.json'} and report.md beside it",
                                  f"Open:    {run_dir / 'report.html'}"))
    lines, longest = len(summary.splitlines()), max(len(line) for line in text.splitlines())
    kinds = sum(1 for finding in doc["findings"] if finding["severity"] != "info")
    print(f"report.html: {megabytes:.2f} MB, rendered in {html_seconds:.2f} s, "
          f"goal < {GOAL_PAGE_MB:.0f} MB: {'met' if megabytes < GOAL_PAGE_MB else 'NOT met'}")
    print(f"report.md: {len(text.encode()) / 2**10:.0f} KB, rendered in {md_seconds:.2f} s, longest line {longest} "
          f"characters (at most {MAX_LINE}: {'met' if longest <= MAX_LINE else 'NOT met'})")
    print(f"screen: {lines} lines for {kinds} findings above info (one screen, at most {SCREEN_LINES}: "
          f"{'met' if lines <= SCREEN_LINES else 'NOT met'})")


if __name__ == "__main__":
    main()
