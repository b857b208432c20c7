"""Real Slurm in the sandbox: sinfo, sinfo -R and scontrol give real answers inside the nodes.

Drain and down states are set as a scenario sets them (per node `slurm: {state, reason}`), and
read back inside the nodes, through a node exec and through a real `aws ssm start-session`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pexpect
import pytest

from collectors.errors import SandboxError
from collectors.sandbox import Sandbox, SandboxSpec, slurm
from collectors.sandbox.daemons import read_records, state_dir
from collectors.sandbox.nodes import is_same_process
from collectors.sandbox.services import stop_node_services
from collectors.sandbox.slurm import SLURMDBD_STORAGE_PASS, apply_scenario_states, start_slurm
from tests.conftest import require, require_namespaces, require_tool

DRAIN_REASON = "Kill task failed"
DOWN_REASON = "GPU fell off the bus: Xid 79"
MARKER = 'S=__x_; T=y__; echo "$S$T"'  # prints __x_y__, which the echo of the typed line does not contain


def require_slurm() -> None:
    require_tool("slurmctld", "slurm-wlm")
    require_tool("munged", "munge")


def run_in(sandbox, node: dict, command: str) -> str:
    result = sandbox.node_exec(node["instance_id"], ["sh", "-c", command])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def slurm_cluster(sandbox_factory):
    """Three workers: the second drained and the third down by the scenario, the first idle."""
    require_slurm()
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=3))
    assert status["slurm"]["running"], status["slurm"]
    nodes = status["nodes"]
    nodes[1]["scenario"] = {"slurm": {"state": "drain", "reason": DRAIN_REASON}}
    nodes[2]["scenario"] = {"slurm": {"state": "down", "reason": DOWN_REASON}}
    applied = apply_scenario_states(sandbox.root, nodes)
    assert set(applied) == {nodes[1]["hostname"], nodes[2]["hostname"]}
    return sandbox, status, env


def test_sinfo_inside_a_node_shows_every_worker_and_its_state(slurm_cluster):
    sandbox, status, _ = slurm_cluster
    idle, drained, down = status["nodes"]
    listing = run_in(sandbox, idle, "sinfo --noheader --Node --format='%N %T'")
    states = dict(line.split() for line in listing.splitlines())
    assert states == {idle["hostname"]: "idle", drained["hostname"]: "drained", down["hostname"]: "down"}
    table = run_in(sandbox, drained, "sinfo")
    assert table.splitlines()[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    assert re.search(rf"^worker-group-1\*\s+up\s+infinite\s+1\s+drain\s+{drained['hostname']}$", table, re.M)


def test_sinfo_R_inside_a_node_gives_the_scenarios_reasons(slurm_cluster):
    sandbox, status, _ = slurm_cluster
    _, drained, down = status["nodes"]
    lines = run_in(sandbox, drained, "sinfo -R").splitlines()
    assert lines[0].split() == ["REASON", "USER", "TIMESTAMP", "NODELIST"]
    rows = {line.split()[-1]: line for line in lines[1:]}
    assert set(rows) == {drained["hostname"], down["hostname"]}
    assert rows[drained["hostname"]].startswith(DRAIN_REASON) and " root " in rows[drained["hostname"]]
    assert rows[down["hostname"]].startswith(DOWN_REASON[:20])  # sinfo cuts REASON at 20 characters


def test_scontrol_show_node_hostname_describes_that_node(slurm_cluster):
    sandbox, status, _ = slurm_cluster
    _, drained, down = status["nodes"]
    shown = run_in(sandbox, drained, "scontrol show node $(hostname)")
    assert shown.startswith(f"NodeName={drained['hostname']} ")
    assert f"NodeAddr={drained['ip']} NodeHostName={drained['hostname']}" in shown
    assert "State=IDLE+DRAIN " in shown and f"Reason={DRAIN_REASON} [root@" in shown
    assert "Gres=gpu:1" in shown and "Partitions=worker-group-1" in shown  # an ml.g5.8xlarge
    shown = run_in(sandbox, down, "scontrol show node $(hostname)")
    assert "State=DOWN " in shown and "Gres=gpu:8" in shown and "CPUTot=96" in shown  # an ml.p5.48xlarge


def test_sinfo_R_through_a_real_ssm_session(slurm_cluster):
    sandbox, status, env = slurm_cluster
    node = status["nodes"][0]
    target = f"sagemaker-cluster:{status['cluster_id']}_{node['group']}-{node['instance_id']}"
    session = pexpect.spawn("aws", ["ssm", "start-session", "--target", target], env=dict(os.environ, **env),
                            encoding="utf-8", codec_errors="replace", timeout=30)
    try:
        session.expect(r"[#$] $")
        session.sendline(f"sinfo -R; {MARKER}")
        session.expect_exact("__x_y__")
        output = session.before.replace("\r", "")
        session.sendline("exit")
        session.expect(pexpect.EOF)
    finally:
        session.close(force=True)
    assert DRAIN_REASON in output and status["nodes"][1]["hostname"] in output


def test_each_node_keeps_slurms_files_where_hyperpod_does(slurm_cluster):
    sandbox, status, _ = slurm_cluster
    node = status["nodes"][0]
    listing = run_in(sandbox, node, "ls /opt/slurm/etc /var/log/slurm").split()
    assert {"slurm.conf", "gres.conf", "slurmdbd.conf", "slurmd.log"} <= set(listing)
    assert f"StoragePass={SLURMDBD_STORAGE_PASS}" in run_in(sandbox, node, "cat /opt/slurm/etc/slurmdbd.conf")
    assert run_in(sandbox, node, "stat -c %a /opt/slurm/etc/slurmdbd.conf").strip() == "600"
    assert "slurmd started on" in run_in(sandbox, node, "cat /var/log/slurm/slurmd.log")
    # slurmd runs inside the node: the node's own ps shows it.
    assert "slurmd" in run_in(sandbox, node, "ps -e -o comm=").split()
    # The host's /etc/slurm is untouched: the node sees its own /opt/slurm/etc there.
    assert not Path("/etc/slurm/slurm.conf").exists()


def test_sinfo_on_the_host_with_the_status_conf(slurm_cluster):
    _, status, _ = slurm_cluster
    env = dict(os.environ, SLURM_CONF=status["slurm"]["conf"])
    output = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N"], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert output.split() == [node["hostname"] for node in status["nodes"]]


# ---------------------------------------------------------------------------------------------
# A controller node, and teardown


@pytest.fixture(scope="module")
def controller_cluster(sandbox_factory):
    """A sandbox whose first node is the controller, as in a HyperPod Slurm cluster's controller group.

    Started like a scenario with `role: controller` starts it: Slurm is restarted on the nodes as
    they are once the roles are set.
    """
    require_slurm()
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=3))
    assert stop_node_services(sandbox.root) == []
    status["nodes"][0]["role"] = "controller"
    status["slurm"] = start_slurm(sandbox.root, status)
    return sandbox, status, env


def test_slurmctld_runs_inside_the_controller_node(controller_cluster):
    sandbox, status, _ = controller_cluster
    controller, *workers = status["nodes"]
    assert status["slurm"]["controller"] == controller["hostname"]
    assert "slurmctld" in run_in(sandbox, controller, "ps -e -o comm=").split()
    assert "slurmd" not in run_in(sandbox, controller, "ps -e -o comm=").split()
    ping = run_in(sandbox, workers[0], "scontrol ping")
    assert f"Slurmctld(primary) at {controller['hostname']} is UP" in ping
    assert run_in(sandbox, controller, "sinfo --noheader --Node --format=%N").split() == [
        node["hostname"] for node in workers
    ]
    assert "slurmctld" in run_in(sandbox, controller, "ls /var/log/slurm")


def test_down_stops_every_slurm_daemon_by_pid(controller_cluster):
    sandbox, status, _ = controller_cluster
    records = read_records(sandbox.root / "slurm" / "processes.jsonl")
    running = [record["daemon"] for record in records if is_same_process(*record["daemon"])]
    names = sorted(record["name"].split("@")[0] for record in records if record["daemon"] in running)
    assert names == ["munged", "slurmctld", "slurmd", "slurmd"]
    state = state_dir(sandbox.root)
    assert state.is_dir()
    sandbox.down()
    assert not any(is_same_process(*record["daemon"]) for record in records)
    assert not any(record["parent"] and is_same_process(*record["parent"]) for record in records)
    assert not state.exists() and not sandbox.root.exists()
    leftovers = [pid for pid in pids_of("slurmd", "slurmctld", "munged") if str(state) in cmdline_and_env(pid)]
    assert leftovers == []


def pids_of(*names: str) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in names:
                found.append(int(comm.parent.name))
        except OSError:
            pass  # exited while we looked
    return found


def cmdline_and_env(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()).decode(
            errors="replace")
    except OSError:
        return ""


def test_a_slurm_start_that_fails_part_way_leaves_nothing_behind(tmp_path, monkeypatch):
    require_namespaces()
    require(os.geteuid() == 0, "the sandbox needs root")
    require_slurm()
    started = []

    def fail_after_slurmctld(paths, plan):
        started.extend(read_records(paths.records))  # munged and slurmctld are running by now
        raise RuntimeError("slurmd would not start")

    monkeypatch.setattr(slurm, "start_slurmds", fail_after_slurmctld)
    sandbox = Sandbox(tmp_path / "root")
    with pytest.raises(SandboxError, match="slurmd would not start"):
        sandbox.up(SandboxSpec.simple(type="slurm", nodes=2))
    assert sorted(record["name"] for record in started) == ["munged", "slurmctld"]
    assert not any(is_same_process(*record["daemon"]) for record in started)
    assert not state_dir(sandbox.root).exists() and not sandbox.root.exists()
