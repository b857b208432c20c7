"""The fault campaign: the faults a fleet shows, back to back on one 12-node sandbox, through the real CLI.

    python bench/faults.py [--nodes 12] [--only NAME ...]

Each fault is armed, the run goes through what an engineer would type (collect, then the documented
way to resume or retry), and the faults are put back. One line per fault: the nodes that could be
reached, those collected, and those lost (reachable but not collected in the end), the exit codes,
and the tracebacks printed; then a summary line. Lost must be 0, tracebacks 0. Needs root (the
sandbox's nodes are namespaces). Takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from collectors.sandbox import Sandbox, SandboxSpec  # noqa: E402  (after the path is set)

COLLECTED = ("ok", "ok_with_errors")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Outcome:
    codes: list[int] = field(default_factory=list)
    tracebacks: int = 0
    unreachable: set[str] = field(default_factory=set)  # nodes the fault makes unreachable on purpose
    expect: list[int] | None = None                    # the exit codes the commands must give
    note: str = ""


class Campaign:
    def __init__(self, sandbox: Sandbox, status: dict, work: Path):
        self.sandbox, self.status, self.work = sandbox, status, work
        self.ids = [node["instance_id"] for node in status["nodes"]]
        self.runs = work

    # -- running the CLI ------------------------------------------------------------------
    def env(self, **settings: str) -> dict[str, str]:
        env = dict(os.environ, **self.sandbox.env(), INVOKE_HYPERPOD_RUNS_DIR=str(self.runs),
                   INVOKE_HYPERPOD_POLL_INTERVAL="1", **settings)
        env.pop("AWS_PROFILE", None)
        return env

    def start(self, *args: str, **settings: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=self.env(**settings),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def finish(self, process: subprocess.Popen, outcome: Outcome) -> str:
        out, err = process.communicate(timeout=900)
        outcome.codes.append(process.returncode)
        outcome.tracebacks += (out + err).count(TRACEBACK)
        return err

    def cli(self, outcome: Outcome, *args: str, stdin: str | None = None, **settings: str) -> str:
        process = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=self.env(**settings),
                                 input=stdin if stdin is not None else "", capture_output=True, text=True, timeout=900)
        outcome.codes.append(process.returncode)
        outcome.tracebacks += (process.stdout + process.stderr).count(TRACEBACK)
        return process.stderr

    def state(self) -> dict:
        return json.loads((self.runs / self.status["cluster"] / "latest" / "state.json").read_text())

    def wait_for_launches(self, count: int, timeout: float = 120) -> None:
        """Until `count` nodes of the latest run have a launch recorded (or the time is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if sum(1 for n in self.state()["nodes"].values() if n.get("launches")) >= count:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)

    def reset_faults(self) -> None:
        self.sandbox.set_faults(start_session_rate=None, idle_timeout=None, s3_put_failures=None,
                                session_drop_rate=None)
        for iid in self.ids:
            self.sandbox.set_node_faults(iid, target_not_connected=None, session_drop_after=None, hang=None,
                                         slow=None, tmp_free_mb=None)

    # -- the faults -----------------------------------------------------------------------
    def throttling_storm(self, o: Outcome) -> None:
        self.sandbox.set_faults(start_session_rate=1)
        self.cli(o, "collect", "--no-download", "--session-rate", "20")
        o.expect = [0]

    def dropped_sessions(self, o: Outcome) -> None:
        self.sandbox.set_faults(session_drop_rate=0.4)
        self.cli(o, "collect", "--no-download")
        o.expect = [0]

    def idle_sessions(self, o: Outcome) -> None:
        self.sandbox.set_faults(idle_timeout=2)
        self.cli(o, "collect", "--no-download")
        o.expect = [0]

    def attached_past_the_idle_timeout(self, o: Outcome) -> None:
        self.sandbox.set_faults(idle_timeout=3)
        self.cli(o, "collect", "--no-download", "--session-mode", "attached", "--command", "sleep 5",
                 INVOKE_HYPERPOD_SESSION_KEEPALIVE="1")
        o.expect = [0]

    def unreachable_nodes(self, o: Outcome) -> None:
        o.unreachable = set(self.ids[:2])
        for iid in o.unreachable:
            self.sandbox.set_node_faults(iid, target_not_connected=True)
        self.cli(o, "collect", "--no-download")
        o.expect = [1]

    def s3_errors(self, o: Outcome) -> None:
        self.sandbox.set_faults(s3_put_failures=[{"key_contains": "/instances/", "status": 503, "times": 2}])
        self.cli(o, "collect", "--no-download")
        o.expect = [0]

    def upload_failed_then_retried(self, o: Outcome) -> None:
        node = self.status["nodes"][3]
        key = f"/instances/{node['group']}_{node['instance_id']}.tar.gz"
        self.sandbox.set_faults(s3_put_failures=[{"key_contains": key, "times": "always"}])
        self.cli(o, "collect", "--no-download")
        self.sandbox.set_faults(s3_put_failures=None)
        self.sandbox.set_node_faults(node["instance_id"], slow=1.0)
        self.cli(o, "run", "--retry-failed")
        o.expect = [1, 0]

    def hung_items(self, o: Outcome) -> None:
        for iid in self.ids[:3]:
            self.sandbox.set_node_faults(iid, hang=["df"])
        self.cli(o, "collect", "--no-download", INVOKE_HYPERPOD_TIMEOUTS_NODE_SCRIPT="180")
        o.expect = [0]

    def full_tmp(self, o: Outcome) -> None:
        for iid in self.ids[:2]:
            self.sandbox.set_node_faults(iid, tmp_free_mb=1)
        self.cli(o, "collect", "--no-download")
        o.expect = [0]

    def ctrl_c_once(self, o: Outcome) -> None:
        self.interrupted(o, [signal.SIGINT])

    def ctrl_c_twice(self, o: Outcome) -> None:
        self.interrupted(o, [signal.SIGINT, signal.SIGINT])

    def kill_9(self, o: Outcome) -> None:
        self.interrupted(o, [signal.SIGKILL], expect_first=-9)

    def interrupted(self, o: Outcome, signals: list[signal.Signals], expect_first: int = 130) -> None:
        process = self.start("collect", "--no-download", "--command", "sleep 3")
        self.wait_for_launches(4)
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.5)
        self.finish(process, o)
        self.cli(o, "run")  # the documented way on
        self.cli(o, "summarize")
        o.expect = [expect_first, 0, 0]

    def broken_state_file(self, o: Outcome) -> None:
        self.cli(o, "collect", "--no-download")
        path = self.runs / self.status["cluster"] / "latest" / "state.json"
        good = path.read_text()
        path.write_text(good[: len(good) // 2])
        self.cli(o, "run")
        path.write_text(good)
        o.expect = [0, 2]
        o.note = "a half-written state file is one line, exit 2"

    def two_operators(self, o: Outcome) -> None:
        self.cli(o, "discover")
        self.cli(o, "render")
        self.cli(o, "upload")
        first = self.start("run", "--command", "sleep 2")
        self.wait_for_launches(1)
        self.cli(o, "run")
        self.finish(first, o)
        o.expect = [0, 0, 0, 2, 0]
        o.note = "the second operator is refused while the first runs"

    def bad_input(self, o: Outcome) -> None:
        self.cli(o, "collect", "--no-download")
        self.cli(o, "run", "--nodes", "")
        self.cli(o, "run", "--nodes", ",")
        self.cli(o, "run", "--nodes", "-", "--retry-failed", stdin="")
        self.cli(o, "run", INVOKE_HYPERPOD_PRESIGN_EXPIRY="60")
        self.cli(o, "run", INVOKE_HYPERPOD_TIMEOUTS_NODE_SCRIPT="100")
        runs_file = self.work / "runs-is-a-file"
        runs_file.write_text("")
        self.cli(o, "discover", INVOKE_HYPERPOD_RUNS_DIR=str(runs_file))
        o.expect = [0, 2, 2, 0, 2, 2, 2]
        o.note = "empty filters, short URL lifetimes, a node deadline past ours, a runs folder that is a file"

    FAULTS: dict[str, Callable[["Campaign", Outcome], None]] = {
        "throttling storm": throttling_storm,
        "dropped sessions": dropped_sessions,
        "idle sessions (detached)": idle_sessions,
        "idle timeout (attached)": attached_past_the_idle_timeout,
        "unreachable nodes": unreachable_nodes,
        "S3 5xx on uploads": s3_errors,
        "upload failed, retried": upload_failed_then_retried,
        "hung items": hung_items,
        "full /tmp": full_tmp,
        "Ctrl-C once": ctrl_c_once,
        "Ctrl-C twice": ctrl_c_twice,
        "kill -9": kill_9,
        "broken state file": broken_state_file,
        "two operators at once": two_operators,
        "bad input": bad_input,
    }

    def run(self, name: str) -> tuple[int, int, int, int, bool]:
        """(reachable, collected, lost, tracebacks, exit codes as expected) after one fault."""
        outcome = Outcome()
        self.runs = self.work / name.replace(" ", "_").replace("/", "")
        began = time.monotonic()
        try:
            self.FAULTS[name](self, outcome)
        finally:
            self.reset_faults()
        nodes = self.state()["nodes"]
        reachable = [iid for iid in self.ids if iid not in outcome.unreachable]
        collected = [iid for iid in reachable if nodes[iid].get("status") in COLLECTED]
        lost = len(reachable) - len(collected)
        codes_ok = outcome.expect is None or outcome.codes == outcome.expect
        verdict = "ok" if lost == 0 and outcome.tracebacks == 0 and codes_ok else "FAILED"
        print(f"{name:<26} reachable {len(reachable):>2}  collected {len(collected):>2}  lost {lost}  "
              f"exit codes {outcome.codes} (expected {outcome.expect})  tracebacks {outcome.tracebacks}  "
              f"{time.monotonic() - began:5.1f} s  {verdict}" + (f"  ({outcome.note})" if outcome.note else ""),
              flush=True)
        return len(reachable), len(collected), lost, outcome.tracebacks, codes_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--only", nargs="*", choices=sorted(Campaign.FAULTS), help="run only these faults")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    sandbox = Sandbox(work / "sandbox")
    status = sandbox.up(SandboxSpec.simple(type="eks", nodes=arguments.nodes))
    results = []
    try:
        campaign = Campaign(sandbox, status, work)
        results = [campaign.run(name) for name in arguments.only or Campaign.FAULTS]
    finally:
        sandbox.down()
    reachable, collected, lost, tracebacks = (sum(r[i] for r in results) for i in range(4))
    wrong_codes = sum(1 for r in results if not r[4])
    print(f"{'summary':<26} reachable {reachable}  collected {collected}  lost {lost}  tracebacks {tracebacks}  "
          f"faults with unexpected exit codes {wrong_codes}")
    return 0 if lost == 0 and tracebacks == 0 and wrong_codes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
