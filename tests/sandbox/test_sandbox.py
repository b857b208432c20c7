"""The sandbox itself, through real clients: boto3, the real `aws ssm start-session`, pexpect.

API fidelity (DescribeCluster, ListClusterNodes paging, DescribeClusterNode, EKS, SSM), node
isolation, the loopback guard, a clean teardown (item 9) and a sandbox run by a normal user (item 8).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import botocore.exceptions
import botocore.httpsession
import pexpect
import pytest

from collectors.errors import SandboxError
from collectors.sandbox import GroupSpec, Sandbox, SandboxSpec, nodes, sandbox_client
from collectors.sandbox.nodes import is_same_process, read_node_records, read_process_record
from tests.conftest import require, require_namespaces
from tests.sandbox.sessions import (
    client,
    emu,
    end_session,
    run_in_session,
    ssm_target,
    start_session,
)

PROJECT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="module")
def eks_sandbox(sandbox_factory) -> tuple[Sandbox, dict, dict[str, str]]:
    """An EKS-orchestrated sandbox: 4 nodes in 2 groups (ml.g5.8xlarge and ml.p5.48xlarge)."""
    return sandbox_factory(SandboxSpec.simple(type="eks", nodes=4))


def test_describe_cluster_reports_the_orchestrator_and_groups(eks_sandbox):
    _, status, _ = eks_sandbox
    described = client(status, "sagemaker").describe_cluster(ClusterName=status["cluster"])
    eks_arn = described["Orchestrator"]["Eks"]["ClusterArn"]
    assert eks_arn.startswith("arn:aws:eks:us-west-2:")
    assert described["ClusterArn"] == status["cluster_arn"]
    assert described["ClusterArn"].endswith("/" + status["cluster_id"]) and len(status["cluster_id"]) == 12
    assert described["ClusterStatus"] == "InService" and described["NodeRecovery"] == "Automatic"
    groups = {group["InstanceGroupName"]: group for group in described["InstanceGroups"]}
    assert groups["worker-group-2"]["InstanceType"] == "ml.p5.48xlarge"
    assert groups["worker-group-2"]["CurrentCount"] == 2 and groups["worker-group-2"]["Status"] == "InService"
    # The EKS cluster the orchestrator names is there, through the EKS API.
    eks = client(status, "eks").describe_cluster(name=eks_arn.rsplit("/", 1)[-1])["cluster"]
    assert eks["arn"] == eks_arn


def test_list_cluster_nodes_pages_through_every_node(eks_sandbox):
    _, status, _ = eks_sandbox
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
    assert [len(page) for page in pages] == [3, 1]
    nodes = [node for page in pages for node in page]
    assert len({node["InstanceId"] for node in nodes}) == 4
    assert all(node["InstanceId"].startswith("i-0") and len(node["InstanceId"]) == 19 for node in nodes)
    assert [node["PrivateDnsHostname"].split(".")[0] for node in nodes] == [n["hostname"] for n in status["nodes"]]
    assert {node["InstanceStatus"]["Status"] for node in nodes} == {"Running"}
    assert emu(status, "/_emu/stats")["SageMaker.ListClusterNodes"] == 2
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
    sessions = {s["target"]: s for s in emu(status, "/_emu/sessions")}
    assert sessions[target]["terminated"] is None  # the shell ended; nobody called TerminateSession


def test_terminate_session_ends_a_session_in_the_registry(eks_sandbox):
    _, status, _ = eks_sandbox
    ssm = client(status, "ssm")
    started = ssm.start_session(Target=ssm_target(status, status["nodes"][0]))
    assert started["StreamUrl"].startswith("wss://ssmmessages.us-west-2.amazonaws.com/v1/data-channel/")
    assert ssm.terminate_session(SessionId=started["SessionId"])["SessionId"] == started["SessionId"]
    sessions = {s["session_id"]: s for s in emu(status, "/_emu/sessions")}
    assert sessions[started["SessionId"]]["terminated"]


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
    spec = SandboxSpec(type="eks", groups=[GroupSpec("cpu-group", "ml.c5.xlarge", 1)], shell="bash")
    _, status, env = sandbox_factory(spec)
    node = status["nodes"][0]
    session = pexpect.spawn("aws", ["ssm", "start-session", "--target", ssm_target(status, node)],
                            env=dict(os.environ, **env), encoding="utf-8", codec_errors="replace", timeout=30)
    bash_prompt = r"sh-\d+\.\d+# $"
    session.expect(bash_prompt)
    assert run_in_session(session, "hostname", bash_prompt).split()[-1] == node["hostname"]
    found = run_in_session(session, "command -v nvidia-smi systemctl", bash_prompt)
    assert "/usr/local/bin/systemctl" in found and "nvidia-smi" not in found
    units = run_in_session(session, "systemctl list-units --type=service --all --no-pager", bash_prompt)
    assert "kubelet.service" in units and "slurmd.service" not in units
    assert end_session(session) == 0


def test_the_loopback_guard_refuses_real_aws_without_sending(eks_sandbox, monkeypatch):
    _, status, _ = eks_sandbox
    sent = []
    monkeypatch.setattr(botocore.httpsession.URLLib3Session, "send", lambda self, request: sent.append(request))
    s3 = sandbox_client("s3", "https://s3.amazonaws.com", status["region"], Path(status["root"]))
    with pytest.raises(SandboxError, match="refusing"):
        s3.list_buckets()
    assert sent == []


# ---------------------------------------------------------------------------------------------
# Clean teardown (item 9)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line, environment (a node's processes carry their folder there) or
    working folder mentions `text`."""
    pids = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            seen = (process / "cmdline").read_bytes() + (process / "environ").read_bytes()
            cwd = os.readlink(process / "cwd")
        except OSError:
            continue  # exited while we looked, or not ours to read
        if text.encode() in seen or cwd.startswith(text):
            pids.append(int(process.name))
    return pids


def mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def test_down_stops_everything_even_open_sessions_and_leaves_nothing(sandbox_factory):
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=2))
    with pytest.raises(SandboxError, match="already up"):
        sandbox.up(SandboxSpec.simple(type="eks", nodes=2))
    node = status["nodes"][0]
    # Faults that leave things on the node: shims, a tmpfs and its filler.
    sandbox.set_node_faults(node["instance_id"], slow=0.1, hang=["nvidia-smi"], tmp_free_mb=1)
    session = start_session(env, ssm_target(status, node))
    session.sendline("nohup sleep 600 >/dev/null 2>&1 &")
    records = [read_process_record(sandbox.root)] + list(read_node_records(sandbox.root).values())
    identities = [identity for record in records for key, identity in record.items() if key != "stand_ins"]
    assert len(identities) == 1 + 2 * 2 and all(is_same_process(*identity) for identity in identities)
    root = str(sandbox.root)
    sandbox.down()
    session.expect(pexpect.EOF, timeout=30)  # the open session ends with its node
    session.close()
    assert not any(is_same_process(*identity) for identity in identities)
    assert processes_mentioning(root) == [] and mounts_mentioning(root) == []
    assert not sandbox.root.exists() and not sandbox.is_up()
    sandbox.down()
    with pytest.raises(SandboxError, match="no sandbox is up"):
        sandbox.status()


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


def test_a_node_that_cannot_start_stops_the_start_and_leaves_nothing(tmp_path, monkeypatch):
    require_namespaces()
    require(os.geteuid() == 0, "the sandbox needs root")
    good_fstab = nodes.node_fstab

    def one_broken(root: Path, node) -> str:  # the third node's /var/log comes from nowhere
        fstab = good_fstab(root, node)
        return fstab.replace("/varlog ", "/missing ") if node.hostname.endswith("-12") else fstab

    monkeypatch.setattr(nodes, "node_fstab", one_broken)
    sandbox = Sandbox(tmp_path / "root")
    with pytest.raises(SandboxError, match="did not start"):
        sandbox.up(SandboxSpec.simple(type="eks", nodes=6))
    assert not sandbox.root.exists()
    assert processes_mentioning(str(sandbox.root)) == []


# ---------------------------------------------------------------------------------------------
# A normal user (item 8)

