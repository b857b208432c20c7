"""The sandbox's Kubernetes API server: what real kubectl needs, on 127.0.0.1, for EKS sandboxes.

`start_kube(root, status)` starts it as its own process (recorded by PID and start time in
ROOT/kube/process.json) and writes ROOT/kube/kubeconfig, whose cluster, user and context are all
named by the EKS cluster's ARN, as `aws eks update-kubeconfig` names them; `stop_kube(root)` stops it.

The cluster it serves is built once from the sandbox status (nodes, and each node's scenario
settings: `status`, `fixture`, `kubernetes: {ready, labels}`; docs/scenarios.md) and the manifests in
fixtures/kube/cluster.yaml: nodes named `hyperpod-<instance-id>` with HyperPod's labels, the pods of
every workload placed on those nodes, events, leases, and the HyperPod/Kubeflow custom resources.
HyperPod's node status sets the labels' defaults, as HyperPod would (a scenario's labels win):
DeepHealthCheckInProgress -> Unschedulable with deep-health-check InProgress, SystemUpdating ->
Unschedulable, Failure -> UnschedulablePendingReplacement; a Pending node has not joined the cluster
yet, so it has no Node. A node labelled anything but Schedulable is cordoned (tainted, unschedulable).
When any node is sick (not ready, not Schedulable, not Running, or a fixture other than healthy), the
training job's worker on the first sick GPU node crash-loops, OOMKilled.

What kubectl gets: legacy discovery (kubectl falls back to it from aggregated discovery), list and get
with `limit`/`continue` pages, label and field selectors, and server-side Tables (per-kind columns,
priority 1 for `-o wide`, rows carrying PartialObjectMetadata or, with includeObject=Object, the full
object). Read only: GET alone, no watch.

Secrets: the sandbox never holds a secret value. A Secret has its key names with empty values; that
is all `kubectl get secret -o json` could ever show here.

Test hooks under /_emu/kube/ (loopback only, like everything here): `requests` (GET: every request
seen, DELETE: forget them), `delay` (POST {"path_contains", "seconds"}: answers to matching paths wait
that long, as a hung API server would; seconds 0 disarms).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import yaml

from collectors.sandbox.nodes import (
    kill_if_same,
    process_identity,
    read_process_record,
    record_process,
    wait_until_gone,
)

FIXTURE = Path(__file__).with_name("fixtures") / "kube" / "cluster.yaml"
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.3-eks-4096722", "gitCommit": "4096722b0bd5b3e9ee09b5fe8a5b9b2c6d6dfe0a",
    "gitTreeState": "clean", "buildDate": "2026-10-15T00:00:00Z", "goVersion": "go1.23.6", "compiler": "gc",
    "platform": "linux/amd64",
}
KUBELET_VERSION = "v1.32.3-eks-473151a"
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
DEEP_HEALTH_LABEL = "sagemaker.amazonaws.com/deep-health-check-status"


def kube_dir(root: Path) -> Path:
    return Path(root) / "kube"


# ---------------------------------------------------------------------------------------------
# What the server offers: the resource catalog behind discovery


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1" for the core group
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def discovery_entry(self) -> dict:
        entry = {"name": self.plural, "singularName": self.kind.lower(), "namespaced": self.namespaced,
                 "kind": self.kind, "verbs": ["get", "list"]}
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


CATALOG = [
    Resource("v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("v1", "nodes", "Node", False, ("no",)),
    Resource("v1", "persistentvolumes", "PersistentVolume", False, ("pv",)),
    Resource("v1", "pods", "Pod", True, ("po",)),
    Resource("v1", "events", "Event", True, ("ev",)),
    Resource("v1", "services", "Service", True, ("svc",)),
    Resource("v1", "endpoints", "Endpoints", True, ("ep",)),
    Resource("v1", "configmaps", "ConfigMap", True, ("cm",)),
    Resource("v1", "secrets", "Secret", True),
    Resource("v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
    Resource("v1", "resourcequotas", "ResourceQuota", True, ("quota",)),
    Resource("v1", "limitranges", "LimitRange", True, ("limits",)),
    Resource("apps/v1", "deployments", "Deployment", True, ("deploy",)),
    Resource("apps/v1", "replicasets", "ReplicaSet", True, ("rs",)),
    Resource("apps/v1", "statefulsets", "StatefulSet", True, ("sts",)),
    Resource("apps/v1", "daemonsets", "DaemonSet", True, ("ds",)),
    Resource("batch/v1", "jobs", "Job", True),
    Resource("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    Resource("coordination.k8s.io/v1", "leases", "Lease", True),
    Resource("kubeflow.org/v1", "pytorchjobs", "PyTorchJob", True),
    Resource("sagemaker.amazonaws.com/v1", "hyperpodpytorchjobs", "HyperPodPyTorchJob", True, ("hppj",)),
]
BY_KIND = {resource.kind: resource for resource in CATALOG}
BY_PATH = {(resource.group_version, resource.plural): resource for resource in CATALOG}


def discovery_api() -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]}


def discovery_groups() -> dict:
    versions = sorted({r.group_version for r in CATALOG if r.group})
    groups = []
    for group_version in versions:
        group, _, version = group_version.rpartition("/")
        entry = {"groupVersion": group_version, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def discovery_resources(group_version: str) -> dict | None:
    resources = [r.discovery_entry() for r in CATALOG if r.group_version == group_version]
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


# ---------------------------------------------------------------------------------------------
# Time, names and quantities as Kubernetes writes them


def k8s_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, which every Age column uses."""
    seconds = int(seconds)
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    return human_duration((datetime.now(timezone.utc) - parse_time(timestamp)).total_seconds())


def stable_uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def name_suffix(seed: str, length: int = 5) -> str:
    """Random-looking but stable, from the alphabet Kubernetes uses for generated names."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[byte % len(alphabet)] for byte in digest[:length])


def template_hash(seed: str) -> str:
    return name_suffix(seed, 10)


# ---------------------------------------------------------------------------------------------
# Nodes: HyperPod instances as EKS sees them

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


def build_node(node: dict, cluster: dict, clock: "Clock") -> dict:
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


def node_lease(node_object: dict, clock: "Clock") -> dict:
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


# ---------------------------------------------------------------------------------------------
# Workloads and their pods


@dataclass
class Clock:
    """The cluster's history, relative to the moment the server started."""

    now: datetime

    def ago(self, **delta: float) -> str:
        return k8s_time(self.now - timedelta(**delta))

    @property
    def cluster_created(self) -> str:
        return self.ago(days=3)

    @property
    def node_boot(self) -> str:
        return self.ago(hours=1)  # as the sandbox's node logs say

    @property
    def node_ready(self) -> str:
        return self.ago(minutes=58)

    @property
    def pods_started(self) -> str:
        return self.ago(minutes=55)


