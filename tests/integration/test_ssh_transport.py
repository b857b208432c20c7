"""The SSH transport against the sandbox's real sshd in each Slurm node.

Whole collections go through the real `invoke` command line (real sshd, real curl to moto's S3,
real bash on namespaced nodes) and are compared with the same collection over SSM. Single steps
(host keys, timeouts, Ctrl-C, a stopped sshd) use the transport directly with a tiny node script
served from the sandbox's S3, so they take a second, not a whole collection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import boto3
import botocore.config
import pytest

from collectors.sandbox import GroupSpec, SandboxSpec
from collectors.sandbox.sshd import stop_node_sshd
from collectors.settings import Timeouts
from collectors.transports.base import (
    SESSION_INTERRUPTED, SESSION_LAUNCHED, SESSION_OK, SESSION_START_FAILED, SESSION_TIMEOUT, SESSION_UNREACHABLE,
    NodeJob)
from collectors.transports.ssh import SshTransport
from collectors.transports.ssh.gateway import Gateway, ssm_proxy_command
from collectors.transports.ssh.options import SshOptions
from tests.conftest import closed_port, require_tool

PROJECT = Path(__file__).resolve().parents[2]
# Files that must be byte for byte the same whichever transport ran the node script.
SAME_FILES = ("hostname.txt", "instance_id.txt", "instance_group.txt", "cluster_type.txt", "resource_config.json",
              "uname.txt", "versions.txt", "kern.log")
SAME_FOLDERS = ("opt_slurm_etc/", "cluster_logs/")
# Whole collections wait in the session (quicker to end than polling S3) and skip the slow NVIDIA report.
COLLECT = ("--session-mode", "attached", "--skip-nvidia-bug-report")
TINY_SCRIPT = ("printf 'HPC_RESULT status=ok rc=0 items=1 failed_items=0 skipped_items=0 bytes=0 sha256=- "
               "tarball=- host=%s user=%s\\n' \"$(hostname)\" \"$(id -un)\"\n")


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    """A head node (the jump host) and a worker, each with its own sshd; the worker's is stopped last."""
    require_tool("sshd", "openssh-server")
    spec = SandboxSpec(type="slurm", groups=[GroupSpec("controller-machine", "ml.m5.xlarge", 1),
                                             GroupSpec("worker-group-1", "ml.g5.8xlarge", 1)])
    sandbox, status, env = sandbox_factory(spec)
    assert status["ssh"]["running"], status["ssh"]
    return sandbox, status, env


@pytest.fixture(scope="module")
def over_ssm(cluster, tmp_path_factory):
    """The same collection over SSM: what SSH must match."""
    _, status, env = cluster
    runs = tmp_path_factory.mktemp("ssm")
    result = invoke(env, runs, "collect", *COLLECT)
    assert result.returncode == 0, result.stderr
    return runs / status["cluster"] / "latest"


def invoke(env: dict, runs: Path, *args: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env, capture_output=True,
                          text=True, timeout=240)


def node(status: dict, group: str) -> dict:
    return next(n for n in status["nodes"] if n["group"] == group)


def state_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def bundles(run_dir: Path) -> dict[str, dict[str, bytes]]:
    """Tarball name → {member below the top folder: content}."""
    found = {}
    for path in sorted((run_dir / "results").glob("*.tar.gz")):
        with tarfile.open(path) as tar:
            found[path.name] = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                                if m.isfile() and "/" in m.name}
    return found