NORMAL_USER_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from collectors.sandbox import Sandbox, SandboxSpec
    from tests.sandbox.sessions import end_session, run_in_session, ssm_target, start_session

    sandbox = Sandbox(Path(sys.argv[1]))
    report = {"uid": os.geteuid()}
    try:
        status = sandbox.up(SandboxSpec.from_scenario({
            "cluster": "hp-user", "type": "eks",
            "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 2}],
            "nodes": {"worker-group-1/1": {"faults": {"tmp_free_mb": 1}}},
        }))
        node = status["nodes"][0]
        report["exec"] = sandbox.node_exec(node["instance_id"], ["sh", "-c", "hostname; id -u"]).stdout.split()
        session = start_session(sandbox.env(), ssm_target(status, node))
        report["session"] = run_in_session(session, "hostname; id -u; nvidia-smi -L").split()
        report["session_rc"] = end_session(session)
        tmp = sandbox.node_exec(status["nodes"][1]["instance_id"], ["df", "-Pk", "/tmp"]).stdout.split()
        report["tmp_available_kb"] = int(tmp[-3])
        report["hostnames"] = [node["hostname"] for node in status["nodes"]]
    finally:
        sandbox.down()
    report["root_left"] = sandbox.root.exists()
    print(json.dumps(report))
""")

# Run as `sh -c SCRIPT sh UID COMMAND...`, as root, in a mount namespace of its own: every folder on
# the way to {paths} that others cannot enter (a home folder such as /root, pytest's folder) gets an
# enterable tmpfs in its place holding just the way on; then COMMAND runs as user UID with no
# capability left. Only this test's mount namespace changes; the user's view of files is otherwise real.
REACHABLE_AS_USER = """
set -e
uid=$1; shift
mount -t tmpfs -o mode=700 kept /mnt
for path in {paths}; do
  dir=""
  rest=${{path#/}}
  while [ -n "$rest" ]; do
    dir="$dir/${{rest%%/*}}"
    case "$rest" in */*) rest=${{rest#*/}} ;; *) rest="" ;; esac
    case "$(stat -c %a "$dir")" in *[1357]) continue ;; esac
    next=${{rest%%/*}}
    mkdir -p "/mnt$dir"
    mount --bind "$dir" "/mnt$dir"
    mount -t tmpfs -o mode=755 hidden "$dir"
    mkdir "$dir/$next"
    mount --bind "/mnt$dir/$next" "$dir/$next"
  done
done
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all -- "$@"
"""


def test_a_normal_user_runs_a_sandbox_in_user_namespaces(tmp_path):
    require(os.geteuid() == 0, "switching to a normal user for this test needs root")
    require(shutil.which("setpriv") is not None, "needs `setpriv` (Debian package util-linux)")
    probe = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             "unshare", "--user", "--map-root-user", "--mount", "--uts", "--pid", "--fork", "true"]
    require(subprocess.run(probe, capture_output=True).returncode == 0,
            "unprivileged user namespaces are not allowed here (user.max_user_namespaces)")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    needed = {sys.prefix, sys.base_prefix, str(Path(shutil.which("aws")).resolve().parent), str(PROJECT), str(home)}
    script = REACHABLE_AS_USER.format(paths=" ".join(sorted(needed)))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": str(PROJECT)}
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(NOBODY),
               sys.executable, "-c", NORMAL_USER_SCRIPT, str(home / "sandbox")]
    result = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["uid"] == NOBODY
    first = report["hostnames"][0]
    assert report["exec"] == [first, "0"]  # root inside the node, nobody outside
    assert report["session"][:2] == [first, "0"] and "A10G" in " ".join(report["session"])
    assert report["session_rc"] == 0
    assert 900 <= report["tmp_available_kb"] <= 1024
    assert report["root_left"] is False
    assert processes_mentioning(str(home)) == []


def test_without_user_namespaces_a_normal_user_gets_one_clear_line(tmp_path, monkeypatch):
    """As a normal user on a system that refuses user namespaces. Emulated: `unshare` here fails the
    way util-linux's does when user.max_user_namespaces is 0 (a root test process cannot lose that)."""
    refusing = tmp_path / "bin"
    refusing.mkdir()
    (refusing / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: No space left on device' >&2\nexit 1\n")
    (refusing / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{refusing}:{os.environ['PATH']}")
    monkeypatch.setattr(nodes, "in_user_namespace", lambda: True)
    sandbox = Sandbox(tmp_path / "root")
    with pytest.raises(SandboxError) as refused:
        sandbox.up(SandboxSpec.simple(nodes=1))
    assert "\n" not in str(refused.value) and "unprivileged user namespaces" in str(refused.value)
    assert not sandbox.root.exists()