def owner_reference(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


class PodFactory:
    """Makes pods the way their controllers would, with addresses on loopback like the whole sandbox."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.next_ip = 1

    def pod_ip(self, node_object: dict, host_network: bool) -> str:
        if host_network:
            return node_object["status"]["addresses"][0]["address"]
        self.next_ip += 1
        return f"127.{64 + self.next_ip // 65536}.{(self.next_ip // 256) % 256}.{self.next_ip % 256}"

    def make(self, owner: dict, name: str, template: dict, node_object: dict, labels: dict | None = None) -> dict:
        namespace = owner["metadata"]["namespace"]
        spec = copy.deepcopy(template.get("spec") or {})
        spec.update(nodeName=node_object["metadata"]["name"], schedulerName="default-scheduler",
                    serviceAccountName=spec.get("serviceAccountName", "default"),
                    restartPolicy=spec.get("restartPolicy", "Always"), terminationGracePeriodSeconds=30,
                    dnsPolicy="ClusterFirst", tolerations=default_tolerations())
        ip = self.pod_ip(node_object, bool(spec.get("hostNetwork")))
        host_ip = node_object["status"]["addresses"][0]["address"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": stable_uid("pod", namespace, name),
                         "creationTimestamp": self.clock.pods_started,
                         "labels": {**(template.get("metadata") or {}).get("labels", {}), **(labels or {})},
                         "ownerReferences": [owner_reference(owner)]},
            "spec": spec,
            "status": {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip,
                       "podIPs": [{"ip": ip}], "startTime": self.clock.pods_started, "qosClass": qos_class(spec)},
        }
        set_running(pod, self.clock, node_is_ready(node_object))
        return pod


def default_tolerations() -> list[dict]:
    return [{"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300} for taint in ("not-ready", "unreachable")]


def qos_class(spec: dict) -> str:
    resources = [container.get("resources") or {} for container in spec.get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    return "Burstable"


def container_status(container: dict, pod_name: str, state: dict, ready: bool, restarts: int = 0) -> dict:
    image = container["image"]
    return {"name": container["name"], "image": image, "ready": ready, "restartCount": restarts,
            "started": "running" in state, "state": state,
            "imageID": f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
            "containerID": f"containerd://{hashlib.sha256((pod_name + container['name']).encode()).hexdigest()}"}


def pod_conditions(clock: Clock, ready: bool, scheduled_at: str) -> list[dict]:
    ready_status = "True" if ready else "False"
    return [
        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "Initialized", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "Ready", "status": ready_status, "lastTransitionTime": clock.pods_started},
        {"type": "ContainersReady", "status": ready_status, "lastTransitionTime": clock.pods_started},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at},
    ]


def set_running(pod: dict, clock: Clock, node_ready: bool) -> None:
    """Running containers; on a node that stopped reporting, the node controller marks the pod not Ready."""
    name = pod["metadata"]["name"]
    state = {"running": {"startedAt": clock.pods_started}}
    pod["status"]["containerStatuses"] = [container_status(c, name, state, True) for c in pod["spec"]["containers"]]
    pod["status"]["conditions"] = pod_conditions(clock, node_ready, clock.pods_started)


def set_crash_looping(pod: dict, clock: Clock) -> None:
    """A training container killed for memory again and again: CrashLoopBackOff with OOMKilled last state."""
    name = pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    state = {"waiting": {"reason": "CrashLoopBackOff",
                         "message": f"back-off 5m0s restarting failed container={container['name']} "
                                    f"pod={name}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"}}
    status = container_status(container, name, state, False, restarts=14)
    status["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": clock.ago(minutes=4),
                                          "finishedAt": clock.ago(minutes=2, seconds=41),
                                          "containerID": status["containerID"]}}
    pod["status"]["containerStatuses"] = [status]
    pod["status"]["conditions"] = pod_conditions(clock, False, clock.pods_started)


def set_completed(pod: dict, clock: Clock) -> None:
    name = pod["metadata"]["name"]
    state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": clock.pods_started,
                            "finishedAt": clock.ago(minutes=41)}}
    pod["status"]["phase"] = "Succeeded"
    pod["status"]["containerStatuses"] = [container_status(c, name, state, False) for c in pod["spec"]["containers"]]
    pod["status"]["conditions"] = pod_conditions(clock, False, clock.pods_started)


def matches_node_selector(node_object: dict, template: dict) -> bool:
    selector = (template.get("spec") or {}).get("nodeSelector") or {}
    labels = node_object["metadata"].get("labels", {})
    return all(labels.get(key) == value for key, value in selector.items())


# ---------------------------------------------------------------------------------------------
# The whole cluster


class Store:
    """Every object, by resource, in etcd's key order (namespace, then name), plus indexes for hot selectors."""

    def __init__(self) -> None:
        self.objects: dict[Resource, list[dict]] = {resource: [] for resource in CATALOG}

    def add(self, item: dict) -> dict:
        resource = BY_KIND[item["kind"]]
        item["metadata"].setdefault("uid", stable_uid(item["kind"], item["metadata"].get("namespace", ""),
                                                      item["metadata"]["name"]))
        self.objects[resource].append(item)
        return item

    def finish(self) -> None:
        for number, item in enumerate(item for items in self.objects.values() for item in items):
            item["metadata"].setdefault("resourceVersion", str(1000 + number))
        for items in self.objects.values():
            items.sort(key=lambda item: (item["metadata"].get("namespace", ""), item["metadata"]["name"]))
        self.by_name = {(item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"]): item
                        for items in self.objects.values() for item in items}
        self.pods_by_node: dict[str, list[dict]] = {}
        for pod in self.objects[BY_KIND["Pod"]]:
            self.pods_by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
        self.events_by_object: dict[str, list[dict]] = {}
        for event in self.objects[BY_KIND["Event"]]:
            self.events_by_object.setdefault(event["involvedObject"]["name"], []).append(event)

    def find(self, kind: str, name: str, namespace: str = "") -> dict | None:
        return self.by_name.get((kind, namespace, name))


def load_manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(FIXTURE.read_text()) if doc]


def build_cluster(cluster: dict, clock: Clock) -> Store:
    store = Store()
    nodes = {}
    for node in cluster["nodes"]:
        if hyperpod_status(node) == "Pending":
            continue  # still being provisioned: not registered with the cluster yet
        node_object = store.add(build_node(node, cluster, clock))
        nodes[node_object["metadata"]["name"]] = node_object
        store.add(node_lease(node_object, clock))
    sick_nodes = [node_name(node["instance_id"]) for node in cluster["nodes"] if is_sick(node)]
    builder = WorkloadBuilder(store, clock, nodes, sick_nodes)
    for manifest in load_manifests():
        builder.add_manifest(manifest)
    add_node_events(store, clock, nodes.values())
    for quota in store.objects[BY_KIND["ResourceQuota"]]:
        fill_quota_usage(quota, store)
    store.finish()
    return store


class WorkloadBuilder:
    """Adds fixture manifests and what their controllers would have created."""

    def __init__(self, store: Store, clock: Clock, nodes: dict[str, dict], sick_nodes: list[str]):
        self.store = store
        self.clock = clock
        self.nodes = nodes
        self.sick_nodes = sick_nodes
        self.pods = PodFactory(clock)
        # Add-ons go to healthy CPU nodes when there are any (as their node affinity asks), else to healthy nodes.
        healthy = [n for n in nodes.values() if node_is_ready(n) and not n["spec"]["unschedulable"]]
        cpu_nodes = [n for n in healthy if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
        self.service_nodes = cpu_nodes or healthy or list(nodes.values())
        self.placed = 0

    def add_manifest(self, manifest: dict) -> None:
        item = self.store.add(manifest)
        item["metadata"].setdefault("creationTimestamp", self.clock.cluster_created)
        handler: Callable[[dict], None] | None = getattr(self, f"add_{item['kind'].lower()}", None)
        if handler:
            handler(item)

    def next_service_node(self) -> dict:
        node_object = self.service_nodes[self.placed % len(self.service_nodes)]
        self.placed += 1
        return node_object

    def add_namespace(self, item: dict) -> None:
        item["spec"] = {"finalizers": ["kubernetes"]}
        item["status"] = {"phase": "Active"}
        item["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = item["metadata"]["name"]
        root_ca = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kube-root-ca.crt", "namespace": item["metadata"]["name"],
                                "creationTimestamp": self.clock.cluster_created},
                   "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(sandbox: no real CA)\n-----END CERTIFICATE-----\n"}}
        self.store.add(root_ca)

    def add_daemonset(self, item: dict) -> None:
        template = item["spec"]["template"]
        pods = []
        for node_object in self.nodes.values():
            if matches_node_selector(node_object, template):
                name = f"{item['metadata']['name']}-{name_suffix(item['metadata']['name'] + node_object['metadata']['name'])}"
                pods.append(self.store.add(self.pods.make(item, name, template, node_object,
                                                          {"controller-revision-hash": template_hash(name)})))
        ready = sum(pod_is_ready(pod) for pod in pods)
        item["status"] = {"currentNumberScheduled": len(pods), "desiredNumberScheduled": len(pods),
                          "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": len(pods),
                          "numberMisscheduled": 0, "numberUnavailable": len(pods) - ready, "observedGeneration": 1}

    def add_deployment(self, item: dict) -> None:
        name, namespace = item["metadata"]["name"], item["metadata"]["namespace"]
        pod_hash = template_hash(namespace + name)
        replica_set = self.store.add({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace, "creationTimestamp": self.clock.cluster_created,
                         "labels": {**item["spec"]["selector"]["matchLabels"], "pod-template-hash": pod_hash},
                         "ownerReferences": [owner_reference(item)]},
            "spec": {"replicas": item["spec"]["replicas"], "selector": item["spec"]["selector"],
                     "template": item["spec"]["template"]},
        })
        pods = [self.store.add(self.pods.make(replica_set, f"{replica_set['metadata']['name']}-{name_suffix(f'{name}{i}')}",
                                              item["spec"]["template"], self.next_service_node(),
                                              {"pod-template-hash": pod_hash}))
                for i in range(item["spec"]["replicas"])]
        ready = sum(pod_is_ready(pod) for pod in pods)
        counts = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": 1}
        replica_set["status"] = {**counts, "fullyLabeledReplicas": len(pods)}
        item["status"] = {**counts, "updatedReplicas": len(pods), "conditions": [
            {"type": "Available", "status": "True" if ready == len(pods) else "False",
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.",
             "lastUpdateTime": self.clock.pods_started, "lastTransitionTime": self.clock.pods_started},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": f'ReplicaSet "{replica_set["metadata"]["name"]}" has successfully progressed.',
             "lastUpdateTime": self.clock.pods_started, "lastTransitionTime": self.clock.cluster_created}]}
        self.store.add(controller_event(self.clock, item, "ScalingReplicaSet", "deployment-controller",
                                        f"Scaled up replica set {replica_set['metadata']['name']} to {len(pods)}"))

    def add_statefulset(self, item: dict) -> None:
        name, namespace = item["metadata"]["name"], item["metadata"]["namespace"]
        pods = []
        for index in range(item["spec"]["replicas"]):
            pod = self.pods.make(item, f"{name}-{index}", item["spec"]["template"], self.next_service_node(),
                                 {"statefulset.kubernetes.io/pod-name": f"{name}-{index}",
                                  "apps.kubernetes.io/pod-index": str(index)})
            for claim in item["spec"].get("volumeClaimTemplates", []):
                claim_name = f"{claim['metadata']['name']}-{name}-{index}"
                self.add_bound_claim(namespace, claim_name, claim["spec"])
                pod["spec"].setdefault("volumes", []).append(
                    {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}})
            pods.append(self.store.add(pod))
        ready = sum(pod_is_ready(pod) for pod in pods)
        item["status"] = {"replicas": len(pods), "readyReplicas": ready, "currentReplicas": len(pods),
                          "updatedReplicas": len(pods), "availableReplicas": ready, "observedGeneration": 1}

    def add_bound_claim(self, namespace: str, claim_name: str, claim_spec: dict) -> None:
        """A dynamically provisioned volume, as the EBS CSI driver makes for a StatefulSet's claim."""
        claim_uid = stable_uid("PersistentVolumeClaim", namespace, claim_name)
        volume_name = f"pvc-{claim_uid}"
        size = claim_spec["resources"]["requests"]["storage"]
        self.store.add({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": namespace, "uid": claim_uid,
                         "creationTimestamp": self.clock.cluster_created,
                         "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}},
            "spec": {**claim_spec, "volumeName": volume_name, "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "accessModes": claim_spec["accessModes"], "capacity": {"storage": size}},
        })
        self.store.add({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name, "creationTimestamp": self.clock.cluster_created,
                         "annotations": {"pv.kubernetes.io/provisioned-by": "ebs.csi.aws.com"}},
            "spec": {"capacity": {"storage": size}, "accessModes": claim_spec["accessModes"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": claim_spec["storageClassName"],
                     "volumeMode": "Filesystem",
                     "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": f"vol-{claim_uid.replace('-', '')[:17]}"},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim_name,
                                  "uid": claim_uid}},
            "status": {"phase": "Bound"},
        })

    def add_service(self, item: dict) -> None:
        spec = item["spec"]
        spec.update(clusterIPs=[spec["clusterIP"]], ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack",
                    sessionAffinity="None", internalTrafficPolicy="Cluster")
        item["status"] = {"loadBalancer": {}}

    def add_persistentvolume(self, item: dict) -> None:
        item["status"] = {"phase": "Bound"}

    def add_persistentvolumeclaim(self, item: dict) -> None:
        item["status"] = {"phase": "Bound", "accessModes": item["spec"]["accessModes"],
                          "capacity": {"storage": item["spec"]["resources"]["requests"]["storage"]}}

    def add_job(self, item: dict) -> None:
        name = item["metadata"]["name"]
        controller_uid = item["metadata"]["uid"]
        labels = {"job-name": name, "batch.kubernetes.io/job-name": name, "controller-uid": controller_uid,
                  "batch.kubernetes.io/controller-uid": controller_uid}
        pod = self.pods.make(item, f"{name}-{name_suffix(name)}", item["spec"]["template"], self.next_service_node(),
                             labels)
        set_completed(pod, self.clock)
        self.store.add(pod)
        item["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": controller_uid}}
        item["status"] = {"succeeded": 1, "ready": 0, "startTime": self.clock.pods_started,
                          "completionTime": self.clock.ago(minutes=41), "conditions": [
                              {"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": self.clock.ago(minutes=41),
                               "lastTransitionTime": self.clock.ago(minutes=41)},
                              {"type": "Complete", "status": "True", "lastProbeTime": self.clock.ago(minutes=41),
                               "lastTransitionTime": self.clock.ago(minutes=41)}]}
        self.store.add(controller_event(self.clock, item, "SuccessfulCreate", "job-controller",
                                        f"Created pod: {pod['metadata']['name']}"))
        self.store.add(controller_event(self.clock, item, "Completed", "job-controller", "Job completed"))

    def add_pytorchjob(self, item: dict) -> None:
        """One worker per GPU node; on a sick cluster, the worker on the first sick node crash-loops (OOMKilled)."""
        name = item["metadata"]["name"]
        worker = item["spec"]["pytorchReplicaSpecs"]["Worker"]
        gpu_nodes = [n for n in self.nodes.values() if "nvidia.com/gpu.present" in n["metadata"]["labels"]]
        worker["replicas"] = len(gpu_nodes)
        crashing_node = next((n for n in self.sick_nodes if n in {g["metadata"]["name"] for g in gpu_nodes}),
                             gpu_nodes[0]["metadata"]["name"] if self.sick_nodes and gpu_nodes else None)
        crashing = 0
        for index, node_object in enumerate(gpu_nodes):
            template = worker_template(worker["template"], node_object)
            pod = self.pods.make(item, f"{name}-worker-{index}", template, node_object, {
                "training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": str(index)})
            if node_object["metadata"]["name"] == crashing_node:
                set_crash_looping(pod, self.clock)
                crashing += 1
                self.store.add(pod_event(self.clock, pod, "Warning", "BackOff",
                                         f"Back-off restarting failed container pytorch in pod {pod['metadata']['name']}_"
                                         f"{pod['metadata']['namespace']}({pod['metadata']['uid']})", count=14))
            self.store.add(pod)
            add_pod_start_events(self.store, self.clock, pod)
        item["status"] = {"startTime": self.clock.pods_started,
                          "replicaStatuses": {"Worker": {"active": len(gpu_nodes) - crashing, "failed": crashing}},
                          "conditions": [
                              {"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                               "message": f"PyTorchJob {name} is created.", "lastTransitionTime": self.clock.pods_started},
                              {"type": "Running", "status": "True", "reason": "PyTorchJobRunning",
                               "message": f"PyTorchJob {item['metadata']['namespace']}/{name} is running.",
                               "lastTransitionTime": self.clock.pods_started}]}


def quantity_milli(text: str) -> int:
    """A Kubernetes quantity in thousandths (enough for CPU, memory and device counts here)."""
    suffixes = {"m": 1, "Ki": 1024 * 1000, "Mi": 1024 ** 2 * 1000, "Gi": 1024 ** 3 * 1000, "Ti": 1024 ** 4 * 1000}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text) * 1000