def manifest_outcomes(members: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """(item, rc, timed_out) per collected item; seconds and sizes vary from run to run."""
    rows = [line.split("\t") for line in members["manifest.tsv"].decode().splitlines()[1:]]
    return [(row[0], row[1], row[4]) for row in rows]


def assert_same_bundles(run_dir: Path, reference: Path) -> None:
    ours, theirs = bundles(run_dir), bundles(reference)
    assert sorted(ours) == sorted(theirs) and len(ours) == 2
    for name, members in ours.items():
        assert sorted(members) == sorted(theirs[name]), name
        assert manifest_outcomes(members) == manifest_outcomes(theirs[name]), name
        same = [m for m in members if m in SAME_FILES or m.startswith(SAME_FOLDERS)]
        assert len(same) >= len(SAME_FILES) + 2
        assert {m: members[m] for m in same} == {m: theirs[name][m] for m in same}, name
    statuses = {iid: n["status"] for iid, n in state_of(run_dir)["nodes"].items()}
    assert statuses == {iid: n["status"] for iid, n in state_of(reference)["nodes"].items()}


def assert_no_secret_in(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json"):
            text = path.read_text(errors="replace")
            assert "Signature=" not in text and "X-Amz-Credential=" not in text, path


# -- whole collections -------------------------------------------------------------------------

def test_a_slurm_collection_over_ssh_gives_the_same_tarballs_as_over_ssm(cluster, over_ssm, tmp_path):
    _, status, env = cluster
    result = invoke(env, tmp_path, "collect", *COLLECT, "--transport", "ssh", "--ssh-config", status["ssh"]["config"])
    assert result.returncode == 0, result.stderr
    assert "sessions via ssh" in result.stderr
    run_dir = tmp_path / status["cluster"] / "latest"
    assert_same_bundles(run_dir, over_ssm)
    for worker in status["nodes"]:
        transcript = (run_dir / "transcripts" / f"{worker['instance_id']}.log").read_text()
        assert transcript.startswith(f"# ssh root@{worker['ip']}:{status['ssh']['port']}\n")
        assert "HPC_RESULT status=ok" in transcript
    assert_no_secret_in(run_dir)


def test_with_the_sagemaker_api_out_of_reach_the_nodes_are_read_on_the_head_node(cluster, over_ssm, tmp_path):
    """The SageMaker endpoint is a closed loopback port: discovery falls back to sinfo (real Slurm) and
    resource_config.json on the head node, over real SSH, and the collection is the same as over SSM."""
    _, status, env = cluster
    head = node(status, "controller-machine")
    unreachable = dict(env, AWS_ENDPOINT_URL_SAGEMAKER=f"http://127.0.0.1:{closed_port()}")
    result = invoke(unreachable, tmp_path, "collect", *COLLECT, "--transport", "ssh",
                    "--ssh-config", status["ssh"]["config"], "--gateway", head["ip"])
    assert result.returncode == 0, result.stderr
    assert "the SageMaker API cannot be reached" in result.stderr
    run_dir = tmp_path / status["cluster"] / "latest"
    state = state_of(run_dir)
    assert state["cluster"]["discovered_from"].startswith(f"head node {head['ip']} (sinfo")
    assert (state["cluster"]["id"], state["cluster"]["type"]) == (status["cluster_id"], "slurm")
    found = {iid: (n["group"], n["ip"], n["hostname"]) for iid, n in state["nodes"].items()}
    assert found == {n["instance_id"]: (n["group"], n["ip"], n["hostname"]) for n in status["nodes"]}
    assert state["nodes"][node(status, "worker-group-1")["instance_id"]]["slurm_state"] == "idle"
    assert_same_bundles(run_dir, over_ssm)


def test_through_the_controller_with_tarballs_pulled_back_over_sftp(cluster, over_ssm, tmp_path):
    """Nodes that cannot reach S3: the script is pushed and each tarball comes back over SSH. Every
    SSH setting comes from flags; an empty ssh config keeps this machine's own out of it."""
    _, status, env = cluster
    ssh = status["ssh"]
    empty_config = tmp_path / "ssh_config"
    empty_config.write_text("")
    result = invoke(env, tmp_path, "collect", *COLLECT, "--transport", "ssh", "--gateway", "controller",
                    "--ssh-data-path", "sftp", "--ssh-config", str(empty_config),
                    "--ssh-user", ssh["user"], "--ssh-key", ssh["key"], "--ssh-port", str(ssh["port"]),
                    "--ssh-known-hosts-file", ssh["known_hosts"])
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / status["cluster"] / "latest"
    assert_same_bundles(run_dir, over_ssm)
    for worker in status["nodes"]:
        transcript = (run_dir / "transcripts" / f"{worker['instance_id']}.log").read_text()
        assert transcript.startswith(f"# ssh root@{worker['ip']}:{ssh['port']} through controller\n")
        assert "# pulled " in transcript
        left = subprocess.run(["ssh", "-F", ssh["config"], worker["ip"], "ls -d /tmp/hpc-run.* 2>/dev/null"],
                              capture_output=True, text=True, timeout=30)
        assert left.stdout == "", "the node's private folder is removed once its tarball is pulled"
    assert all(n["s3_key"] for n in state_of(run_dir)["nodes"].values())  # stored in S3 for the later stages
    assert_no_secret_in(run_dir)


# -- single steps, with a tiny node script -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_script_url(cluster):
    _, status, env = cluster
    return served_script(status, env, "tiny.sh", TINY_SCRIPT)


def transport(status: dict, timeouts: Timeouts = Timeouts(session_prompt=10), gateway: Gateway | None = None,
              **options) -> SshTransport:
    ssh = status["ssh"]
    defaults = dict(user=ssh["user"], key=ssh["key"], port=ssh["port"], config_path="/dev/null",
                    known_hosts_file=ssh["known_hosts"])
    addresses = {n["instance_id"]: n["ip"] for n in status["nodes"]}
    return SshTransport(SshOptions(**{**defaults, **options}), addresses, timeouts, gateway=gateway)


def run_job(ssh_transport: SshTransport, target: dict, url: str, tmp_path: Path, detached: bool = False,
            cancel: threading.Event | None = None):
    job = NodeJob(target["instance_id"], "", {"INSTANCE_ID": target["instance_id"]}, {"HPC_SCRIPT_URL": url},
                  tmp_path / "transcripts" / f"{target['instance_id']}.log", detached=detached)
    try:
        return ssh_transport.run(job, cancel or threading.Event())
    finally:
        ssh_transport.close()


def wrong_known_hosts(tmp_path: Path, status: dict, target: dict, other: dict) -> Path:
    """A known_hosts that claims `target` has `other`'s host key."""
    path = tmp_path / "wrong_known_hosts"
    other_key = status["ssh"]["nodes"][other["instance_id"]]["host_key"]
    path.write_text(f"[{target['ip']}]:{status['ssh']['port']} {other_key}\n")
    return path


def test_the_node_script_runs_as_root_on_the_node_and_its_result_line_is_read(cluster, tiny_script_url, tmp_path):
    _, status, _ = cluster
    worker = node(status, "worker-group-1")
    result = run_job(transport(status), worker, tiny_script_url, tmp_path)
    assert (result.kind, result.rc) == (SESSION_OK, 0), result
    assert (result.result["host"], result.result["user"]) == (worker["hostname"], "root")
    transcript = (tmp_path / "transcripts" / f"{worker['instance_id']}.log").read_text()
    assert "X-Amz-Signature" not in transcript and tiny_script_url not in transcript


def test_detached_launch_returns_once_the_script_runs_on_its_own(cluster, tiny_script_url, tmp_path):
    _, status, _ = cluster
    result = run_job(transport(status), node(status, "worker-group-1"), tiny_script_url, tmp_path, detached=True)
    # Still running when the launch checks (its pid), or already ended well (rc 0): launched either way.
    assert result.kind == SESSION_LAUNCHED and (result.pid or result.rc == 0), result


def test_a_wrong_host_key_is_refused_unless_the_policy_allows_it(cluster, tiny_script_url, tmp_path):
    _, status, _ = cluster
    head, worker = node(status, "controller-machine"), node(status, "worker-group-1")
    wrong = wrong_known_hosts(tmp_path, status, head, worker)
    for policy in ("strict", "accept-new"):
        refused = run_job(transport(status, policy=policy, known_hosts_file=str(wrong)), head, tiny_script_url,
                          tmp_path)
        assert (refused.kind, refused.step) == (SESSION_UNREACHABLE, "connect"), policy
        assert "host key refused" in refused.error
        assert status["ssh"]["nodes"][head["instance_id"]]["fingerprint"] in refused.error
        assert status["ssh"]["nodes"][worker["instance_id"]]["fingerprint"] in refused.error
    allowed = run_job(transport(status, policy="off", known_hosts_file=str(wrong)), head, tiny_script_url, tmp_path)
    assert (allowed.kind, allowed.result["host"]) == (SESSION_OK, head["hostname"])


def test_an_unknown_host_key_is_refused_when_strict_and_learned_with_accept_new(cluster, tiny_script_url, tmp_path):
    _, status, _ = cluster
    head = node(status, "controller-machine")
    known_hosts = tmp_path / "ssh" / "known_hosts"
    refused = run_job(transport(status, policy="strict", known_hosts_file=str(known_hosts)), head, tiny_script_url,
                      tmp_path)
    assert refused.kind == SESSION_UNREACHABLE and "not in known_hosts" in refused.error
    learned = run_job(transport(status, policy="accept-new", known_hosts_file=str(known_hosts)), head,
                      tiny_script_url, tmp_path)
    assert learned.kind == SESSION_OK
    assert known_hosts.read_text() == (f"[{head['ip']}]:{status['ssh']['port']} "
                                       f"{status['ssh']['nodes'][head['instance_id']]['host_key']}\n")
    again = run_job(transport(status, policy="strict", known_hosts_file=str(known_hosts)), head, tiny_script_url,
                    tmp_path)
    assert again.kind == SESSION_OK


def test_a_script_that_outlives_its_budget_is_a_timeout_at_the_script_step(cluster, tmp_path):
    _, status, env = cluster
    url = served_script(status, env, "sleep-60.sh", "sleep 60\n")
    result = run_job(transport(status, Timeouts(session_prompt=10, node_script=2)), node(status, "worker-group-1"),
                     url, tmp_path)
    assert (result.kind, result.step) == (SESSION_TIMEOUT, "script"), result


def test_ctrl_c_ends_the_node_script_with_its_connection(cluster, tmp_path):
    _, status, env = cluster
    worker = node(status, "worker-group-1")
    url = served_script(status, env, "sleep-marked.sh", "echo started; exec sleep 4242\n")
    cancel = threading.Event()
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_job(transport(status), worker, url, tmp_path,
                                                                           cancel=cancel)))
    runner.start()
    transcript = tmp_path / "transcripts" / f"{worker['instance_id']}.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "started" not in (transcript.read_text() if transcript.exists() else ""):
        time.sleep(0.1)
    cancel.set()
    runner.join(timeout=30)
    assert outcome["result"].kind == SESSION_INTERRUPTED
    # The pty's hangup ends the script on the node, as closing an SSM session does.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and remote(status, worker, "pgrep -f 'slee[p] 4242'").stdout:
        time.sleep(0.2)
    assert remote(status, worker, "pgrep -f 'slee[p] 4242'").stdout == ""


