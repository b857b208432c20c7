"""What HyperPod itself recorded about the sandbox's cluster: its cluster events and its CloudWatch logs.

From each node's scenario settings (docs/scenarios.md): its HyperPod status and message, its
Kubernetes health label, its fixture pack and how its lifecycle scripts ended (`lifecycle: failed`).
`cluster_history(cluster, settings)` gives the events ListClusterEvents and DescribeClusterEvent
answer with, and the log streams of the cluster's log group, as HyperPod names them:

- events (ResourceType Cluster, InstanceGroup or Instance; EventLevel Info, Warn or Error), shaped by
  botocore's ClusterEventDetail; the record and its "Instance creation in Cluster X and InstanceGroup
  Y failed" wording follow the HyperPod cluster events reference
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-cluster-events-reference.html),
  the other descriptions and the LcsExecutionState values are the sandbox's own;
- `/aws/sagemaker/Clusters/<name>/<id>` with `LifecycleConfig/<group>/<instance-id>` (the lifecycle
  scripts' output, as the CloudWatch agent ships /var/log/provision/provisioning.log) and, on GPU
  instances, `SagemakerHealthMonitoringAgent/<group>/<instance-id>` (the health monitoring agent's
  JSON lines, docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-eks-resiliency-health-monitoring-agent.html).

Times follow the node's story in content.py: launched a little before its boot (an hour before the
sandbox started), sick in the last half hour. Event ids are UUIDs derived from the cluster and node,
so a sandbox is reproducible.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from collectors.cluster_api import AGENT_STREAM, LIFECYCLE_STREAM, log_group_name
from collectors.cluster_api import stream_name as named_stream
from collectors.sandbox import packs
from collectors.sandbox.content import ClusterFacts, Node, boot_time

HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
EVENT_NAMESPACE = uuid.UUID("6f1c1c52-45b6-4c43-9d2e-6c1f0d6b2a10")
AGENT_HEARTBEAT = timedelta(minutes=10)
# When a sick node's trouble began, before the sandbox started: recent enough for any --since window.
TROUBLE_AGO = timedelta(minutes=25)
# HyperPod's words for what it does to a node whose status or health label says so (the sandbox's own).
STATUS_EVENTS = {
    "SystemUpdating": ("Info", "Software update of instance {iid} started"),
    "DeepHealthCheckInProgress": ("Info", "Deep health checks started on instance {iid}"),
    "ShuttingDown": ("Info", "Instance {iid} is shutting down"),
}
LABEL_EVENTS = {
    "UnschedulablePendingReboot": ("Warn", "Reboot of instance {iid} scheduled after a failed health check"),
    "UnschedulablePendingReplacement": ("Warn", "Replacement of instance {iid} scheduled after a failed health check"),
}
# The agent's detection for each sick pack: its reason and the node condition it sets.
AGENT_DETECTIONS = {
    "xid79": ("XidHardwareFailure", "NvidiaErrorTerminate",
              "NVRM: Xid (PCI:0000:{bus}): 79, GPU has fallen off the bus."),
    "ecc": ("XidHardwareFailure", "NvidiaErrorReboot", "NVRM: Xid (PCI:0000:{bus}): 48, An uncorrectable double bit "
                                                     "error (DBE) has been detected on GPU"),
    "nvlink": ("XidHardwareFailure", "NvidiaErrorTerminate", "NVRM: Xid (PCI:0000:{bus}): 74, NVLink: fatal error "
                                                           "detected on link 3"),
}


@dataclass
class ClusterHistory:
    """The events (newest last) and the log streams, {stream name: [(epoch ms, message), ...]}."""

    log_group: str
    events: list[dict] = field(default_factory=list)
    streams: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    launched: dict[str, float] = field(default_factory=dict)  # instance id -> epoch seconds

    def as_json(self) -> dict:
        return {"log_group": self.log_group, "events": self.events, "launched": self.launched,
                "streams": {name: [list(entry) for entry in lines] for name, lines in self.streams.items()}}


def cluster_history(cluster: ClusterFacts, settings: dict[str, dict]) -> ClusterHistory:
    """`settings`: each node's scenario settings by instance id (scenario.node_settings)."""
    history = ClusterHistory(log_group_name(cluster.name, cluster.arn))
    created = boot_time(cluster.started_at) - timedelta(minutes=15)
    history.events.append(event(cluster, None, created, "Info", "Cluster", f"Cluster {cluster.name} is InService"))
    for group in sorted({node.group for node in cluster.nodes}):
        count = sum(1 for node in cluster.nodes if node.group == group)
        history.events.append(event(cluster, None, created, "Info", "InstanceGroup",
                                    f"InstanceGroup {group} created with {count} instance(s)", group=group))
    for node in cluster.nodes:
        node_story(history, cluster, node, settings[node.instance_id])
    history.events.sort(key=lambda item: item["EventTime"])
    return history


