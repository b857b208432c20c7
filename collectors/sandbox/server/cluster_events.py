"""HyperPod's own record of the cluster: cluster events, and its CloudWatch log group (history.py makes them)."""

import base64
import hashlib
import json
import re
import threading
from datetime import datetime, timezone

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.logs.models import logs_backends
from werkzeug.wrappers import Request, Response

from collectors.sandbox.s3auth import credential_scope
from collectors.sandbox.server.responses import aws_json_error, json_response, validation_error
from collectors.sandbox.server.sagemaker import find_cluster


SAGEMAKER_TARGET = "SageMaker."
EVENT_PAGE_DEFAULT = 10  # the sandbox's choice when MaxResults is left out; the model allows 1..100
EVENT_RESOURCE_TYPES = ("Cluster", "InstanceGroup", "Instance")
NODE_ID_RE = re.compile(r"i-[a-f0-9]{8}(?:[a-f0-9]{9})?")
EVENT_ID_RE = re.compile(r"[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}")
CONTINUOUS_ONLY = ("{operation} is only supported for clusters whose NodeProvisioningMode is Continuous; "
                   "cluster {name} has none")


class ClusterEventStore:
    """ListClusterEvents and DescribeClusterEvent (moto has neither), over the events control.py posts.

    As the model and the API reference say: the cluster by name or ARN, events only for clusters
    whose NodeProvisioningMode is Continuous, filters by instance group, node, resource type and time,
    newest first unless SortOrder is Ascending, MaxResults 1..100 with an opaque NextToken.
    POST /_emu/cluster-history {"cluster", "region", "history"} stores a cluster's events (history.py)
    and writes its log group and streams into moto's CloudWatch Logs.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, list[dict]] = {}  # cluster ARN -> events, oldest first

    def handle(self, request: Request) -> Response | None:
        if request.path == "/_emu/cluster-history" and request.method == "POST":
            return self.store(json.loads(request.get_data() or b"{}"))
        target = request.headers.get("X-Amz-Target", "")
        if target not in (SAGEMAKER_TARGET + "ListClusterEvents", SAGEMAKER_TARGET + "DescribeClusterEvent"):
            return None
        operation = target[len(SAGEMAKER_TARGET):]
        body = json.loads(request.get_data() or b"{}")
        scope = credential_scope(request)
        cluster = find_cluster(body.get("ClusterName", ""), scope[2] if scope else None)
        if cluster is None:
            return aws_json_error("ResourceNotFound", f"Cluster {body.get('ClusterName')!r} not found.")
        if cluster.node_provisioning_mode != "Continuous":
            return aws_json_error("ValidationException",
                                  CONTINUOUS_ONLY.format(operation=operation, name=cluster.cluster_name))
        with self.lock:
            events = list(self.events.get(cluster.arn, []))
        if operation == "DescribeClusterEvent":
            return self.describe(events, body)
        return self.list(events, dict(body, ClusterName=cluster.arn))  # a token holds for the name and the ARN

    def store(self, change: dict) -> Response:
        cluster = find_cluster(change.get("cluster", ""), change.get("region"))
        if cluster is None:
            return json_response({"error": f"no cluster {change.get('cluster')}"}, 404)
        history = change["history"]
        for instance_id, launched in history["launched"].items():
            cluster.nodes[instance_id].launch_time = datetime.fromtimestamp(launched, timezone.utc)
        write_log_streams(change["region"], history["log_group"], history["streams"])
        with self.lock:
            self.events[cluster.arn] = sorted(history["events"], key=lambda item: item["EventTime"])
        return json_response({"events": len(history["events"]), "streams": len(history["streams"])})

    def describe(self, events: list[dict], body: dict) -> Response:
        event_id = body.get("EventId", "")
        if not EVENT_ID_RE.fullmatch(event_id):
            return validation_error(event_id, "eventId", f"Member must satisfy regular expression pattern: "
                                                         f"{EVENT_ID_RE.pattern}")
        found = next((item for item in events if item["EventId"] == event_id), None)
        if found is None:
            return aws_json_error("ResourceNotFound", f"Event {event_id} not found.")
        return json_response({"EventDetails": found}, content_type="application/x-amz-json-1.1")

    def list(self, events: list[dict], body: dict) -> Response:
        refused = list_refusal(body)
        if refused is not None:
            return refused
        chosen = [item for item in events if event_matches(item, body)]
        if body.get("SortOrder", "Descending") == "Descending":
            chosen.reverse()
        size = body.get("MaxResults", EVENT_PAGE_DEFAULT)
        query = query_digest(body)
        start = 0
        if body.get("NextToken"):
            start = token_offset(body["NextToken"], query)
            if start is None:
                return aws_json_error("ValidationException", "The NextToken is not valid for this request.")
        page = [{key: value for key, value in item.items() if key != "EventDetails"}
                for item in chosen[start:start + size]]
        answer: dict = {"Events": page}
        if start + size < len(chosen):
            answer["NextToken"] = base64.urlsafe_b64encode(json.dumps([start + size, query]).encode()).decode()
        return json_response(answer, content_type="application/x-amz-json-1.1")


def list_refusal(body: dict) -> Response | None:
    """The ValidationException the real API gives for a value outside the model's constraints."""
    size = body.get("MaxResults", EVENT_PAGE_DEFAULT)
    if not isinstance(size, int) or not 1 <= size <= 100:
        return validation_error(size, "maxResults", "Member must have value between 1 and 100")
    for name, allowed in (("SortOrder", ("Ascending", "Descending")), ("SortBy", ("EventTime",)),
                          ("ResourceType", EVENT_RESOURCE_TYPES)):
        if name in body and body[name] not in allowed:
            return validation_error(body[name], name[0].lower() + name[1:],
                                    f"Member must satisfy enum value set: [{', '.join(allowed)}]")
    if "NodeId" in body and not NODE_ID_RE.fullmatch(str(body["NodeId"])):
        return validation_error(body["NodeId"], "nodeId",
                                f"Member must satisfy regular expression pattern: {NODE_ID_RE.pattern}")
    return None


def event_matches(event: dict, body: dict) -> bool:
    if "InstanceGroupName" in body and event.get("InstanceGroupName") != body["InstanceGroupName"]:
        return False
    if "NodeId" in body and event.get("InstanceId") != body["NodeId"]:
        return False
    if "ResourceType" in body and event["ResourceType"] != body["ResourceType"]:
        return False
    if "EventTimeAfter" in body and event["EventTime"] <= body["EventTimeAfter"]:
        return False
    return "EventTimeBefore" not in body or event["EventTime"] < body["EventTimeBefore"]


def query_digest(body: dict) -> str:
    """What a page token belongs to: the request without its paging."""
    query = {key: value for key, value in body.items() if key not in ("NextToken", "MaxResults")}
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def token_offset(token: str, query: str) -> int | None:
    try:
        offset, digest = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        return None
    return offset if digest == query and isinstance(offset, int) and offset >= 0 else None


def write_log_streams(region: str, group: str, streams: dict[str, list]) -> None:
    """The cluster's log group and streams, straight into moto's CloudWatch Logs (a thousand nodes'
    streams in one request, not two thousand)."""
    logs = logs_backends[DEFAULT_ACCOUNT_ID][region]
    logs.ensure_log_group(group)
    for name, lines in streams.items():
        logs.create_log_stream(group, name)
        logs.put_log_events(group, name, [{"timestamp": at, "message": message} for at, message in lines])