def format_usage(key: str, milli: int) -> str:
    if key.endswith("memory"):
        return f"{milli // 1000 // 1024 ** 3}Gi"
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def fill_quota_usage(quota: dict, store: Store) -> None:
    """What the quota controller would report: the requests of the namespace's running pods, and its claims."""
    namespace = quota["metadata"]["namespace"]
    pods = [p for p in store.objects[BY_KIND["Pod"]]
            if p["metadata"]["namespace"] == namespace and p["status"]["phase"] == "Running"]
    used = {}
    for key in quota["spec"]["hard"]:
        if key == "persistentvolumeclaims":
            claims = [c for c in store.objects[BY_KIND["PersistentVolumeClaim"]] if c["metadata"]["namespace"] == namespace]
            used[key] = str(len(claims))
            continue
        resource = key.removeprefix("requests.").removeprefix("limits.")
        section = "limits" if key.startswith("limits.") else "requests"
        total = sum(quantity_milli(((c.get("resources") or {}).get(section) or {}).get(resource, "0"))
                    for pod in pods for c in pod["spec"]["containers"])
        used[key] = format_usage(key, total)
    quota["status"] = {"hard": dict(quota["spec"]["hard"]), "used": used}


def worker_template(template: dict, node_object: dict) -> dict:
    """A whole node per worker: every GPU and EFA interface, half its CPUs and memory."""
    resources = {key: value for key, value in node_object["status"]["capacity"].items()
                 if key in ("nvidia.com/gpu", "vpc.amazonaws.com/efa")}
    cpus = int(node_object["status"]["capacity"]["cpu"])
    requests = {"cpu": str(cpus // 2), "memory": f"{int(node_object['status']['capacity']['memory'][:-2]) // 2}Ki",
                **resources}
    worker = copy.deepcopy(template)
    worker["spec"]["containers"][0]["resources"] = {"requests": requests, "limits": dict(resources)}
    return worker


def pod_is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


# ---------------------------------------------------------------------------------------------
# Events


def make_event(clock: Clock, involved: dict, namespace: str, kind_type: str, reason: str, message: str,
               component: str, host: str = "", count: int = 1, last: str | None = None,
               first: str | None = None) -> dict:
    name = f"{involved['name']}.{hashlib.sha256((involved['name'] + reason + message).encode()).hexdigest()[:16]}"
    first = first or clock.pods_started
    last = last or first
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": first},
        "involvedObject": involved, "reason": reason, "message": message,
        "source": {"component": component, **({"host": host} if host else {})},
        "firstTimestamp": first, "lastTimestamp": last, "count": count, "type": kind_type, "eventTime": None,
        "reportingComponent": component, "reportingInstance": host,
    }


