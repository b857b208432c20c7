"""Bench: the kubectl stage on a large EKS sandbox: its wall time against the sum of its commands' times.

    python bench/kubectl.py [--scenario scenarios/fleet-1000.yaml] [--workers 8]

Starts an EKS sandbox from the scenario (root and namespaces needed), runs `invoke discover`, `render`, `upload` and
`kubectl` against it with the real kubectl, prints the figures, and takes the sandbox down. The goal
(issue 5): the stage's wall time at most 1.3 times its slowest command, i.e. the parallel commands
hide behind the slowest one instead of adding up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from collectors.sandbox import Sandbox, SandboxSpec  # noqa: E402 - after the path is set

GOAL_RATIO = 1.3


def invoke(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=PROJECT / "scenarios" / "fleet-1000.yaml",
                        help="an EKS scenario (docs/scenarios.md)")
    parser.add_argument("--workers", type=int, default=8, help="kubectl commands at once (kubectl_workers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kubectl-") as scratch:
        sandbox = Sandbox(Path(scratch) / "sandbox")
        started = time.monotonic()
        status = sandbox.up(SandboxSpec.from_scenario(args.scenario))
        print(f"sandbox up: {len(status['nodes'])} EKS nodes in {time.monotonic() - started:.1f} s")
        try:
            stage = run_stage(sandbox, Path(scratch), args.workers)
        finally:
            sandbox.down()
    print_figures(stage, args.workers)


def run_stage(sandbox: Sandbox, scratch: Path, workers: int) -> dict:
    env = dict(os.environ, **sandbox.env(), INVOKE_HYPERPOD_RUNS_DIR=str(scratch / "runs"), HOME=str(scratch),
               INVOKE_HYPERPOD_KUBECTL_WORKERS=str(workers))
    env.pop("AWS_PROFILE", None)
    for stage in ("discover", "render", "upload", "kubectl"):
        invoke(env, stage)
    cluster = sandbox.recorded_status()["cluster"]
    state = json.loads((scratch / "runs" / cluster / "latest" / "state.json").read_text())
    return state["stages"]["kubectl"]


def print_figures(stage: dict, workers: int) -> None:
    commands = stage["commands"]
    slowest = max(commands, key=lambda c: c["seconds"])
    wall, total = stage["wall_seconds"], stage["command_seconds"]
    ratio = wall / slowest["seconds"]
    print(f"kubectl stage: {len(commands)} commands, {workers} at a time, status {stage['status']}")
    print(f"  wall time (commands)   {wall:8.1f} s  (whole stage with preflight, packing, upload: "
          f"{stage['stage_seconds']:.1f} s)")
    print(f"  sum of command times   {total:8.1f} s  ({total / wall:.1f}x the wall time)")
    print(f"  slowest command        {slowest['seconds']:8.1f} s  ({slowest['command']})")
    print(f"  wall / slowest         {ratio:8.2f}    (goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'NOT met'})")
    print(f"  output                 {sum(c['bytes'] for c in commands) / 2**20:8.1f} MB before compression")


if __name__ == "__main__":
    main()
