"""Events as the kubelet, the scheduler and the controllers report them."""

from __future__ import annotations

import hashlib
from typing import Any

from collectors.sandbox.kube.meta import Clock
from collectors.sandbox.kube.nodes import node_is_ready
from collectors.sandbox.kube.store import Store


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