def node_story(history: ClusterHistory, cluster: ClusterFacts, node: Node, settings: dict) -> None:
    launched = boot_time(cluster.started_at) - timedelta(minutes=12)
    history.launched[node.instance_id] = launched.timestamp()
    add = history.events.append
    add(event(cluster, node, launched, "Info", "Instance",
              f"Instance {node.instance_id} launched in InstanceGroup {node.group}"))
    scripts_done = launched + timedelta(minutes=8)
    history.streams[stream_name(LIFECYCLE_STREAM, node)] = lifecycle_lines(cluster, node, launched, settings)
    if settings["lifecycle"] == "failed":
        add(event(cluster, node, scripts_done, "Error", "Instance",
                  f"Instance creation in Cluster {cluster.name} and InstanceGroup {node.group} failed",
                  metadata={"FailureMessage": "Lifecycle scripts did not run successfully. See the log stream "
                                              f"{stream_name(LIFECYCLE_STREAM, node)} in {history.log_group}",
                            "LcsExecutionState": "Failed"}))
        return
    add(event(cluster, node, scripts_done, "Info", "Instance", f"Lifecycle scripts completed on instance "
              f"{node.instance_id}", metadata={"LcsExecutionState": "Completed"}))
    if packs.gpu_model(node.instance_type):
        add(event(cluster, node, scripts_done + timedelta(minutes=3), "Info", "Instance",
                  f"Deep health checks passed on instance {node.instance_id}"))
        history.streams[stream_name(AGENT_STREAM, node)] = agent_lines(node, launched, cluster.started_at)
    trouble_events(history, cluster, node, settings)


def trouble_events(history: ClusterHistory, cluster: ClusterFacts, node: Node, settings: dict) -> None:
    """What HyperPod did about a node that is not well: failed it and replaced it, rebooted it, ..."""
    began = cluster.started_at - TROUBLE_AGO
    status = settings["status"]
    if status == "Failure":
        reason = settings["message"] or "Instance failed health checks"
        history.events.append(event(cluster, node, began, "Error", "Instance", f"Instance {node.instance_id}: {reason}",
                                    metadata={"FailureMessage": reason}))
        history.events.append(event(cluster, node, began + timedelta(minutes=1), "Warn", "Instance",
                                    f"Replacement of instance {node.instance_id} started (NodeRecovery Automatic)"))
    elif status in STATUS_EVENTS:
        level, text = STATUS_EVENTS[status]
        history.events.append(event(cluster, node, began, level, "Instance", text.format(iid=node.instance_id)))
    label = (settings["kubernetes"].get("labels") or {}).get(HEALTH_LABEL)
    if label in LABEL_EVENTS and status != "Failure":
        level, text = LABEL_EVENTS[label]
        history.events.append(event(cluster, node, began + timedelta(minutes=2), level, "Instance",
                                    text.format(iid=node.instance_id)))


def event(cluster: ClusterFacts, node: Node | None, at: datetime, level: str, resource_type: str, description: str,
          group: str | None = None, metadata: dict | None = None) -> dict:
    """One ClusterEventDetail; ListClusterEvents answers it without its EventDetails."""
    subject = node.instance_id if node else (group or "cluster")
    record = {
        "EventId": str(uuid.uuid5(EVENT_NAMESPACE, f"{cluster.arn}/{subject}/{description}")),
        "ClusterArn": cluster.arn,
        "ClusterName": cluster.name,
        "ResourceType": resource_type,
        "EventTime": round(at.timestamp(), 3),
        "EventLevel": level,
        "Description": description,
    }
    if node or group:
        record["InstanceGroupName"] = node.group if node else group
    if node:
        record["InstanceId"] = node.instance_id
        record["EventDetails"] = {"EventMetadata": {"Instance": metadata or {}}}
    return record


