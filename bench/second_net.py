"""Bench: the report's second net (Kingfisher over every file of every bundle) on a 1000-node run.

    python bench/second_net.py [--nodes 1000] [--log-mb 0.1] [--workers N] [--plant-every 50]

Builds the run folder as bench/report.py does (the healthy fixture bundle, padded with ordinary log
lines to `--log-mb` MB per node; not timed), with one unredacted secret (a random GitHub-shaped
token) in every `--plant-every`-th node's syslog, then times the second net alone: what it adds to
`invoke report` (goal, issue 14: under 30 s more for 1000 bundles). It prints the wall time, the
CPU time, the text read and how many planted secrets were found.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "bench"))

from report import PADDED_FILES, filler  # noqa: E402 - bench/report.py, after the path is set

from collectors.report.engine import default_workers  # noqa: E402
from collectors.report.secrets import scanner, secret_findings  # noqa: E402
from tests.fixtures.bundles.builder import RunBuilder, changed_files  # noqa: E402

GOAL_SECONDS = 30.0


def fake_token() -> str:
    return "ghp_" + "".join(random.choices(string.ascii_letters + string.digits, k=36))


def build(root: Path, nodes: int, log_mb: float, plant_every: int) -> tuple[Path, int, int]:
    """The run folder, as bench/report.py pads its bundles, with a token in every `plant_every`-th syslog;
    returns it, how many tokens were planted and the bytes of text in the bundles."""
    run = RunBuilder(root, cluster="hp-bench")
    pads = {name: filler(log_mb * share, "HOST") for name, share in PADDED_FILES.items()}
    planted = text_bytes = 0
    for number in range(nodes):
        host = f"ip-10-1-{number // 250}-{number % 250 + 1}"
        append = None
        if plant_every and number % plant_every == 0:
            append = {"syslog": f"Nov 22 10:00:00 {host} train.sh[42]: cloning with {fake_token()}"}
            planted += 1
        files = changed_files(append=append, hostname=host)
        for name, text in pads.items():
            files[name] = text.replace("HOST", host).encode() + b"\n" + files[name]
        text_bytes += sum(len(content) for content in files.values())
        run.add_node(f"i-0b{number:015x}", host, files, group=f"worker-group-{number % 2 + 1}")
    return run.write(), planted, text_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--log-mb", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=None, help="scan threads (default: CPUs, at most 8)")
    parser.add_argument("--plant-every", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-secrets-"))
    try:
        run_dir, planted, text_bytes = build(root, args.nodes, args.log_mb, args.plant_every)
        bundles = sorted((run_dir / "results").glob("*.tar.gz"))
        started = time.monotonic()
        scanner()
        compile_seconds = time.monotonic() - started
        workers = args.workers or default_workers()
        started, cpu_before = time.monotonic(), cpu_seconds()
        findings = secret_findings(run_dir, bundles, workers)
        wall, cpu = time.monotonic() - started, cpu_seconds() - cpu_before
        found = sum(node.count for finding in findings for node in finding.nodes.values())
        print(f"second net: {len(bundles)} bundles, {text_bytes / 2**20:.0f} MB of text, {workers} thread(s); "
              f"rules ready in {compile_seconds:.2f} s")
        print(f"second net: {wall:.1f} s wall, {cpu:.1f} s CPU, goal < {GOAL_SECONDS:.0f} s more: "
              f"{'met' if wall < GOAL_SECONDS else 'NOT met'}")
        print(f"second net: found {found} of {planted} planted secret(s) in {len(findings)} finding(s); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


if __name__ == "__main__":
    main()
