"""Nodes: HyperPod instances as EKS sees them, with their labels, conditions, taints and leases."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from collectors.sandbox.kube.meta import Clock, k8s_time, owner_reference, stable_uid

KUBELET_VERSION = "v1.32.3-eks-473151a"
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
DEEP_HEALTH_LABEL = "sagemaker.amazonaws.com/deep-health-check-status"
# instance type -> (vCPUs, memory GiB, NVIDIA GPUs, EFA interfaces, Neuron devices)
INSTANCE_TYPES = {
    "ml.p5.48xlarge": (192, 2048, 8, 32, 0),
    "ml.p5e.48xlarge": (192, 2048, 8, 32, 0),
    "ml.p5en.48xlarge": (192, 2048, 8, 16, 0),
    "ml.p4d.24xlarge": (96, 1152, 8, 4, 0),
    "ml.p4de.24xlarge": (96, 1152, 8, 4, 0),
    "ml.g5.xlarge": (4, 16, 1, 0, 0),
    "ml.g5.2xlarge": (8, 32, 1, 0, 0),
    "ml.g5.4xlarge": (16, 64, 1, 0, 0),
    "ml.g5.8xlarge": (32, 128, 1, 1, 0),
    "ml.g5.12xlarge": (48, 192, 4, 0, 0),
    "ml.g5.16xlarge": (64, 256, 1, 1, 0),
    "ml.g5.24xlarge": (96, 384, 4, 1, 0),
    "ml.g5.48xlarge": (192, 768, 8, 1, 0),
    "ml.trn1.32xlarge": (128, 512, 0, 8, 16),
    "ml.m5.xlarge": (4, 16, 0, 0, 0),
    "ml.m5.2xlarge": (8, 32, 0, 0, 0),
    "ml.m5.4xlarge": (16, 64, 0, 0, 0),
    "ml.m5.12xlarge": (48, 192, 0, 0, 0),
    "ml.c5.xlarge": (4, 8, 0, 0, 0),
    "ml.c5.4xlarge": (16, 32, 0, 0, 0),
    "ml.t3.medium": (2, 4, 0, 0, 0),
}
UNKNOWN_INSTANCE_TYPE = (8, 32, 0, 0, 0)
MAX_PODS = 110


def node_name(instance_id: str) -> str:
    return f"hyperpod-{instance_id}"


def node_scenario(node: dict) -> dict:
    """The scenario's settings for this node; absent for sandboxes started from flags."""
    return node.get("scenario") or {}


def node_kubernetes(node: dict) -> dict:
    return node_scenario(node).get("kubernetes") or {}


def hyperpod_status(node: dict) -> str:
    return node_scenario(node).get("status") or node.get("status") or "Running"


def is_sick(node: dict) -> bool:
    """A node the scenario made unhealthy in any way; sick clusters get a crashing training pod."""
    kubernetes = node_kubernetes(node)
    labels = kubernetes.get("labels") or {}
    return (kubernetes.get("ready") is False or labels.get(HEALTH_LABEL, "Schedulable") != "Schedulable"
            or hyperpod_status(node) != "Running" or node_scenario(node).get("fixture", "healthy") != "healthy")


