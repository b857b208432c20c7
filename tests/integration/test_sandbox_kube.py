"""The sandbox's Kubernetes API server with the real kubectl client (issue 3 item 6)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from collectors.loopback import is_loopback_url
from collectors.sandbox import SandboxSpec, sandbox_client
from collectors.sandbox.nodes import is_same_process, read_process_record
from tests.conftest import require_tool

HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    require_tool("kubectl", "kubectl")
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=3))
    sick = f"hyperpod-{status['nodes'][2]['instance_id']}"
    post(status, "/_emu/kube/node-labels", {"node": sick, "labels": {HEALTH_LABEL: "UnschedulablePendingReboot"}})
    return sandbox, status, env


def post(status: dict, path: str, body: dict) -> dict:
    request = urllib.request.Request(status["kubernetes"]["endpoint"] + path, data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
        return json.loads(answer.read())


def kubectl(env: dict, tmp_path: Path, *args: str) -> str:
    # A HOME of its own: nothing from the caller's ~/.kube is read.
    full_env = dict(os.environ, **env, HOME=str(tmp_path))
    result = subprocess.run(["kubectl", *args], env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubeconfig_names_the_eks_cluster_by_arn_and_points_at_loopback(cluster, tmp_path):
    sandbox, status, env = cluster
    sagemaker = sandbox_client("sagemaker", status["endpoint"], status["region"], sandbox.root)
    eks_arn = sagemaker.describe_cluster(ClusterName=status["cluster"])["Orchestrator"]["Eks"]["ClusterArn"]
    config = json.loads(kubectl(env, tmp_path, "config", "view", "-o", "json"))
    assert config["current-context"] == eks_arn == status["kubernetes"]["context"]
    assert [c["name"] for c in config["clusters"]] == [eks_arn]
    assert is_loopback_url(config["clusters"][0]["cluster"]["server"])


def test_get_nodes_shows_every_node_with_hyperpod_labels(cluster, tmp_path):
    sandbox, status, env = cluster
    wide = kubectl(env, tmp_path, "get", "nodes", "-o", "wide")
    assert wide.splitlines()[0].split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    for node in status["nodes"]:
        row = next(line for line in wide.splitlines() if line.startswith(f"hyperpod-{node['instance_id']} "))
        assert node["ip"] in row
    labelled = kubectl(env, tmp_path, "get", "nodes", "-L", HEALTH_LABEL)
    rows = {line.split()[0]: line.split() for line in labelled.splitlines()[1:]}
    sick = rows[f"hyperpod-{status['nodes'][2]['instance_id']}"]
    assert sick[1] == "Ready,SchedulingDisabled" and sick[-1] == "UnschedulablePendingReboot"
    assert rows[f"hyperpod-{status['nodes'][0]['instance_id']}"][-1] == "Schedulable"


def test_describe_pods_and_events_give_real_output(cluster, tmp_path):
    sandbox, status, env = cluster
    described = kubectl(env, tmp_path, "describe", "pods", "-A")
    first_node = f"hyperpod-{status['nodes'][0]['instance_id']}"
    assert re.search(r"^Name:\s+aws-node-", described, re.M) and re.search(rf"^Node:\s+{first_node}/", described, re.M)
    assert re.search(r"^Controlled By:\s+DaemonSet/aws-node", described, re.M) and "Conditions:" in described
    events = kubectl(env, tmp_path, "get", "events", "-A", "--sort-by=.lastTimestamp")
    assert events.splitlines()[0].split()[:4] == ["NAMESPACE", "LAST", "SEEN", "TYPE"]
    assert f"node/{first_node}" in events and "Successfully assigned training/" in events


def test_secret_values_are_never_served(cluster, tmp_path):
    sandbox, status, env = cluster
    secrets = json.loads(kubectl(env, tmp_path, "get", "secrets", "-A", "-o", "json"))["items"]
    assert {s["metadata"]["name"] for s in secrets} >= {"hf-token", "mlflow-db-credentials"}
    assert all(set(s["data"].values()) == {""} for s in secrets)
    table = kubectl(env, tmp_path, "get", "secrets", "-n", "training", "-o", "wide")
    assert ["mlflow-db-credentials", "Opaque", "2"] in [line.split()[:3] for line in table.splitlines()]


def test_the_api_server_is_stopped_by_pid_at_down(sandbox_factory):
    require_tool("kubectl", "kubectl")
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=1))
    identity = read_process_record(sandbox.root / "kube")["server"]
    assert identity[0] == status["kubernetes"]["pid"] and is_same_process(*identity)
    sandbox.down()
    assert not is_same_process(*identity) and not sandbox.root.exists()