def involved(item: dict, uid: str | None = None) -> dict:
    reference = {"kind": item["kind"], "name": item["metadata"]["name"], "uid": uid or item["metadata"]["uid"],
                 "apiVersion": item["apiVersion"]}
    if item["metadata"].get("namespace"):
        reference["namespace"] = item["metadata"]["namespace"]
    return reference


def controller_event(clock: Clock, item: dict, reason: str, component: str, message: str) -> dict:
    return make_event(clock, involved(item), item["metadata"]["namespace"], "Normal", reason, message, component)


def pod_event(clock: Clock, pod: dict, kind_type: str, reason: str, message: str, count: int = 1) -> dict:
    host = pod["spec"]["nodeName"]
    last = clock.ago(minutes=2, seconds=30) if count > 1 else None
    return make_event(clock, involved(pod), pod["metadata"]["namespace"], kind_type, reason, message,
                      "kubelet", host, count=count, last=last)


def add_pod_start_events(store: Store, clock: Clock, pod: dict) -> None:
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    store.add(make_event(clock, involved(pod), namespace, "Normal", "Scheduled",
                         f"Successfully assigned {namespace}/{name} to {pod['spec']['nodeName']}", "default-scheduler"))
    for reason, message in (("Pulled", f'Container image "{container["image"]}" already present on machine'),
                            ("Created", f"Created container: {container['name']}"),
                            ("Started", f"Started container {container['name']}")):
        store.add(pod_event(clock, pod, "Normal", reason, message))


