"""Bench: `invoke clean` on a 1000-node run folder; prints the figures.

    python bench/clean.py [--nodes 1000] [--log-mb 0.1] [--workers N]

Builds the run folder as bench/report.py does (the healthy fixture bundle of the tests, its kernel
logs and syslog padded with ordinary log lines holding host names and addresses, to `--log-mb` MB of
text per node; not timed), then times the clean: both passes (learn, then write every file and
bundle again) and prints wall time, CPU time, throughput and what was replaced.
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
sys.path.insert(0, str(PROJECT / "bench"))

from report import build_run  # noqa: E402 - bench/report.py, after the path is set

from collectors.clean import KIND_LABELS, clean_run  # noqa: E402
from collectors.report.engine import default_workers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--log-mb", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, at most 8)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-clean-"))
    try:
        run, _ = build_run(root / "runs", args.nodes, args.log_mb, sick_every=20)
        bundles = sorted((run.run_dir / "results").glob("*.tar.gz"))
        packed = sum(path.stat().st_size for path in bundles)
        workers = args.workers or default_workers()
        started, cpu_before = time.monotonic(), cpu_seconds()
        result = clean_run(run.run_dir, json.loads((run.run_dir / "state.json").read_text()), root / "out",
                           workers=workers)
        wall, cpu = time.monotonic() - started, cpu_seconds() - cpu_before
        text_mb = args.nodes * (args.log_mb + 0.05)
        print(f"clean: {len(bundles)} bundles, {packed / 2**20:.0f} MB compressed (about {text_mb:.0f} MB of text), "
              f"{workers} process(es)")
        print(f"clean: {wall:.1f} s wall ({text_mb / wall:.0f} MB/s of text), {cpu:.1f} s CPU; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("clean: " + ", ".join(f"{KIND_LABELS[kind]} {counts['items']} ({counts['replaced']} times)"
                                    for kind, counts in result.counts.items()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds() -> float:
    """This process and its finished workers."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


if __name__ == "__main__":
    main()