def ssm_gateway(status: dict, env: dict, monkeypatch, port: int) -> Gateway:
    """The head node as jump host, reached by the real AWS CLI through an AWS-StartSSHSession session."""
    for name, value in env.items():  # the proxy's AWS CLI runs with our environment, as under `invoke`
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE")
    head = node(status, "controller-machine")
    target = f"sagemaker-cluster:{status['cluster_id']}_{head['group']}-{head['instance_id']}"
    return Gateway("controller", head["ip"], proxy_command=ssm_proxy_command(target, port, status["region"], None))


def test_a_jump_host_reached_by_ssm_carries_the_node_session(cluster, tiny_script_url, tmp_path, monkeypatch):
    _, status, env = cluster
    worker = node(status, "worker-group-1")
    gateway = ssm_gateway(status, env, monkeypatch, status["ssh"]["port"])
    result = run_job(transport(status, gateway=gateway), worker, tiny_script_url, tmp_path)
    assert (result.kind, result.rc) == (SESSION_OK, 0), result
    assert (result.result["host"], result.result["user"]) == (worker["hostname"], "root")


def test_a_jump_host_port_that_ssm_cannot_reach_fails_the_gateway_step_in_one_line(cluster, tiny_script_url,
                                                                                   tmp_path, monkeypatch):
    _, status, env = cluster
    gateway = ssm_gateway(status, env, monkeypatch, port=9)  # nothing listens on the discard port
    result = run_job(transport(status, gateway=gateway), node(status, "worker-group-1"), tiny_script_url, tmp_path)
    assert (result.kind, result.step) == (SESSION_START_FAILED, "gateway"), result
    assert result.error.startswith("jump host controller through SSM: ") and "port 9" in result.error
    assert "\n" not in result.error