def capacity(instance_type: str) -> dict[str, str]:
    cpus, memory_gib, gpus, efa, neuron = INSTANCE_TYPES.get(instance_type, UNKNOWN_INSTANCE_TYPE)
    values = {"cpu": str(cpus), "memory": f"{memory_gib * 1024 * 1024}Ki", "pods": str(MAX_PODS),
              "ephemeral-storage": f"{500 * 1024 * 1024}Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
    for resource, count in (("nvidia.com/gpu", gpus), ("vpc.amazonaws.com/efa", efa), ("aws.amazon.com/neuron", neuron)):
        if count:
            values[resource] = str(count)
    return values


def allocatable(instance_type: str) -> dict[str, str]:
    """EKS reserves CPU by a sliding scale and memory by max pods, as its bootstrap does."""
    cpus, memory_gib, *_ = INSTANCE_TYPES.get(instance_type, UNKNOWN_INSTANCE_TYPE)
    reserved_cpu_m = 60 + (10 if cpus > 1 else 0) + 5 * min(max(cpus - 2, 0), 2) + int(2.5 * max(cpus - 4, 0))
    reserved_memory_ki = (255 + 11 * MAX_PODS + 100) * 1024
    values = capacity(instance_type)
    values["cpu"] = f"{cpus * 1000 - reserved_cpu_m}m"
    values["memory"] = f"{memory_gib * 1024 * 1024 - reserved_memory_ki}Ki"
    values["ephemeral-storage"] = str(int(500 * 1024 ** 3 * 0.9))
    return values


# HyperPod node status -> (node-health-status, deep-health-check-status) HyperPod sets for it.
HEALTH_BY_STATUS = {
    "DeepHealthCheckInProgress": ("Unschedulable", "InProgress"),
    "SystemUpdating": ("Unschedulable", "Passed"),
    "Failure": ("UnschedulablePendingReplacement", "Passed"),
}


def node_labels(node: dict, cluster: dict) -> dict[str, str]:
    name = node_name(node["instance_id"])
    _, _, gpus, efa, _ = INSTANCE_TYPES.get(node["instance_type"], UNKNOWN_INSTANCE_TYPE)
    health, deep_health = HEALTH_BY_STATUS.get(hyperpod_status(node), ("Schedulable", "Passed"))
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": node["instance_type"],
        "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": node["instance_type"],
        "topology.kubernetes.io/region": cluster["region"], "topology.kubernetes.io/zone": f"{cluster['region']}a",
        "sagemaker.amazonaws.com/cluster-name": cluster["cluster"],
        "sagemaker.amazonaws.com/compute-type": "hyperpod",
        "sagemaker.amazonaws.com/instance-group-name": node["group"],
        HEALTH_LABEL: health,
        DEEP_HEALTH_LABEL: deep_health,
    }
    if gpus:
        labels["nvidia.com/gpu.present"] = "true"
    if efa:
        labels["vpc.amazonaws.com/efa.present"] = "true"
    labels.update(node_kubernetes(node).get("labels") or {})
    return {key: str(value) for key, value in labels.items() if value is not None}


def node_conditions(ready: bool, since: str, heartbeat: str) -> list[dict]:
    pressure = [
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ]
    unknown = {"status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}
    conditions = []
    for kind, reason, message in pressure:
        fields = {"status": "False", "reason": reason, "message": message} if ready else unknown
        conditions.append({"type": kind, **fields, "lastHeartbeatTime": heartbeat, "lastTransitionTime": since})
    ready_fields = ({"status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
                    if ready else unknown)
    conditions.append({"type": "Ready", **ready_fields, "lastHeartbeatTime": heartbeat, "lastTransitionTime": since})
    return conditions


def node_taints(ready: bool, labels: dict[str, str], since: str) -> list[dict]:
    taints = []
    health = labels.get(HEALTH_LABEL, "Schedulable")
    if health != "Schedulable":
        taints.append({"key": HEALTH_LABEL, "value": health, "effect": "NoSchedule"})
        taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": since})
    if not ready:
        taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": since})
        taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": since})
    return taints


def build_node(node: dict, cluster: dict, clock: Clock) -> dict:
    name = node_name(node["instance_id"])
    ready = node_kubernetes(node).get("ready", True) is not False
    labels = node_labels(node, cluster)
    fqdn = f"{node['hostname']}.{cluster['region']}.compute.internal"
    heartbeat = k8s_time(clock.now - timedelta(seconds=20 if ready else 1800))
    node_object = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": stable_uid("node", name), "creationTimestamp": clock.node_boot, "labels": labels,
            "annotations": {"alpha.kubernetes.io/provided-node-ip": node["ip"], "node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        # HyperPod cordons a node it does not call Schedulable.
        "spec": {"unschedulable": labels[HEALTH_LABEL] != "Schedulable",
                 "taints": node_taints(ready, labels, clock.node_ready)},
        "status": {
            "capacity": capacity(node["instance_type"]),
            "allocatable": allocatable(node["instance_type"]),
            "conditions": node_conditions(ready, clock.node_ready, heartbeat),
            "addresses": [{"type": "InternalIP", "address": node["ip"]}, {"type": "InternalDNS", "address": fqdn},
                          {"type": "Hostname", "address": fqdn}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": hashlib.md5(name.encode()).hexdigest(), "systemUUID": stable_uid("system", name).upper(),
                "bootID": stable_uid("boot", name), "kernelVersion": "6.1.119-129.201.amzn2023.x86_64",
                "osImage": "Amazon Linux 2023.6.20250107", "containerRuntimeVersion": "containerd://1.7.25",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    }
    return node_object


def node_is_ready(node_object: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node_object["status"].get("conditions", []))


def node_lease(node_object: dict, clock: Clock) -> dict:
    name = node_object["metadata"]["name"]
    renewed = clock.now - timedelta(seconds=8 if node_is_ready(node_object) else 1800)
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease", "uid": stable_uid("lease", name),
                     "creationTimestamp": clock.node_boot,
                     "ownerReferences": [owner_reference(node_object)]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    }
