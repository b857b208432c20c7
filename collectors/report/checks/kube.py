"""Run tests of the Kubernetes objects in the kubectl bundle: HyperPod's health labels, node conditions,
pods in trouble."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

from collectors.nodes import EKS_NODE_PREFIX
from collectors.report.model import Evidence, Hit, RunView

HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
DEEP_HEALTH_LABEL = "sagemaker.amazonaws.com/deep-health-check-status"
FAULT_LABELS = ("sagemaker.amazonaws.com/fault-type", "sagemaker.amazonaws.com/fault-reason")


def kube_subject(name: str) -> str:
    """HyperPod EKS nodes are named hyperpod-<instance-id>."""
    return name[len(EKS_NODE_PREFIX):] if name.startswith(EKS_NODE_PREFIX + "i-") else name


def kube_hit(rule: Any, view: RunView, kind: str, name: str, key: str, text: str, case: str | None = None) -> Hit:
    """A hit on node `name`, its evidence the bundle member that holds the objects of `kind`."""
    source = view.kube.sources.get(kind, "kubectl")
    return Hit(rule=rule.id, key=key, count=1, subject=kube_subject(name), case=case,
               evidence=[Evidence(source, None, text)])


def named_nodes(view: RunView) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each Node object with its name; none where the run has no kubectl bundle."""
    for node in view.kube.nodes if view.kube is not None else ():
        yield node.get("metadata", {}).get("name", "?"), node


def hyperpod_labels(rule: Any, view: RunView) -> list[Hit]:
    hits = []
    for name, node in named_nodes(view):
        labels = node.get("metadata", {}).get("labels") or {}
        faults = "".join(f", {label.rsplit('/', 1)[1]}={labels[label]}" for label in FAULT_LABELS if label in labels)
        for label, healthy in ((HEALTH_LABEL, ("Schedulable",)), (DEEP_HEALTH_LABEL, ("Passed",))):
            value = labels.get(label)
            if value and value not in healthy:
                short = label.rsplit("/", 1)[1]
                hits.append(kube_hit(rule, view, "Node", name, f"{short}={value}",
                                     f"node {name}: {label}={value}{faults}", case=value))
    return hits


PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")


def node_conditions(rule: Any, view: RunView) -> list[Hit]:
    """Ready must be True, pressures False; node agents add `...Ready` conditions of their own."""
    hits = []
    for name, node in named_nodes(view):
        for condition in node.get("status", {}).get("conditions") or []:
            kind, status = condition.get("type", ""), condition.get("status", "")
            bad = (status == "True") if kind in PRESSURE_CONDITIONS else (kind.endswith("Ready") and status != "True")
            if bad:
                detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
                hits.append(kube_hit(rule, view, "Node", name, f"{kind}={status}",
                                     f"node {name}: {kind}={status}" + (f" ({detail})" if detail else "")))
    return hits


WAITING_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")


def pod_states(rule: Any, view: RunView) -> list[Hit]:
    if view.kube is None:
        return []
    hits = []
    stuck_after = float(rule.params.get("stuck_terminating_minutes", 30)) * 60
    for pod in view.kube.pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            continue
        meta = pod.get("metadata", {})
        where = f"pod {meta.get('namespace', '?')}/{meta.get('name', '?')} on {node}"
        for state, detail in pod_problems(pod, view.kube.collected_at, stuck_after):
            hits.append(kube_hit(rule, view, "Pod", node, state, f"{where}: {detail}"))
    return hits


def pod_problems(pod: dict[str, Any], collected_at: float | None, stuck_after: float) -> Iterator[tuple[str, str]]:
    status = pod.get("status", {})
    if status.get("reason") == "Evicted":
        yield "Evicted", status.get("message") or "evicted"
    for container in status.get("containerStatuses") or []:
        restarts = container.get("restartCount", 0)
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            yield waiting["reason"], f"container {container.get('name')} {waiting['reason']}, {restarts} restarts"
        for moment in ("state", "lastState"):
            terminated = (container.get(moment) or {}).get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                yield "OOMKilled", f"container {container.get('name')} OOMKilled (exit {terminated.get('exitCode')})"
                break
    deleted = pod.get("metadata", {}).get("deletionTimestamp")
    if deleted and collected_at is not None:
        age = collected_at - parse_time(deleted)
        if age > stuck_after:
            yield "Terminating", f"terminating for {int(age // 60)} minutes"


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
