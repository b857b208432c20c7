"""The run stage at fleet scale: wall time against the lower bound AWS sets, per session mode.

    python bench/runner.py [--sizes 100,500,1000] [--rate 3] [--script-time 20] [--drop-rate 0.05]
                           [--modes detached-direct,detached-cli,attached-direct,attached-cli,fixed-pool,
                                    detached-ssh,attached-ssh]

For each size N it brings up a sandbox of N nodes whose StartSession calls are limited to R per
second (ThrottlingException above that, as AWS does), then runs the run stage once per mode and
prints: wall time T, the lower bound T_min = N/R + t, T/T_min, nodes collected, the orchestrator's
CPU seconds (the `invoke` process alone, and with its session clients) and its peak memory.

The node script is replaced by a stand-in that takes exactly t seconds and honours the node
script's contract (status object, tarball, run lock, HPC_RESULT line), so the figures measure the
runner and AWS's limits, not the collection items. The run stage runs with its defaults (pacing
at 3 starts/s, 16 sessions, 5 s polls), as an engineer would run it. `fixed-pool` is the earlier tool's scheme:
16 threads, each holding an AWS CLI session for its node's whole collection, 3 tries on
throttling (1 s, 2 s), no pacing. The `*-ssh` modes use the SSH transport (Fabric) instead of SSM;
they need the per-node sshd of a Slurm sandbox, which exists up to 128 nodes, so for sizes up to that
the sandbox is a Slurm one (StartSession behaves the same) and above it the SSH rows are skipped.
Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from collectors.sandbox import Sandbox, SandboxSpec  # noqa: E402  (after the path is set)

MODES = ("detached-direct", "detached-cli", "attached-direct", "attached-cli", "fixed-pool", "detached-ssh",
         "attached-ssh")
SSH_SANDBOX_MAX_NODES = 128
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The stand-in node script: t seconds of "collection", then what the real script reports.
STAND_IN = r'''#!/usr/bin/env bash
set -u
exec 9>"/tmp/hpc-bench-${HPC_RUN_ID}.lock"
if ! flock -n 9; then echo "HPC_RESULT status=already_running"; exit 5; fi
put() { printf 'url = "%s"\n' "$1" | curl -fsS --retry 3 -X PUT -T "$2" -o /dev/null -K -; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
printf '{"state":"running","run_id":"%s"}' "$HPC_RUN_ID" >"$work/status.json"
[ -z "${HPC_STATUS_URL:-}" ] || put "$HPC_STATUS_URL" "$work/status.json"
sleep "$BENCH_SCRIPT_TIME"
hostname >"$work/hostname.txt"; tar -czf "$work/t.tar.gz" -C "$work" hostname.txt
bytes=$(stat -c %s "$work/t.tar.gz"); sha=$(sha256sum "$work/t.tar.gz" | cut -d' ' -f1)
put "$HPC_UPLOAD_URL" "$work/t.tar.gz" || { echo "HPC_RESULT status=upload_failed"; exit 4; }
printf '{"state":"done","status":"ok","rc":0,"items":1,"failed_items":0,"bytes":%s,"sha256":"%s"}' \
  "$bytes" "$sha" >"$work/status.json"
[ -z "${HPC_STATUS_URL:-}" ] || put "$HPC_STATUS_URL" "$work/status.json"
echo "HPC_RESULT status=ok items=1 failed_items=0 bytes=$bytes sha256=$sha tarball=t.tar.gz"
'''


def main() -> None:
    args = parse_args()
    print(f"# StartSession limit R={args.rate}/s, node script t={args.script_time}s, "
          f"sessions dropped: {args.drop_rate:.0%}; machine: {os.cpu_count()} cores")
    print(f"{'N':>5} {'mode':<16} {'T s':>7} {'T_min s':>8} {'T/T_min':>8} {'collected':>10} "
          f"{'cpu s':>7} {'cpu+clients s':>14} {'peak MB':>8}")
    peaks: dict[str, dict[int, float]] = {}
    for size in args.sizes:
        with sandbox_of(size, args) as (status, env):
            for mode in args.modes:
                if mode.endswith("-ssh") and not status.get("ssh", {}).get("running"):
                    print(f"# {size} {mode}: skipped (SSH needs a Slurm sandbox of at most "
                          f"{SSH_SANDBOX_MAX_NODES} nodes, with an sshd per node)")
                    continue
                row = measure(mode, size, status, env, args)
                peaks.setdefault(mode, {})[size] = row["peak_mb"]
                print(format_row(size, mode, row, args), flush=True)
    print_memory_slopes(peaks)


def print_memory_slopes(peaks: dict[str, dict[int, float]]) -> None:
    """Memory per node in flight: the peak's growth between the smallest and the largest fleet."""
    for mode, by_size in peaks.items():
        if len(by_size) >= 2:
            small, large = min(by_size), max(by_size)
            slope = (by_size[large] - by_size[small]) / (large - small)
            print(f"# {mode}: peak memory grows {slope * 1024:.0f} KB per node ({small} -> {large} nodes)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rate", default=3.0, type=float, help="StartSession calls per second the sandbox allows")
    parser.add_argument("--script-time", default=20, type=int, help="seconds the node script takes")
    parser.add_argument("--drop-rate", default=0.05, type=float, help="share of sessions that drop")
    parser.add_argument("--modes", default=",".join(MODES), type=lambda s: s.split(","))
    args = parser.parse_args()
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    return args