def stream_name(kind: str, node: Node) -> str:
    return named_stream(kind, node.group, node.instance_id)


def lifecycle_lines(cluster: ClusterFacts, node: Node, launched: datetime, settings: dict) -> list[tuple[int, str]]:
    """The lifecycle scripts' output: on_create.sh fetching and running lifecycle_script.py, whose
    failure is a Python traceback ending in the script that failed and its exit status."""
    source = f"s3://sagemaker-{cluster.name}-lifecycle/config/"
    steps = [
        f"[on_create.sh] Downloading lifecycle scripts from {source}",
        f"[on_create.sh] Running lifecycle_script.py for instance group {node.group} ({node.instance_type})",
        "[lifecycle_script.py] INFO Running utils/install_docker.sh",
    ]
    if settings["lifecycle"] == "failed":
        steps.append("E: Unable to locate package docker-ce")
        # A traceback is written at once, a line a CloudWatch event.
        burst = [
            "Traceback (most recent call last):",
            '  File "/tmp/sagemaker-lifecycle/lifecycle_script.py", line 171, in <module>',
            "    main(args)",
            '  File "/tmp/sagemaker-lifecycle/lifecycle_script.py", line 132, in main',
            '    ExecuteBashScript("./utils/install_docker.sh").run()',
            '  File "/tmp/sagemaker-lifecycle/lifecycle_script.py", line 44, in run',
            "    subprocess.run([\"sudo\", \"bash\", self.script_name], check=True)",
            "subprocess.CalledProcessError: Command '['sudo', 'bash', './utils/install_docker.sh']' returned "
            "non-zero exit status 100.",
            "[on_create.sh] lifecycle_script.py exited with status 1",
        ]
    else:
        steps += ["[lifecycle_script.py] INFO Running utils/install_enroot_pyxis.sh",
                  f"[lifecycle_script.py] INFO Configuring {cluster.type} for this node"]
        burst = ["[on_create.sh] Lifecycle scripts completed"]
    start = int(launched.timestamp() * 1000) + 60_000
    lines = [(start + index * 20_000, line) for index, line in enumerate(steps)]
    ended = start + len(steps) * 20_000
    return lines + [(ended + index, line) for index, line in enumerate(burst)]


def agent_lines(node: Node, launched: datetime, until: datetime) -> list[tuple[int, str]]:
    """The health monitoring agent's JSON lines: a start, a heartbeat every 10 minutes, and for a sick
    GPU pack its detection, as in the agent's documentation."""
    at = launched + timedelta(minutes=12)
    lines = [(at, {"level": "info", "ts": at, "msg": "Health monitoring agent started"})]
    while at + AGENT_HEARTBEAT < until:
        at += AGENT_HEARTBEAT
        lines.append((at, {"level": "info", "ts": at, "msg": "Health checks passed"}))
    if node.pack in AGENT_DETECTIONS:
        reason, condition, message = AGENT_DETECTIONS[node.pack]
        model, count = packs.gpu_model(node.instance_type)
        bus = packs.BUS_IDS[(model.key, count)][packs.sick_gpu_index(node.pack, count)][:5]
        detected = until - TROUBLE_AGO
        detail = {"severity": "warn", "timestamp": detected, "reason": reason,
                  "message": f"Node condition {condition} is now: True, reason: {reason}, "
                             f"message: \"{message.format(bus=bus)}\""}
        lines.append((detected, {"level": "info", "ts": detected, "msg": "NPD caught event: %v", "details: ": detail}))
        lines.sort(key=lambda entry: entry[0])
    return [(int(moment.timestamp() * 1000), json.dumps(record, default=agent_time)) for moment, record in lines]


def agent_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
