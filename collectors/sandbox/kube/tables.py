"""Server-side Tables: the columns `kubectl get` prints, per kind, as the real API server prints them."""

from __future__ import annotations

from typing import Any, Callable

from collectors.sandbox.kube.catalog import Resource
from collectors.sandbox.kube.meta import age, human_duration, parse_time
from collectors.sandbox.kube.nodes import node_is_ready


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