class sandbox_of:
    """A sandbox of `size` nodes with AWS's StartSession limit and random session drops armed."""

    def __init__(self, size: int, args: argparse.Namespace):
        self.root = Path(tempfile.mkdtemp(prefix="bench-runner-")) / "root"
        self.sandbox = Sandbox(self.root)
        self.size, self.args = size, args

    def __enter__(self):
        wants_ssh = any(mode.endswith("-ssh") for mode in self.args.modes) and self.size <= SSH_SANDBOX_MAX_NODES
        status = self.sandbox.up(SandboxSpec.simple(type="slurm" if wants_ssh else "eks", nodes=self.size))
        self.sandbox.set_faults(start_session_rate=self.args.rate, session_drop_rate=self.args.drop_rate)
        return status, self.sandbox.env()

    def __exit__(self, *exc):
        self.sandbox.down()


def measure(mode: str, size: int, status: dict, env: dict, args: argparse.Namespace) -> dict:
    runs = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs))
    full_env.pop("AWS_PROFILE", None)
    if mode.endswith("-ssh"):
        full_env["INVOKE_HYPERPOD_SSH_CONFIG"] = status["ssh"]["config"]  # user, key, port, known_hosts
    prepare(full_env, args)
    command = invoke_command(mode)
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=PROJECT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    sampler = MemorySampler(proc.pid)
    stderr = proc.communicate()[1]
    wall = time.monotonic() - started
    sampler.stop()
    state = json.loads(next(runs.glob("*/latest/state.json")).read_text())
    collected = sum(n["status"] in ("ok", "ok_with_errors") for n in state["nodes"].values())
    if proc.returncode not in (0, 1):
        print(f"# {mode}: exit {proc.returncode}: {stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return {"wall": wall, "collected": collected, "cpu_self": sampler.cpu_self,
            "cpu_total": sampler.cpu_total, "peak_mb": sampler.peak_kib / 1024}


def prepare(env: dict, args: argparse.Namespace) -> None:
    """discover, render, upload; then swap the uploaded script for the t-second stand-in."""
    for stage in ("discover", "render", "upload"):
        subprocess.run([sys.executable, "-m", "invoke", stage], cwd=PROJECT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = Path(env["INVOKE_HYPERPOD_RUNS_DIR"])
    state = json.loads(next(runs.glob("*/latest/state.json")).read_text())
    script = STAND_IN.replace("$BENCH_SCRIPT_TIME", str(args.script_time))
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.put_object(Bucket=state["s3"]["bucket"], Key=state["stages"]["upload"]["script_key"], Body=script.encode())


def invoke_command(mode: str) -> list[str]:
    base = [sys.executable, "-m", "invoke", "run", "--quiet"]
    if mode == "fixed-pool":
        return [sys.executable, str(PROJECT / "bench" / "fixed_pool.py")]
    session_mode, client = mode.split("-")
    if client == "ssh":
        return base + ["--session-mode", session_mode, "--transport", "ssh"]
    return base + ["--session-mode", session_mode, "--session-client", client]


class MemorySampler:
    """Peak RSS and CPU of a process, sampled from /proc until it ends."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kib = 0
        self.cpu_self = self.cpu_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.2)

    def _sample(self) -> None:
        try:
            rss = int(next(line.split()[1] for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:")))
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, StopIteration):
            return
        self.peak_kib = max(self.peak_kib, rss)
        # utime, stime (own) and cutime, cstime (reaped children: session clients, curl...).
        utime, stime, cutime, cstime = (int(x) / CLK_TCK for x in fields[11:15])
        self.cpu_self, self.cpu_total = utime + stime, utime + stime + cutime + cstime

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def format_row(size: int, mode: str, row: dict, args: argparse.Namespace) -> str:
    t_min = size / args.rate + args.script_time
    return (f"{size:>5} {mode:<16} {row['wall']:>7.1f} {t_min:>8.1f} {row['wall'] / t_min:>8.2f} "
            f"{row['collected']:>5}/{size:<4} {row['cpu_self']:>7.1f} {row['cpu_total']:>14.1f} "
            f"{row['peak_mb']:>8.1f}")


if __name__ == "__main__":
    main()
