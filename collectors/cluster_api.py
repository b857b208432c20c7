"""The control plane's record of a cluster: where HyperPod keeps it, and how the cluster stage reads it.

One home for what the cluster stage (collectors/stages/cluster.py), the report (collectors/report/
cluster_api.py) and the sandbox (collectors/sandbox/history.py) share: the bundle's layout, the log
group and stream names HyperPod uses, the `--since` window as a moment.

Facts relied on (each from the page named):
- ListClusterEvents filters by InstanceGroupName, NodeId (one of each per call), ResourceType and
  EventTimeAfter/Before, 1..100 events a page; it and DescribeClusterEvent work only for clusters
  whose NodeProvisioningMode is Continuous (botocore's sagemaker service-2.json; the HyperPod cluster
  events reference, docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-cluster-events-reference.html).
- HyperPod's log group is /aws/sagemaker/Clusters/<cluster name>/<cluster id>, with a stream per node
  and kind: LifecycleConfig/<group>/<instance id> (the lifecycle scripts) and
  SagemakerHealthMonitoringAgent/<group>/<instance id> (docs.aws.amazon.com/sagemaker/latest/dg/
  sagemaker-hyperpod-eks-resiliency-health-monitoring-agent.html; AmazonSageMakerClusterInstanceRolePolicy
  lets nodes write to arn:aws:logs:*:*:log-group:/aws/sagemaker/Clusters/*).
- GetLogEvents with startFromHead=false starts at the stream's newest events and pages back with
  nextBackwardToken; at the end of the stream it returns the token it was given
  (docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_GetLogEvents.html).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from collectors.layout import CLUSTER_API_BUNDLE

TARBALL = CLUSTER_API_BUNDLE
TOP_FOLDER = "cluster_api"
MANIFEST = "manifest.tsv"
MANIFEST_COLUMNS = ("file", "action", "status", "calls", "seconds", "bytes", "redactions", "note")
# Bundle members: the API's answers as JSON, each log stream as text (one event a line, UTC stamp first).
DESCRIBE_CLUSTER = "describe_cluster.json"
LIST_CLUSTER_NODES = "list_cluster_nodes.json"
NODES_FOLDER = "nodes"  # nodes/<instance id>.json: DescribeClusterNode of the nodes that are not Running
LIST_CLUSTER_EVENTS = "list_cluster_events.json"
EVENTS_FOLDER = "events"  # events/<event id>.json: DescribeClusterEvent of the Error events
LOG_STREAMS = "log_streams.json"
LOGS_FOLDER = "logs"  # logs/<stream name>.log
LOG_GROUP_PREFIX = "/aws/sagemaker/Clusters"
LIFECYCLE_STREAM = "LifecycleConfig"
AGENT_STREAM = "SagemakerHealthMonitoringAgent"
# What a call's outcome is recorded as, in the manifest and the state.
OK, DENIED, FAILED, NOT_AVAILABLE = "ok", "denied", "failed", "not_available"
ACCESS_DENIED_CODES = ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation")
DURATION_RE = re.compile(r"^(\d{1,6})([smhdw])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def log_group_name(cluster_name: str, cluster_arn: str) -> str:
    return f"{LOG_GROUP_PREFIX}/{cluster_name}/{cluster_arn.rsplit('/', 1)[-1]}"


def stream_name(kind: str, group: str, instance_id: str) -> str:
    return f"{kind}/{group}/{instance_id}"


def stream_node(name: str) -> str | None:
    """The instance id a HyperPod stream belongs to (its last part), None for any other stream."""
    last = name.rsplit("/", 1)[-1]
    return last if name.count("/") >= 2 and last.startswith("i-") else None


def stream_file(name: str) -> str:
    return f"{LOGS_FOLDER}/{name}.log"


def window_start(since: str, now: datetime) -> datetime | None:
    """The start of the `--since` window (the node script's grammar: 30m, 12h, 3d, 2w, an ISO date or
    date and time, or all); None for all. A time without a zone is UTC."""
    if since == "all":
        return None
    duration = DURATION_RE.match(since)
    if duration:
        return now - timedelta(seconds=int(duration[1]) * UNIT_SECONDS[duration[2]])
    moment = datetime.fromisoformat(since)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def utc_stamp(epoch_ms: int) -> str:
    """A log event's time as the report reads log lines: ISO 8601 UTC, milliseconds."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