def add_node_events(store: Store, clock: Clock, nodes: Any) -> None:
    """kubelet reports a node by its name (as the uid too); the node controller uses the real uid."""
    for node_object in nodes:
        name = node_object["metadata"]["name"]
        by_kubelet = involved(node_object, uid=name)
        events = [
            make_event(clock, by_kubelet, "default", "Normal", "Starting", "Starting kubelet.", "kubelet", name,
                       first=clock.node_boot),
            make_event(clock, by_kubelet, "default", "Normal", "NodeReady", f"Node {name} status is now: NodeReady",
                       "kubelet", name, first=clock.node_ready),
            make_event(clock, involved(node_object), "default", "Normal", "RegisteredNode",
                       f"Node {name} event: Registered Node {name} in Controller", "node-controller",
                       first=clock.node_ready),
        ]
        if node_object["spec"].get("unschedulable"):
            events.append(make_event(clock, by_kubelet, "default", "Normal", "NodeNotSchedulable",
                                     f"Node {name} status is now: NodeNotSchedulable", "kubelet", name,
                                     first=clock.ago(minutes=12)))
        if not node_is_ready(node_object):
            events.append(make_event(clock, involved(node_object), "default", "Normal", "NodeNotReady",
                                     f"Node {name} status is now: NodeNotReady", "node-controller",
                                     first=clock.ago(minutes=30)))
        for event in events:
            store.add(event)


# ---------------------------------------------------------------------------------------------
# Selectors and pages


def field_value(item: dict, path: str) -> str:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        for operator in ("!=", "==", "="):
            if operator in term:
                path, _, value = term.partition(operator)
                terms.append((path.strip(), "!=" if operator == "!=" else "=", value.strip()))
                break
    return terms


def matches_fields(item: dict, terms: list[tuple[str, str, str]]) -> bool:
    return all((field_value(item, path) == value) == (operator == "=") for path, operator, value in terms)


