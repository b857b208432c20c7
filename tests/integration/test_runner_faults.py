"""The runner under the sandbox's faults, through the real `invoke` command line.

Throttled StartSession, dropped and idle-timed-out sessions, unreachable nodes, retries:
each shown to the real clients (boto3 StartSession + the plugin, real shells, real curl).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
COLLECTED = {"ok", "ok_with_errors"}


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    from collectors.sandbox import SandboxSpec

    return sandbox_factory(SandboxSpec.simple(type="eks", nodes=4))


@pytest.fixture
def faults(cluster):
    """Faults armed by a test are put back afterwards, so tests do not leak into each other."""
    sandbox, status, env = cluster
    yield sandbox
    sandbox.set_faults(start_session_rate=None, idle_timeout=None, s3_put_failures=None)
    for node in status["nodes"]:
        sandbox.set_node_faults(node["instance_id"], target_not_connected=None, session_drop_after=None, slow=None)


def invoke(env: dict, runs: Path, *args: str, **settings: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_POLL_INTERVAL="1",
                    **settings)
    full_env.pop("AWS_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def run_state(runs: Path, status: dict) -> dict:
    return json.loads((runs / status["cluster"] / "latest" / "state.json").read_text())


def launches(runs: Path, status: dict, instance_id: str) -> int:
    """Sessions that confirmed a launch on this node (each one leaves its marker in the transcript)."""
    transcript = runs / status["cluster"] / "latest" / "transcripts" / f"{instance_id}.log"
    return len(re.findall(r"__hpc_launched_\w+__:\d+", transcript.read_text())) if transcript.exists() else 0


def test_every_node_is_collected_under_a_start_session_limit(cluster, faults, tmp_path):
    sandbox, status, env = cluster
    faults.set_faults(start_session_rate=1)  # AWS-like: more than 1 StartSession per second is throttled
    result = invoke(env, tmp_path, "collect", "--session-rate", "20", "--no-download")
    assert result.returncode == 0, result.stderr
    state = run_state(tmp_path, status)
    assert {n["status"] for n in state["nodes"].values()} <= COLLECTED
    assert state["stages"]["run"]["throttles"] > 0, "the limit was never hit: the test proves nothing"


def test_dropped_and_idle_sessions_lose_no_node_when_detached(cluster, faults, tmp_path):
    sandbox, status, env = cluster
    dropped, *others = status["nodes"]
    faults.set_node_faults(dropped["instance_id"], session_drop_after=3)
    faults.set_faults(idle_timeout=3)  # a session without input for 3 s is closed, as SSM does after 20 min
    # The node script takes longer than 3 s (an extra 6 s item), so an attached session dies mid-collection...
    attached = invoke(env, tmp_path / "attached", "collect", "--session-mode", "attached", "--no-download",
                      "--nodes", dropped["instance_id"], "--command", "sleep 6")
    assert attached.returncode == 1
    assert run_state(tmp_path / "attached", status)["nodes"][dropped["instance_id"]]["status"] not in COLLECTED
    # ...while a detached launch is over before the drop, and the script carries on without it.
    detached = invoke(env, tmp_path / "detached", "collect", "--no-download", "--command", "sleep 6")
    assert detached.returncode == 0, detached.stderr
    nodes = run_state(tmp_path / "detached", status)["nodes"]
    assert {n["status"] for n in nodes.values()} <= COLLECTED
    assert all(n["bytes"] > 0 and len(n["sha256"]) == 64 for n in nodes.values())


def test_unreachable_nodes_fail_fast_and_retry_failed_touches_only_them(cluster, faults, tmp_path):
    sandbox, status, env = cluster
    lost = status["nodes"][2]
    faults.set_node_faults(lost["instance_id"], target_not_connected=True)
    first = invoke(env, tmp_path, "collect", "--no-download")
    assert first.returncode == 1
    nodes = run_state(tmp_path, status)["nodes"]
    assert nodes[lost["instance_id"]]["status"] == "unreachable"
    assert nodes[lost["instance_id"]]["attempts"] == 1, "TargetNotConnected must not be retried"
    assert "TargetNotConnected" in nodes[lost["instance_id"]]["error"]
    assert "--retry-failed" in first.stderr

    faults.set_node_faults(lost["instance_id"], target_not_connected=None)
    again = invoke(env, tmp_path, "run", "--retry-failed")
    assert again.returncode == 0, again.stderr
    nodes = run_state(tmp_path, status)["nodes"]
    assert {n["status"] for n in nodes.values()} <= COLLECTED
    for node in status["nodes"]:
        assert launches(tmp_path, status, node["instance_id"]) == 1, node["instance_id"]


def test_after_a_crash_an_attached_run_waits_for_the_script_still_running_on_the_node(cluster, faults, tmp_path):
    """The first run launches detached and dies (SIGKILL); resumed in attached mode, the node answers
    "already running": the run waits for that script's status object instead of calling it failed."""
    sandbox, status, env = cluster
    target = status["nodes"][0]["instance_id"]
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(tmp_path), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    full_env.pop("AWS_PROFILE", None)
    first = subprocess.Popen([sys.executable, "-m", "invoke", "collect", "--no-download", "--nodes", target,
                              "--command", "sleep 8"], cwd=PROJECT, env=full_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while launches(tmp_path, status, target) == 0 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait()
    assert launches(tmp_path, status, target) == 1
    resumed = invoke(env, tmp_path, "run", "--session-mode", "attached", "--nodes", target)
    assert resumed.returncode == 0, resumed.stderr
    node = run_state(tmp_path, status)["nodes"][target]
    assert node["status"] in COLLECTED and node["bytes"] > 0, node
    assert launches(tmp_path, status, target) == 1  # collected once, by the first launch


def test_a_relaunch_never_takes_an_earlier_launchs_status_as_its_own(cluster, faults, tmp_path):
    """Before: after an upload failed for good, `run --retry-failed` on a slow node read the first launch's
    status object (done, upload_failed) as the new launch's and called the node failed while the new script
    went on to upload a good tarball."""
    sandbox, status, env = cluster
    node = status["nodes"][1]
    tarball_key = f"instances/{node['group']}_{node['instance_id']}.tar.gz"
    faults.set_faults(s3_put_failures=[{"key_contains": tarball_key, "times": "always"}])
    first = invoke(env, tmp_path, "collect", "--no-download", "--nodes", node["instance_id"])
    assert first.returncode == 1
    assert run_state(tmp_path, status)["nodes"][node["instance_id"]]["error_kind"] == "upload_failed"

    # The new launch's first status report ("running", three tries of curl) is refused: meanwhile the
    # S3 object is still the first launch's "done, upload_failed".
    status_key = f"status/{node['group']}_{node['instance_id']}.json"
    faults.set_faults(s3_put_failures=[{"key_contains": status_key, "times": 3}])
    again = invoke(env, tmp_path, "run", "--retry-failed")
    assert again.returncode == 0, again.stderr
    record = run_state(tmp_path, status)["nodes"][node["instance_id"]]
    assert record["status"] in COLLECTED and record["bytes"] > 0, record
    assert len(record["launches"]) == 2 and record["launch_id"] == record["launches"][1]


def test_a_good_result_of_an_earlier_launch_collects_the_node_without_a_new_launch(cluster, faults, tmp_path):
    """A node called timed out whose late `done` (a good tarball) is in S3 by the time it is retried."""
    sandbox, status, env = cluster
    node = status["nodes"][3]
    assert invoke(env, tmp_path, "collect", "--no-download", "--nodes", node["instance_id"]).returncode == 0
    state_file = tmp_path / status["cluster"] / "latest" / "state.json"
    state = json.loads(state_file.read_text())
    record = state["nodes"][node["instance_id"]]
    record.update(status="timeout", error_kind="timeout_script", error="no result from the node within 900s")
    state_file.write_text(json.dumps(state))
    again = invoke(env, tmp_path, "run", "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert f"{node['instance_id']} was collected by its earlier launch {record['launch_id']}" in again.stderr
    after = run_state(tmp_path, status)["nodes"][node["instance_id"]]
    assert after["status"] in COLLECTED and after["bytes"] == record["bytes"] and after["error"] is None
    assert after["launches"] == record["launches"] and launches(tmp_path, status, node["instance_id"]) == 1


def test_attached_sessions_outlive_the_idle_timeout_by_keeping_alive(cluster, faults, tmp_path):
    """Session Manager ends a session without input for its idle timeout, however much the node prints;
    the node script runs longer than that here (its command sleeps 6 s, the idle timeout is 3 s)."""
    sandbox, status, env = cluster
    node = status["nodes"][2]["instance_id"]
    faults.set_faults(idle_timeout=3)
    args = ("collect", "--no-download", "--session-mode", "attached", "--nodes", node, "--command", "sleep 6")
    kept_alive = invoke(env, tmp_path / "alive", *args, INVOKE_HYPERPOD_SESSION_KEEPALIVE="1")
    assert kept_alive.returncode == 0, kept_alive.stderr
    assert run_state(tmp_path / "alive", status)["nodes"][node]["status"] in COLLECTED
    # Without a keystroke in time, the service ends the session while the script runs.
    silent = invoke(env, tmp_path / "silent", *args, INVOKE_HYPERPOD_SESSION_KEEPALIVE="60",
                    INVOKE_HYPERPOD_SESSION_ATTEMPTS="1")
    assert silent.returncode == 1
    assert run_state(tmp_path / "silent", status)["nodes"][node]["status"] not in COLLECTED


def test_after_kill_9_the_recorded_launch_keeps_the_script_from_running_twice(cluster, faults, tmp_path):
    """The launch is in the state before the session types anything. Killed just after the node said its
    script is running (the state may not say so yet: its writes are at most one a second), the resumed
    run finds that launch's status object and waits for its result instead of launching again."""
    sandbox, status, env = cluster
    target = status["nodes"][1]["instance_id"]
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(tmp_path), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    full_env.pop("AWS_PROFILE", None)
    first = subprocess.Popen([sys.executable, "-m", "invoke", "collect", "--no-download", "--nodes", target,
                              "--command", "sleep 8"], cwd=PROJECT, env=full_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while launches(tmp_path, status, target) == 0 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    recorded = run_state(tmp_path, status)["nodes"][target]
    assert len(recorded["launches"]) == 1, recorded
    resumed = invoke(env, tmp_path, "run")
    assert resumed.returncode == 0, resumed.stderr
    node = run_state(tmp_path, status)["nodes"][target]
    # No second launch: the first one's result is the node's.
    assert node["status"] in COLLECTED and node["launches"] == recorded["launches"], node
    assert launches(tmp_path, status, target) == 1