# Last: it stops the worker's sshd for good.
def test_a_stopped_sshd_and_a_refused_host_key_are_recorded_as_unreachable(cluster, tiny_script_url, tmp_path):
    sandbox, status, env = cluster
    head, worker = node(status, "controller-machine"), node(status, "worker-group-1")
    assert stop_node_sshd(sandbox.root, worker["instance_id"]) == []
    wrong = wrong_known_hosts(tmp_path, status, head, worker)
    result = invoke(env, tmp_path, "collect", "--transport", "ssh", "--ssh-config", status["ssh"]["config"],
                    "--ssh-known-hosts-file", str(wrong))
    assert result.returncode == 1, result.stderr
    records = state_of(tmp_path / status["cluster"] / "latest")["nodes"]
    for target, words in ((worker, "connection refused"), (head, "host key refused")):
        record = records[target["instance_id"]]
        assert (record["status"], record["error_kind"], record["attempts"]) == ("unreachable", "unreachable", 1)
        assert words in record["error"] and target["ip"] in record["error"]
    # Through the head node, the jump host says it cannot connect.
    via_head = run_job(transport(status, gateway=Gateway("controller", head["ip"])), worker, tiny_script_url, tmp_path)
    assert via_head.kind == SESSION_UNREACHABLE
    assert "jump host controller could not connect" in via_head.error and "Connect failed" in via_head.error


def served_script(status: dict, env: dict, name: str, text: str) -> str:
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=botocore.config.Config(signature_version="s3v4"))  # S3 refuses SigV2 URLs
    key = f"ssh-transport-tests/{name}"
    s3.put_object(Bucket=status["bucket"], Key=key, Body=text.encode())
    return s3.generate_presigned_url("get_object", Params={"Bucket": status["bucket"], "Key": key}, ExpiresIn=3600)


def remote(status: dict, target: dict, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", status["ssh"]["config"], target["ip"], command], capture_output=True,
                          text=True, timeout=30)