def split_selector(text: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` sets."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [term.strip() for term in terms + [current] if term.strip()]


def label_term_matches(labels: dict[str, str], term: str) -> bool:
    words = term.split()
    if len(words) == 3 and words[1] in ("in", "notin"):
        values = {value.strip() for value in words[2].strip("()").split(",")}
        inside = labels.get(words[0]) in values
        return inside if words[1] == "in" else not inside
    for operator in ("!=", "==", "="):
        if operator in term:
            key, _, value = term.partition(operator)
            equal = labels.get(key.strip()) == value.strip()
            return not equal if operator == "!=" else equal
    if term.startswith("!"):
        return term[1:] not in labels
    return term in labels


def matches_labels(item: dict, selector: str) -> bool:
    labels = item["metadata"].get("labels") or {}
    return all(label_term_matches(labels, term) for term in split_selector(selector))


def page(items: list[dict], limit: int, continue_token: str) -> tuple[list[dict], str]:
    offset = int(base64.urlsafe_b64decode(continue_token.encode()).decode()) if continue_token else 0
    if limit <= 0 or offset + limit >= len(items):
        return items[offset:], ""
    return items[offset:offset + limit], base64.urlsafe_b64encode(str(offset + limit).encode()).decode()


# ---------------------------------------------------------------------------------------------
# Server-side Tables: the columns `kubectl get` prints, per kind, as the real API server prints them


def column(name: str, priority: int = 0, kind: str = "string", fmt: str = "") -> dict:
    return {"name": name, "type": kind, "format": fmt, "description": name, "priority": priority}


NAME = column("Name", fmt="name")
AGE = column("Age")


def access_modes(modes: list[str]) -> str:
    short = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}
    return ",".join(short.get(mode, mode) for mode in modes)


def containers_and_images(template: dict) -> list[str]:
    containers = template["spec"]["containers"]
    return [",".join(c["name"] for c in containers), ",".join(c["image"] for c in containers)]


def selector_text(selector: dict | None) -> str:
    labels = (selector or {}).get("matchLabels", selector or {})
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "<none>"


def node_row(node: dict) -> list:
    status = "Ready" if node_is_ready(node) else "NotReady"
    if node["spec"].get("unschedulable"):
        status += ",SchedulingDisabled"
    info = node["status"]["nodeInfo"]
    internal_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    return [node["metadata"]["name"], status, "<none>", age(node["metadata"]["creationTimestamp"]),
            info["kubeletVersion"], internal_ip, "<none>", info["osImage"], info["kernelVersion"],
            info["containerRuntimeVersion"]]


def pod_row(pod: dict) -> list:
    statuses = pod["status"].get("containerStatuses", [])
    reason = pod["status"].get("reason") or pod["status"]["phase"]
    restarts, last_restart, ready = 0, None, 0
    for status in statuses:
        restarts += status["restartCount"]
        last_restart = (status.get("lastState") or {}).get("terminated", {}).get("finishedAt") or last_restart
        state = status["state"]
        if "waiting" in state:
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"]["reason"]
        elif status["ready"]:
            ready += 1
    restart_text = f"{restarts} ({age(last_restart)} ago)" if last_restart else str(restarts)
    return [pod["metadata"]["name"], f"{ready}/{len(pod['spec']['containers'])}", reason, restart_text,
            age(pod["metadata"]["creationTimestamp"]), pod["status"].get("podIP", "<none>"),
            pod["spec"].get("nodeName", "<none>"), "<none>", "<none>"]


def event_row(event: dict) -> list:
    last, first, count = event["lastTimestamp"], event["firstTimestamp"], event["count"]
    last_seen = f"{age(last)} (x{count} over {age(first)})" if count > 1 else age(last)
    target = event["involvedObject"]
    source = ", ".join(filter(None, [event["source"].get("component"), event["source"].get("host")]))
    return [last_seen, event["type"], event["reason"], f"{target['kind'].lower()}/{target['name']}",
            target.get("fieldPath", ""), source, event["message"], age(first), count, event["metadata"]["name"]]


def service_row(service: dict) -> list:
    spec = service["spec"]
    ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
    return [service["metadata"]["name"], spec["type"], spec.get("clusterIP", "<none>"), "<none>", ports or "<none>",
            age(service["metadata"]["creationTimestamp"]), selector_text(spec.get("selector"))]


def claim_row(claim: dict) -> list:
    return [claim["metadata"]["name"], claim["status"]["phase"], claim["spec"].get("volumeName", ""),
            claim["status"]["capacity"]["storage"], access_modes(claim["spec"]["accessModes"]),
            claim["spec"].get("storageClassName", ""), "<unset>", age(claim["metadata"]["creationTimestamp"]),
            claim["spec"].get("volumeMode", "Filesystem")]


def volume_row(volume: dict) -> list:
    spec = volume["spec"]
    claim = spec.get("claimRef") or {}
    return [volume["metadata"]["name"], spec["capacity"]["storage"], access_modes(spec["accessModes"]),
            spec["persistentVolumeReclaimPolicy"], volume["status"]["phase"],
            f"{claim.get('namespace')}/{claim.get('name')}" if claim else "", spec.get("storageClassName", ""),
            "<unset>", "", age(volume["metadata"]["creationTimestamp"]), spec.get("volumeMode", "Filesystem")]


def deployment_row(item: dict) -> list:
    status = item["status"]
    return [item["metadata"]["name"], f"{status['readyReplicas']}/{item['spec']['replicas']}", status["updatedReplicas"],
            status["availableReplicas"], age(item["metadata"]["creationTimestamp"]),
            *containers_and_images(item["spec"]["template"]), selector_text(item["spec"]["selector"])]


def replica_set_row(item: dict) -> list:
    status = item["status"]
    return [item["metadata"]["name"], item["spec"]["replicas"], status["replicas"], status["readyReplicas"],
            age(item["metadata"]["creationTimestamp"]), *containers_and_images(item["spec"]["template"]),
            selector_text(item["spec"]["selector"])]


def stateful_set_row(item: dict) -> list:
    return [item["metadata"]["name"], f"{item['status']['readyReplicas']}/{item['spec']['replicas']}",
            age(item["metadata"]["creationTimestamp"]), *containers_and_images(item["spec"]["template"])]


def daemon_set_row(item: dict) -> list:
    status, template = item["status"], item["spec"]["template"]
    return [item["metadata"]["name"], status["desiredNumberScheduled"], status["currentNumberScheduled"],
            status["numberReady"], status["updatedNumberScheduled"], status["numberAvailable"],
            selector_text(template["spec"].get("nodeSelector")), age(item["metadata"]["creationTimestamp"]),
            *containers_and_images(template), selector_text(item["spec"]["selector"])]


def job_row(item: dict) -> list:
    status = item["status"]
    complete = any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", []))
    duration = (parse_time(status["completionTime"]) - parse_time(status["startTime"])).total_seconds() if complete else 0
    return [item["metadata"]["name"], "Complete" if complete else "Running",
            f"{status.get('succeeded', 0)}/{item['spec'].get('completions', 1)}", human_duration(duration),
            age(item["metadata"]["creationTimestamp"]), *containers_and_images(item["spec"]["template"]),
            selector_text(item["spec"].get("selector"))]


def quota_row(item: dict) -> list:
    hard, used = item["status"]["hard"], item["status"]["used"]
    usage = [(key, f"{key}: {used[key]}/{value}") for key, value in sorted(hard.items())]
    requests = ", ".join(text for key, text in usage if not key.startswith("limits."))
    limits = ", ".join(text for key, text in usage if key.startswith("limits."))
    return [item["metadata"]["name"], age(item["metadata"]["creationTimestamp"]), requests, limits]


def custom_resource_row(item: dict) -> list:
    conditions = (item.get("status") or {}).get("conditions") or [{}]
    return [item["metadata"]["name"], conditions[-1].get("type", ""), age(item["metadata"]["creationTimestamp"])]


def simple_row(*cells: Callable[[dict], Any]) -> Callable[[dict], list]:
    return lambda item: [item["metadata"]["name"], *(cell(item) for cell in cells)]


def created_age(item: dict) -> str:
    return age(item["metadata"]["creationTimestamp"])


TABLES: dict[str, tuple[list[dict], Callable[[dict], list]]] = {
    "Node": ([NAME, column("Status"), column("Roles"), AGE, column("Version"), column("Internal-IP", 1),
              column("External-IP", 1), column("OS-Image", 1), column("Kernel-Version", 1),
              column("Container-Runtime", 1)], node_row),
    "Pod": ([NAME, column("Ready"), column("Status"), column("Restarts", kind="string"), AGE, column("IP", 1),
             column("Node", 1), column("Nominated Node", 1), column("Readiness Gates", 1)], pod_row),
    "Event": ([column("Last Seen"), column("Type"), column("Reason"), column("Object"), column("Subobject", 1),
               column("Source", 1), column("Message"), column("First Seen", 1), column("Count", 1, "integer"),
               column("Name", 1)], event_row),
    "Service": ([NAME, column("Type"), column("Cluster-IP"), column("External-IP"), column("Port(s)"), AGE,
                 column("Selector", 1)], service_row),
    "PersistentVolumeClaim": ([NAME, column("Status"), column("Volume"), column("Capacity"), column("Access Modes"),
                               column("StorageClass"), column("VolumeAttributesClass"), AGE,
                               column("VolumeMode", 1)], claim_row),
    "PersistentVolume": ([NAME, column("Capacity"), column("Access Modes"), column("Reclaim Policy"), column("Status"),
                          column("Claim"), column("StorageClass"), column("VolumeAttributesClass"), column("Reason"),
                          AGE, column("VolumeMode", 1)], volume_row),
    "Deployment": ([NAME, column("Ready"), column("Up-to-date", kind="integer"), column("Available", kind="integer"),
                    AGE, column("Containers", 1), column("Images", 1), column("Selector", 1)], deployment_row),
    "ReplicaSet": ([NAME, column("Desired", kind="integer"), column("Current", kind="integer"),
                    column("Ready", kind="integer"), AGE, column("Containers", 1), column("Images", 1),
                    column("Selector", 1)], replica_set_row),
    "StatefulSet": ([NAME, column("Ready"), AGE, column("Containers", 1), column("Images", 1)], stateful_set_row),
    "DaemonSet": ([NAME, *(column(n, kind="integer") for n in ("Desired", "Current", "Ready", "Up-to-date", "Available")),
                   column("Node Selector"), AGE, column("Containers", 1), column("Images", 1), column("Selector", 1)],
                  daemon_set_row),
    "Job": ([NAME, column("Status"), column("Completions"), column("Duration"), AGE, column("Containers", 1),
             column("Images", 1), column("Selector", 1)], job_row),
    "ConfigMap": ([NAME, column("Data", kind="integer"), AGE], simple_row(lambda i: len(i.get("data") or {}), created_age)),
    # Only the number of keys: a Table row never carries a secret's data.
    "Secret": ([NAME, column("Type"), column("Data", kind="integer"), AGE],
               simple_row(lambda i: i.get("type", "Opaque"), lambda i: len(i.get("data") or {}), created_age)),
    "ResourceQuota": ([NAME, AGE, column("Request"), column("Limit")], quota_row),
    "NetworkPolicy": ([NAME, column("Pod-Selector"), AGE],
                      simple_row(lambda i: selector_text(i["spec"].get("podSelector")).replace("<none>", ""),
                                 created_age)),
    "Namespace": ([NAME, column("Status"), AGE], simple_row(lambda i: i["status"]["phase"], created_age)),
    "Lease": ([NAME, column("Holder"), AGE], simple_row(lambda i: i["spec"]["holderIdentity"], created_age)),
    "LimitRange": ([NAME, column("Created At")], simple_row(lambda i: i["metadata"]["creationTimestamp"])),
    "Endpoints": ([NAME, column("Endpoints"), AGE], simple_row(lambda i: "<none>", created_age)),
    "PyTorchJob": ([NAME, column("State"), AGE], custom_resource_row),
    "HyperPodPyTorchJob": ([NAME, column("Status"), AGE], custom_resource_row),
}


def as_table(resource: Resource, items: list[dict], include: str, continue_token: str = "") -> dict:
    columns, row = TABLES[resource.kind]
    rows = []
    for item in items:
        entry: dict[str, Any] = {"cells": row(item)}
        if include == "Object":
            entry["object"] = item
        elif include != "None":
            entry["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": item["metadata"]}
        rows.append(entry)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "99999", **({"continue": continue_token} if continue_token else {})},
            "columnDefinitions": columns, "rows": rows}


def as_list(resource: Resource, items: list[dict], continue_token: str = "") -> dict:
    return {"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
            "metadata": {"resourceVersion": "99999", **({"continue": continue_token} if continue_token else {})},
            "items": items}


def not_found(plural: str, name: str) -> tuple[int, dict]:
    return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": f'{plural} "{name}" not found', "reason": "NotFound",
                 "details": {"name": name, "kind": plural}, "code": 404}


def no_such_path(path: str) -> tuple[int, dict]:
    return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": f"the server could not find the requested resource ({path})", "reason": "NotFound",
                 "details": {}, "code": 404}


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class Query:
    namespace: str
    name: str
    params: dict[str, str]
    wants_table: bool


class KubeApi:
    """Answers GET requests for the store; no HTTP in here, so it is easy to test."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, path: str, params: dict[str, str], accept: str) -> tuple[int, dict]:
        parts = [part for part in path.split("/") if part]
        if parts == ["version"]:
            return 200, SERVER_VERSION
        if parts == ["api"]:
            return 200, discovery_api()
        if parts == ["apis"]:
            return 200, discovery_groups()
        core = parts[:1] == ["api"]
        prefix_length = 2 if core else 3
        group_version = "/".join(parts[1:prefix_length])
        rest = parts[prefix_length:]
        if len(parts) < prefix_length or parts[0] not in ("api", "apis"):
            return no_such_path(path)
        if not rest:
            found = discovery_resources(group_version)
            return (200, found) if found else no_such_path(path)
        return self.resource_request(path, group_version, rest, params, "as=Table" in accept)

    def resource_request(self, path: str, group_version: str, rest: list[str], params: dict[str, str],
                         wants_table: bool) -> tuple[int, dict]:
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource = BY_PATH.get((group_version, rest[0]))
        if resource is None or len(rest) > 2 or params.get("watch") in ("1", "true"):
            return no_such_path(path)
        query = Query(namespace, rest[1] if len(rest) == 2 else "", params, wants_table)
        if query.name:
            return self.get_one(resource, query)
        return self.list(resource, query)

    def get_one(self, resource: Resource, query: Query) -> tuple[int, dict]:
        item = self.store.find(resource.kind, query.name, query.namespace if resource.namespaced else "")
        if item is None:
            return not_found(resource.plural, query.name)
        if query.wants_table:
            return 200, as_table(resource, [item], query.params.get("includeObject", "Metadata"))
        return 200, item

    def list(self, resource: Resource, query: Query) -> tuple[int, dict]:
        items = self.candidates(resource, query)
        if query.namespace and resource.namespaced:
            items = [item for item in items if item["metadata"].get("namespace") == query.namespace]
        if query.params.get("labelSelector"):
            items = [item for item in items if matches_labels(item, query.params["labelSelector"])]
        terms = parse_field_selector(query.params.get("fieldSelector", ""))
        if terms:
            items = [item for item in items if matches_fields(item, terms)]
        chunk, continue_token = page(items, int(query.params.get("limit") or 0), query.params.get("continue", ""))
        if query.wants_table:
            return 200, as_table(resource, chunk, query.params.get("includeObject", "Metadata"), continue_token)
        return 200, as_list(resource, chunk, continue_token)

    def candidates(self, resource: Resource, query: Query) -> list[dict]:
        """`describe node` asks for the pods of one node and the events of one object: use the indexes."""
        terms = dict((path, value) for path, operator, value in parse_field_selector(query.params.get("fieldSelector", ""))
                     if operator == "=")
        if resource.kind == "Pod" and "spec.nodeName" in terms:
            return self.store.pods_by_node.get(terms["spec.nodeName"], [])
        if resource.kind == "Event" and "involvedObject.name" in terms:
            return self.store.events_by_object.get(terms["involvedObject.name"], [])
        return self.store.objects[resource]


class Faults:
    """Armed delays, and a log of every request, for tests that make kubectl wait or check what it asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delays: dict[str, float] = {}
        self.requests: list[dict] = []

    def record(self, method: str, target: str, accept: str) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": target, "accept": accept})

    def delay_for(self, path: str) -> float:
        with self.lock:
            return max([seconds for part, seconds in self.delays.items() if part in path], default=0.0)

    def arm_delay(self, path_contains: str, seconds: float) -> None:
        with self.lock:
            if seconds > 0:
                self.delays[path_contains] = seconds
            else:
                self.delays.pop(path_contains, None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API server: kubectl reuses its connections
    # Headers and body go out in two writes; with Nagle's algorithm on, each answer on a kept-alive
    # connection would then wait for the client's delayed ACK (40 ms), which made `describe nodes` crawl.
    disable_nagle_algorithm = True
    api: KubeApi
    faults: Faults

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_emu/"):
            self.emu_get(url.path)
            return
        self.faults.record("GET", self.path, self.headers.get("Accept", ""))
        delay = self.faults.delay_for(url.path)
        if delay:
            time.sleep(delay)
        params = dict(urllib.parse.parse_qsl(url.query))
        try:
            status, body = self.api.get(url.path, params, self.headers.get("Accept", ""))
        except Exception:  # noqa: BLE001 - a bug here must read as a server error, not a dropped connection
            traceback.print_exc()  # into ROOT/kube/server.log
            status, body = 500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": "sandbox API server error (see kube/server.log)",
                                 "reason": "InternalError", "code": 500}
        self.send_json(status, body)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/_emu/kube/delay":
            self.faults.arm_delay(body["path_contains"], float(body.get("seconds") or 0))
            self.send_json(200, {"delays": self.faults.delays})
        else:
            self.send_json(*method_not_allowed())

    def do_DELETE(self) -> None:  # noqa: N802
        if self.path == "/_emu/kube/requests":
            with self.faults.lock:
                self.faults.requests.clear()
            self.send_json(200, {})
        else:
            self.send_json(*method_not_allowed())

    do_PUT = do_PATCH = lambda self: self.send_json(*method_not_allowed())  # noqa: E731 - read only

    def emu_get(self, path: str) -> None:
        if path == "/_emu/kube/requests":
            with self.faults.lock:
                self.send_json(200, {"requests": list(self.faults.requests)})
        else:
            self.send_json(*no_such_path(path))

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # kubectl gave up (its own timeout, or killed by ours); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # every request is in Faults.requests; a log line per request would only slow the server


def method_not_allowed() -> tuple[int, dict]:
    return 405, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "the sandbox API server is read only", "reason": "MethodNotAllowed", "code": 405}


def serve(root: Path) -> None:
    directory = kube_dir(root)
    cluster = json.loads((directory / "cluster.json").read_text())
    store = build_cluster(cluster, Clock(datetime.now(timezone.utc)))
    handler = type("BoundHandler", (Handler,), {"api": KubeApi(store), "faults": Faults()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    temporary = directory / "server.json.tmp"
    temporary.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid()}))
    os.replace(temporary, directory / "server.json")
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Starting and stopping, from the sandbox


def eks_cluster_arn(status: dict, root: Path) -> str:
    """Ask the sandbox's own API, as discover does, so the kubeconfig names exactly what the toolkit expects."""
    from collectors.sandbox.control import sandbox_client  # control imports this module

    sagemaker = sandbox_client("sagemaker", status["endpoint"], status["region"], root)
    return sagemaker.describe_cluster(ClusterName=status["cluster"])["Orchestrator"]["Eks"]["ClusterArn"]


def kubeconfig(endpoint: str, name: str) -> dict:
    """What `aws eks update-kubeconfig` writes, named by the EKS cluster's ARN, but plain HTTP and no user."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": endpoint}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def start_kube(root: Path, status: dict) -> dict:
    """Start the API server for the sandbox described by `status`; return what `sandbox.json` records."""
    directory = kube_dir(root)
    directory.mkdir()
    arn = eks_cluster_arn(status, Path(root))
    (directory / "cluster.json").write_text(json.dumps(status))
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "collectors.sandbox.kube", "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory,
            env=dict(os.environ, PYTHONPATH=python_path), start_new_session=True,  # outlives `invoke sandbox.up`
        )
    record_process(directory, {"server": process_identity(server.pid)})
    endpoint = await_endpoint(directory, server)
    config_path = directory / "kubeconfig"
    config_path.write_text(json.dumps(kubeconfig(endpoint, arn), indent=2) + "\n")
    config_path.chmod(0o600)
    return {"endpoint": endpoint, "kubeconfig": str(config_path), "context": arn, "eks_cluster_arn": arn,
            "pid": server.pid, "cache_dir": str(directory / "cache")}


def await_endpoint(directory: Path, server: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (directory / "server.json").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            log_tail = (directory / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the sandbox Kubernetes API server did not start:\n{log_tail}")
        time.sleep(0.02)
    return json.loads((directory / "server.json").read_text())["endpoint"]


def stop_kube(root: Path) -> list[int]:
    """Stop the recorded API server by PID; return its PID if it is still alive afterwards."""
    record = read_process_record(kube_dir(root))
    if not record:
        return []
    server = record["server"]
    kill_if_same(server, signal.SIGTERM)
    if wait_until_gone([server], STOP_TIMEOUT_S):
        kill_if_same(server, signal.SIGKILL)
    return wait_until_gone([server])


def main() -> None:
    parser = argparse.ArgumentParser(description="The sandbox's Kubernetes API server (started by start_kube).")
    parser.add_argument("--root", type=Path, required=True)
    serve(parser.parse_args().root)


if __name__ == "__main__":
    main()
