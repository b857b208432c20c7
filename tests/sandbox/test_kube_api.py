"""The sandbox's Kubernetes API server, in process: the cluster it builds and the answers kubectl gets."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from collectors.sandbox.kube.api import KubeApi
from collectors.sandbox.kube.cluster import build_cluster
from collectors.sandbox.kube.meta import Clock, human_duration
from collectors.sandbox.kube.nodes import HEALTH_LABEL, node_is_ready

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def sandbox_status(sick: bool) -> dict:
    nodes = []
    for index, instance_type in enumerate(["ml.m5.xlarge", "ml.p5.48xlarge", "ml.p5.48xlarge", "ml.g5.8xlarge"]):
        nodes.append({"instance_id": f"i-0{index:016x}", "group": f"group-{index % 2}", "instance_type": instance_type,
                      "hostname": f"ip-127-10-0-{10 + index}", "ip": f"127.10.0.{10 + index}", "status": "Running"})
    if sick:
        nodes[2]["scenario"] = {"kubernetes": {"ready": False, "labels": {HEALTH_LABEL: "UnschedulablePendingReboot"}}}
    return {"cluster": "hp", "region": "us-west-2", "nodes": nodes}


@pytest.fixture(scope="module")
def sick_api() -> KubeApi:
    return KubeApi(build_cluster(sandbox_status(sick=True), Clock(datetime.now(timezone.utc))))


@pytest.fixture(scope="module")
def healthy_api() -> KubeApi:
    return KubeApi(build_cluster(sandbox_status(sick=False), Clock(datetime.now(timezone.utc))))


def items(api: KubeApi, path: str, **params: str) -> list[dict]:
    status, body = api.get(path, params, "application/json")
    assert status == 200, body
    return body["items"]


def test_nodes_are_hyperpod_nodes_with_the_scenario_labels_and_readiness(sick_api):
    nodes = {n["metadata"]["name"]: n for n in items(sick_api, "/api/v1/nodes")}
    sick = nodes["hyperpod-i-00000000000000002"]
    assert sick["metadata"]["labels"][HEALTH_LABEL] == "UnschedulablePendingReboot"
    assert sick["spec"]["unschedulable"] is True and not node_is_ready(sick)
    healthy = nodes["hyperpod-i-00000000000000001"]
    assert healthy["metadata"]["labels"][HEALTH_LABEL] == "Schedulable"
    assert healthy["metadata"]["labels"]["sagemaker.amazonaws.com/deep-health-check-status"] == "Passed"
    assert healthy["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in nodes["hyperpod-i-00000000000000000"]["status"]["capacity"]
    assert {"type": "InternalIP", "address": "127.10.0.11"} in healthy["status"]["addresses"]


def test_every_pod_address_is_on_loopback(sick_api):
    for pod in items(sick_api, "/api/v1/pods"):
        assert pod["status"]["podIP"].startswith("127."), pod["metadata"]["name"]


def test_system_pods_run_per_node_and_gpu_plugins_only_on_gpu_nodes(healthy_api):
    pods = items(healthy_api, "/api/v1/namespaces/kube-system/pods")
    per_daemonset = {}
    for pod in pods:
        owner = pod["metadata"]["ownerReferences"][0]
        per_daemonset.setdefault(owner["name"], set()).add(pod["spec"]["nodeName"])
    assert len(per_daemonset["aws-node"]) == len(per_daemonset["kube-proxy"]) == 4
    assert len(per_daemonset["nvidia-device-plugin-daemonset"]) == 3


def test_a_sick_cluster_has_a_crash_looping_oom_killed_training_pod_and_a_healthy_one_has_none(sick_api, healthy_api):
    def crashing(api):
        return [p for p in items(api, "/api/v1/namespaces/training/pods")
                if p["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"]

    [pod] = crashing(sick_api)
    assert pod["spec"]["nodeName"] == "hyperpod-i-00000000000000002"
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert crashing(healthy_api) == []
    status, table = sick_api.get("/api/v1/pods", {}, TABLE)
    row = next(r for r in table["rows"] if r["cells"][0] == pod["metadata"]["name"])
    assert row["cells"][1:3] == ["0/1", "CrashLoopBackOff"] and row["cells"][3].startswith("14 (")


def test_secrets_have_key_names_and_never_a_value(sick_api):
    secrets = items(sick_api, "/api/v1/secrets")
    assert {s["metadata"]["name"] for s in secrets} >= {"hf-token", "wandb-api-key", "mlflow-db-credentials"}
    for secret in secrets:
        assert set(secret["data"].values()) == {""} and "stringData" not in secret


def test_tables_have_wide_columns_and_metadata_only_rows_by_default(sick_api):
    status, table = sick_api.get("/api/v1/nodes", {}, TABLE)
    assert table["kind"] == "Table"
    wide = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 1]
    assert wide == ["Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    statuses = {row["cells"][0]: row["cells"][1] for row in table["rows"]}
    assert statuses["hyperpod-i-00000000000000002"] == "NotReady,SchedulingDisabled"
    status, secrets = sick_api.get("/api/v1/secrets", {}, TABLE)
    assert all("data" not in row["object"] for row in secrets["rows"])
    status, events = sick_api.get("/api/v1/events", {"includeObject": "Object"}, TABLE)
    assert events["rows"][0]["object"]["kind"] == "Event"


def test_field_and_label_selectors_as_describe_uses_them(sick_api):
    node = "hyperpod-i-00000000000000002"
    on_node = items(sick_api, "/api/v1/pods",
                    fieldSelector=f"spec.nodeName={node},status.phase!=Failed,status.phase!=Succeeded")
    assert on_node and {p["spec"]["nodeName"] for p in on_node} == {node}
    node_events = items(sick_api, "/api/v1/events",
                        fieldSelector=f"involvedObject.kind=Node,involvedObject.name={node},involvedObject.uid={node}")
    assert {e["reason"] for e in node_events} >= {"Starting", "NodeNotSchedulable"}
    dns = items(sick_api, "/api/v1/pods", labelSelector="k8s-app in (kube-dns),!job-name")
    assert len(dns) == 2 and all(p["metadata"]["name"].startswith("coredns-") for p in dns)


def test_lists_come_in_pages_that_add_up(healthy_api):
    every = items(healthy_api, "/api/v1/pods")
    seen, token = [], ""
    while True:
        status, body = healthy_api.get("/api/v1/pods", {"limit": "7", "continue": token}, "application/json")
        seen += body["items"]
        token = body["metadata"].get("continue", "")
        if not token:
            break
    assert [p["metadata"]["uid"] for p in seen] == [p["metadata"]["uid"] for p in every] and len(every) > 7


def test_discovery_lists_the_custom_resources_and_unknown_paths_are_status_404(healthy_api):
    status, groups = healthy_api.get("/apis", {}, "application/json")
    assert {"kubeflow.org", "sagemaker.amazonaws.com", "apps"} <= {g["name"] for g in groups["groups"]}
    status, resources = healthy_api.get("/apis/kubeflow.org/v1", {}, "application/json")
    assert [r["name"] for r in resources["resources"]] == ["pytorchjobs"]
    status, body = healthy_api.get("/api/v1/namespaces/training/pods/nope", {}, "application/json")
    assert status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    status, body = healthy_api.get("/apis/example.com/v1/widgets", {}, "application/json")
    assert status == 404 and body["kind"] == "Status"


def test_hyperpod_status_sets_the_label_defaults_and_pending_nodes_have_not_joined():
    status = sandbox_status(sick=False)
    for node, hyperpod in zip(status["nodes"], ["Pending", "DeepHealthCheckInProgress", "Failure", "Running"]):
        node["scenario"] = {"status": hyperpod}
    status["nodes"][2]["scenario"]["kubernetes"] = {"labels": {"sagemaker.amazonaws.com/fault-type": "GpuFault"}}
    api = KubeApi(build_cluster(status, Clock(datetime.now(timezone.utc))))
    nodes = {n["metadata"]["name"]: n for n in items(api, "/api/v1/nodes")}
    assert "hyperpod-i-00000000000000000" not in nodes
    in_check = nodes["hyperpod-i-00000000000000001"]
    assert in_check["metadata"]["labels"][HEALTH_LABEL] == "Unschedulable"
    assert in_check["metadata"]["labels"]["sagemaker.amazonaws.com/deep-health-check-status"] == "InProgress"
    failed = nodes["hyperpod-i-00000000000000002"]
    assert failed["metadata"]["labels"][HEALTH_LABEL] == "UnschedulablePendingReplacement"
    assert failed["metadata"]["labels"]["sagemaker.amazonaws.com/fault-type"] == "GpuFault"
    assert failed["spec"]["unschedulable"] and {"key": HEALTH_LABEL, "value": "UnschedulablePendingReplacement",
                                                "effect": "NoSchedule"} in failed["spec"]["taints"]
    assert not nodes["hyperpod-i-00000000000000003"]["spec"]["unschedulable"]


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
                                           (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"), (20 * 86400, "20d")])
def test_ages_read_like_kubectls(seconds, text):
    assert human_duration(seconds) == text
