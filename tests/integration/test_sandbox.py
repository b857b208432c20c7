"""The sandbox itself, through real clients: boto3, the real `aws ssm start-session`, pexpect."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import botocore.exceptions
import botocore.httpsession
import pexpect
import pytest

from collectors.errors import SandboxError
from collectors.sandbox import GroupSpec, Sandbox, SandboxSpec, sandbox_client
from collectors.sandbox.nodes import is_same_process, read_process_record
from tests.conftest import require, require_namespaces

PROMPT = r"[#$] $"
MARKER = 'S=__x_; T=y__; echo "$S$T"'  # prints __x_y__, which its own echo does not contain
MARKER_OUTPUT = "__x_y__"


def client(status: dict, service: str):
    return sandbox_client(service, status["endpoint"], status["region"], Path(status["root"]))


def ssm_target(status: dict, node: dict) -> str:
    return f"sagemaker-cluster:{status['cluster_id']}_{node['group']}-{node['instance_id']}"


def emu(status: dict, path: str, method: str = "GET"):
    request = urllib.request.Request(status["endpoint"] + path, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def start_session(env: dict, target: str) -> pexpect.spawn:
    session = pexpect.spawn("aws", ["ssm", "start-session", "--target", target], env=dict(os.environ, **env),
                            encoding="utf-8", codec_errors="replace", timeout=30)
    session.expect(r"Starting session with SessionId: (\S+)")
    session.expect(PROMPT)
    return session


def run_in_session(session: pexpect.spawn, command: str, prompt: str = PROMPT) -> str:
    """Output of `command` (without the echo of the typed line), up to the marker printed after it."""
    session.sendline(f"{command}; {MARKER}")
    session.expect_exact(MARKER_OUTPUT)
    output = session.before.split("\n", 1)[1]
    session.expect(prompt)
    return output


def end_session(session: pexpect.spawn) -> int:
    session.sendline("exit")
    session.expect(r"Exiting session with sessionId: (\S+)\.")
    session.expect(pexpect.EOF)
    session.close()
    return session.exitstatus


@pytest.fixture(scope="module")
def slurm_sandbox(sandbox_factory):
    return sandbox_factory(SandboxSpec.simple(type="slurm", nodes=8))


def test_describe_cluster_reports_the_orchestrator(eks_sandbox, slurm_sandbox):
    _, eks, _ = eks_sandbox
    described = client(eks, "sagemaker").describe_cluster(ClusterName=eks["cluster"])
    assert described["Orchestrator"]["Eks"]["ClusterArn"].startswith("arn:aws:eks:us-west-2:")
    assert described["ClusterArn"] == eks["cluster_arn"]
    assert described["ClusterArn"].endswith("/" + eks["cluster_id"]) and len(eks["cluster_id"]) == 12
    _, slurm, _ = slurm_sandbox
    described = client(slurm, "sagemaker").describe_cluster(ClusterName=slurm["cluster"])
    assert described["Orchestrator"] == {"Slurm": {"SlurmConfigStrategy": "Managed"}}


def test_list_cluster_nodes_pages_through_every_node(slurm_sandbox):
    _, status, _ = slurm_sandbox
    sagemaker = client(status, "sagemaker")
    emu(status, "/_emu/stats", "DELETE")
    pages, token = [], None
    while True:
        paging = {"NextToken": token} if token else {}
        page = sagemaker.list_cluster_nodes(ClusterName=status["cluster"], MaxResults=3, **paging)
        pages.append(page["ClusterNodeSummaries"])
        token = page.get("NextToken")
        if not token:
            break
    assert [len(page) for page in pages] == [3, 3, 2]
    nodes = [node for page in pages for node in page]
    assert len({node["InstanceId"] for node in nodes}) == 8
    assert all(node["InstanceId"].startswith("i-0") and len(node["InstanceId"]) == 19 for node in nodes)
    assert [node["PrivateDnsHostname"].split(".")[0] for node in nodes] == [n["hostname"] for n in status["nodes"]]
    assert emu(status, "/_emu/stats")["SageMaker.ListClusterNodes"] == 3
    with pytest.raises(botocore.exceptions.ClientError, match="ValidationException"):
        sagemaker.list_cluster_nodes(ClusterName=status["cluster"], MaxResults=101)


def test_nodes_are_described_by_name_or_arn_with_their_addresses(eks_sandbox):
    _, status, _ = eks_sandbox
    sagemaker = client(status, "sagemaker")
    node = status["nodes"][2]
    described = sagemaker.describe_cluster_node(ClusterName=status["cluster_arn"], NodeId=node["instance_id"])
    details = described["NodeDetails"]
    assert details["PrivatePrimaryIp"] == node["ip"]
    assert details["PrivateDnsHostname"] == f"{node['hostname']}.us-west-2.compute.internal"
    assert details["Placement"]["AvailabilityZone"] == "us-west-2a"
    assert details["InstanceStatus"]["Status"] == "Running"
    assert sagemaker.describe_cluster(ClusterName=status["cluster_arn"])["ClusterName"] == status["cluster"]
    listed = sagemaker.list_cluster_nodes(ClusterName=status["cluster_arn"])["ClusterNodeSummaries"]
    assert len(listed) == 4


def test_each_node_has_its_own_hostname_files_and_processes(eks_sandbox):
    sandbox, status, _ = eks_sandbox
    for node in status["nodes"]:
        script = "hostname; cat /var/log/aws/clusters/*.log; ps -e | wc -l"
        result = sandbox.node_exec(node["instance_id"], ["sh", "-c", script])
        lines = result.stdout.splitlines()
        assert result.returncode == 0 and lines[0] == node["hostname"]
        assert node["instance_id"] in result.stdout
        assert int(lines[-1]) < 10  # only the node's own processes are visible
        other_nodes = {n["instance_id"] for n in status["nodes"]} - {node["instance_id"]}
        assert not other_nodes & set(result.stdout.split())


def test_aws_ssm_start_session_opens_a_root_shell_on_that_node(eks_sandbox):
    _, status, env = eks_sandbox
    node = next(n for n in status["nodes"] if n["instance_type"] == "ml.p5.48xlarge")
    target = ssm_target(status, node)
    session = start_session(env, target)
    assert run_in_session(session, "hostname").split()[-1] == node["hostname"]
    assert run_in_session(session, "id -u; pwd").split()[-2:] == ["0", "/"]
    config = json.loads(run_in_session(session, "cat /opt/ml/config/resource_config.json"))
    assert config["ClusterConfig"] == {"ClusterArn": status["cluster_arn"], "ClusterName": status["cluster"]}
    instances = {i["InstanceId"]: i for g in config["InstanceGroups"] for i in g["Instances"]}
    assert instances[node["instance_id"]]["CustomerIpAddress"] == node["ip"]
    assert run_in_session(session, "nvidia-smi").count("NVIDIA H100 80GB HBM3") == 8
    session.setwinsize(40, 132)  # the remote pty follows the caller's window
    assert run_in_session(session, "stty size").split()[-2:] == ["40", "132"]
    assert end_session(session) == 0
    assert target in {s["target"] for s in emu(status, "/_emu/sessions")}


def test_a_failed_node_is_not_connected(eks_sandbox):
    sandbox, status, env = eks_sandbox
    node = status["nodes"][1]
    sandbox.set_node_status(node["instance_id"], "Failure", "GPU fell off the bus")
    try:
        statuses = {n["instance_id"]: n["status"] for n in sandbox.status()["nodes"]}
        assert statuses[node["instance_id"]] == "Failure"
        result = subprocess.run(["aws", "ssm", "start-session", "--target", ssm_target(status, node)],
                                env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
        assert result.returncode == 255
        assert "TargetNotConnected" in result.stderr
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client(status, "ssm").start_session(Target=ssm_target(status, node))
        assert raised.value.response["Error"]["Code"] == "TargetNotConnected"
    finally:
        sandbox.set_node_status(node["instance_id"], "Running")


def test_bash_shell_greets_like_al2023_and_cpu_nodes_have_no_nvidia_smi(sandbox_factory):
    spec = SandboxSpec(type="slurm", groups=[GroupSpec("cpu-group", "ml.c5.xlarge", 1)], shell="bash")
    _, status, env = sandbox_factory(spec)
    node = status["nodes"][0]
    session = pexpect.spawn("aws", ["ssm", "start-session", "--target", ssm_target(status, node)],
                            env=dict(os.environ, **env), encoding="utf-8", codec_errors="replace", timeout=30)
    bash_prompt = r"sh-\d+\.\d+# $"
    session.expect(bash_prompt)
    assert run_in_session(session, "hostname", bash_prompt).split()[-1] == node["hostname"]
    found = run_in_session(session, "command -v nvidia-smi systemctl", bash_prompt)
    assert "/usr/local/sbin/systemctl" in found and "nvidia-smi" not in found
    units = run_in_session(session, "systemctl list-units --type=service --all --no-pager", bash_prompt)
    assert "slurmd.service" in units and "kubelet.service" not in units
    assert end_session(session) == 0


def test_down_stops_every_process_and_removes_the_root(sandbox_factory):
    sandbox, status, _ = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=2))
    with pytest.raises(SandboxError, match="already up"):
        sandbox.up(SandboxSpec.simple(type="slurm", nodes=2))
    records = [read_process_record(sandbox.root)] + [
        read_process_record(sandbox.root / "nodes" / node["instance_id"]) for node in status["nodes"]
    ]
    identities = [identity for record in records for identity in record.values()]
    assert len(identities) == 1 + 2 * 2 and all(is_same_process(*identity) for identity in identities)
    sandbox.down()
    assert not any(is_same_process(*identity) for identity in identities)
    assert not sandbox.root.exists() and not sandbox.is_up()
    sandbox.down()
    with pytest.raises(SandboxError, match="no sandbox is up"):
        sandbox.status()


def test_the_loopback_guard_refuses_real_aws_without_sending(eks_sandbox, monkeypatch):
    _, status, _ = eks_sandbox
    sent = []
    monkeypatch.setattr(botocore.httpsession.URLLib3Session, "send", lambda self, request: sent.append(request))
    s3 = sandbox_client("s3", "https://s3.amazonaws.com", status["region"], Path(status["root"]))
    with pytest.raises(SandboxError, match="refusing"):
        s3.list_buckets()
    assert sent == []


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass  # exited while we looked
    return pids


def test_a_start_that_fails_part_way_leaves_nothing_behind(tmp_path):
    require_namespaces()
    require(os.geteuid() == 0, "the sandbox needs root")
    sandbox = Sandbox(tmp_path / "root")
    # moto, like the real API, refuses an instance type it does not offer for HyperPod.
    spec = SandboxSpec(groups=[GroupSpec("worker-group-1", "ml.g6.xlarge", 1)])
    with pytest.raises(SandboxError, match="InstanceType"):
        sandbox.up(spec)
    assert not sandbox.root.exists()
    assert processes_mentioning(str(sandbox.root)) == []
