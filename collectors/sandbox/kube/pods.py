"""Pods as their controllers make them, and the states their containers are in."""

from __future__ import annotations

import copy
import hashlib

from collectors.sandbox.kube.meta import Clock, owner_reference, stable_uid
from collectors.sandbox.kube.nodes import node_is_ready


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
