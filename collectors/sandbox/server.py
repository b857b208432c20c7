"""The sandbox's AWS: moto in server mode on 127.0.0.1, patched for what HyperPod needs.

Run as `python -m collectors.sandbox.server --root DIR` (control.py starts it detached). It binds
127.0.0.1 on a free port and, once listening, writes DIR/server.json = {"pid", "port", "endpoint"}.

moto lacks parts of the HyperPod API (Orchestrator, node addresses, working pagination, random-looking
cluster ids) and SSM StartSession. The patches below add them; they touch moto internals, so
`check_moto_internals()` runs first and stops the server loudly when those internals have moved.

A WSGI middleware in front of moto answers what moto lacks and injects the scenario's faults the way
the real services show them (docs/scenarios.md): ThrottlingException above a StartSession rate,
TargetNotConnected for chosen nodes, S3 5xx errors for chosen keys. `GET|POST /_emu/faults` reads and
changes the faults at run time; the server writes them to ROOT/faults.json for the session plugin and
applies the faults that live on the nodes themselves (nodes.apply_node_faults).

S3 requests are checked as S3 checks them before moto sees them (s3auth.py: SigV4 only, verified, in
the bucket's region, unexpired, and allowed to the caller). A second listener serves the nodes'
instance metadata (imds.py): the node role's temporary credentials, set by `POST /_emu/node-role`;
server.json then also holds "imds_endpoint".
"""

import argparse
import base64
import functools
import hashlib
import inspect
import json
import re
import os
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import moto
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.logs.models import logs_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import s3_backends
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from collectors.errors import SandboxError
from collectors.sandbox.credentials import CredentialStore, node_role_statements
from collectors.sandbox.imds import InstanceMetadataService
from collectors.sandbox.nodes import apply_node_faults, write_json_atomically
from collectors.sandbox.s3auth import (
    S3Authenticator,
    S3Refusal,
    credential_scope,
    is_api_call,
    is_s3_request,
    s3_error_response,
)
from collectors.sandbox.scenario import (
    NODE_FAULT_DEFAULTS,
    NODE_STATUSES,
    SCENARIO_FAULT_DEFAULTS,
    check_fault_change,
    merged_faults,
)

LISTEN_HOST = "127.0.0.1"
SSM_TARGET_PREFIX = "sagemaker-cluster:"
MAX_RESULTS_RANGE = range(1, 101)  # the real ListClusterNodes accepts 1..100

# ---------------------------------------------------------------------------------------------
# Deterministic stand-ins for what AWS assigns at random, so a sandbox is reproducible.


def cluster_id_for(cluster_name: str) -> str:
    """12 characters of [a-z0-9], like the last segment of a real cluster ARN."""
    number = int.from_bytes(hashlib.sha256(cluster_name.encode()).digest(), "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    digits = []
    for _ in range(12):
        number, digit = divmod(number, 36)
        digits.append(alphabet[digit])
    return "".join(digits)


def instance_id_for(cluster_name: str, group: str, index: int) -> str:
    return "i-0" + hashlib.sha256(f"{cluster_name}/{group}/{index}".encode()).hexdigest()[:16]


def node_ip(node_index: int) -> str:
    """Loopback addresses only, so nothing ever tries to reach a private-range address."""
    return f"127.10.{node_index // 250}.{10 + node_index % 250}"


def private_dns_hostname(ip: str, region: str) -> str:
    return f"ip-{ip.replace('.', '-')}.{region}.compute.internal"


def availability_zone_id(region: str) -> str:
    """us-west-2 -> usw2-az1: the shape of a real AZ id."""
    area, direction, number = region.split("-")
    return f"{area}{direction[0]}{number}-az1"


# ---------------------------------------------------------------------------------------------
# moto patches


def check_moto_internals() -> None:
    """Fail loudly when the moto code these patches rely on has moved (moto is pinned to 5.2.*)."""
    problems = []
    if not moto.__version__.startswith("5.2."):
        problems.append(f"moto {moto.__version__} is not 5.2.*")
    expected_methods = {
        sagemaker_models.Cluster: ["__init__", "describe"],
        sagemaker_models.ClusterNode: ["__init__", "describe", "summary"],
        sagemaker_models.SageMakerModelBackend: [
            "create_cluster", "describe_cluster", "describe_cluster_node", "list_cluster_nodes", "delete_cluster",
        ],
        SageMakerResponse: ["create_cluster", "list_cluster_nodes"],
    }
    for owner, names in expected_methods.items():
        problems += [f"{owner.__name__}.{name} is missing" for name in names if not hasattr(owner, name)]
    cluster_params = list(inspect.signature(sagemaker_models.Cluster.__init__).parameters)
    if cluster_params[:4] != ["self", "cluster_name", "region_name", "account_id"]:
        problems.append(f"Cluster.__init__ parameters changed: {cluster_params}")
    node_source = inspect.getsource(sagemaker_models.ClusterNode.__init__)
    for attribute in ("self.instance_id", "self.status"):
        if attribute not in node_source:
            problems.append(f"ClusterNode.__init__ no longer sets {attribute}")
    pagination = sagemaker_models.PAGINATION_MODEL.get("list_cluster_nodes", {})
    if pagination.get("unique_attribute") != "arn":
        problems.append(f"list_cluster_nodes pagination changed: {pagination}")
    if problems:
        raise RuntimeError("sandbox server: moto internals moved, patches would be wrong: " + "; ".join(problems))


def resolve_cluster_name(backend, name_or_arn: str) -> str:
    """Real APIs take the cluster name or its ARN; moto's ARN handling assumes the ARN ends in the name."""
    for cluster in backend.clusters.values():
        if cluster.arn == name_or_arn:
            return cluster.cluster_name
    return name_or_arn


def accepting_cluster_arn(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if "cluster_name" in kwargs:
            kwargs["cluster_name"] = resolve_cluster_name(self, kwargs["cluster_name"])
        else:
            args = (resolve_cluster_name(self, args[0]), *args[1:])
        return method(self, *args, **kwargs)

    return wrapper


def with_cluster_id_arn(original_init: Callable) -> Callable:
    @functools.wraps(original_init)
    def init(self, cluster_name, region_name, account_id, *args, **kwargs):
        original_init(self, cluster_name, region_name, account_id, *args, **kwargs)
        # Real ARNs end in a random cluster id, not the name; SSM targets use that id.
        self.arn = f"{self.arn.rsplit('/', 1)[0]}/{cluster_id_for(cluster_name)}"
        self.orchestrator = None
        self.node_recovery = "Automatic"
        self.node_provisioning_mode = None

    return init


def give_nodes_real_identities(cluster) -> None:
    """Replace moto's `<group>-<i>` node ids with instance ids, and add addresses and placement."""
    nodes = list(cluster.nodes.values())
    cluster.nodes = {}
    for node_index, node in enumerate(nodes):
        _, _, index_in_group = node.instance_id.rpartition("-")
        node.instance_id = instance_id_for(cluster.cluster_name, node.instance_group_name, int(index_in_group))
        node.private_primary_ip = node_ip(node_index)
        node.private_dns_hostname = private_dns_hostname(node.private_primary_ip, cluster.region_name)
        node.placement = {
            "AvailabilityZone": f"{cluster.region_name}a",
            "AvailabilityZoneId": availability_zone_id(cluster.region_name),
        }
        node.status_message = ""
        cluster.nodes[node.instance_id] = node


def create_cluster_with_orchestrator(original: Callable) -> Callable:
    @functools.wraps(original)
    def create_cluster(self):
        result = original(self)
        cluster = self.sagemaker_backend.clusters[self._get_param("ClusterName")]
        cluster.orchestrator = self._get_param("Orchestrator")
        cluster.node_recovery = self._get_param("NodeRecovery") or "Automatic"
        # Continuous: what ListClusterEvents and DescribeClusterEvent need (ClusterEventStore).
        cluster.node_provisioning_mode = self._get_param("NodeProvisioningMode")
        give_nodes_real_identities(cluster)
        return result

    return create_cluster


def list_cluster_nodes_with_limit_check(original: Callable) -> Callable:
    @functools.wraps(original)
    def list_cluster_nodes(self):
        max_results = self._get_param("MaxResults")
        if max_results is not None and max_results not in MAX_RESULTS_RANGE:
            raise ValidationError(
                message=f"1 validation error detected: Value '{max_results}' at 'maxResults' failed to satisfy "
                f"constraint: Member must have value between 1 and {MAX_RESULTS_RANGE[-1]}"
            )
        return original(self)

    return list_cluster_nodes


def cluster_describe_with_orchestrator(original: Callable) -> Callable:
    @functools.wraps(original)
    def describe(self):
        description = original(self)
        if self.orchestrator:
            description["Orchestrator"] = self.orchestrator
        description["NodeRecovery"] = self.node_recovery
        if self.node_provisioning_mode:
            description["NodeProvisioningMode"] = self.node_provisioning_mode
        description["InstanceGroups"] = [{**group, "Status": "InService"} for group in self.instance_groups]
        return description

    return describe


def node_instance_status(node) -> dict:
    return {"Status": node.status, "Message": node.status_message}


def node_describe_with_addresses(original: Callable) -> Callable:
    @functools.wraps(original)
    def describe(self):
        details = original(self)
        details["InstanceStatus"] = node_instance_status(self)
        details["PrivatePrimaryIp"] = self.private_primary_ip
        details["PrivateDnsHostname"] = self.private_dns_hostname
        details["Placement"] = self.placement
        return details

    return describe


def node_summary_with_hostname(original: Callable) -> Callable:
    @functools.wraps(original)
    def summary(self):
        node_summary = original(self)
        node_summary["InstanceStatus"] = node_instance_status(self)
        node_summary["PrivateDnsHostname"] = self.private_dns_hostname
        return node_summary

    return summary


def apply_moto_patches() -> None:
    check_moto_internals()
    # moto's paginator keys pages on `arn`, which ClusterNode lacks (HTTP 500 with MaxResults).
    sagemaker_models.ClusterNode.arn = property(lambda node: node.instance_id)
    cluster_class = sagemaker_models.Cluster
    cluster_class.__init__ = with_cluster_id_arn(cluster_class.__init__)
    cluster_class.describe = cluster_describe_with_orchestrator(cluster_class.describe)
    node_class = sagemaker_models.ClusterNode
    node_class.describe = node_describe_with_addresses(node_class.describe)
    node_class.summary = node_summary_with_hostname(node_class.summary)
    backend = sagemaker_models.SageMakerModelBackend
    for name in ("describe_cluster", "describe_cluster_node", "list_cluster_nodes", "delete_cluster"):
        setattr(backend, name, accepting_cluster_arn(getattr(backend, name)))
    SageMakerResponse.create_cluster = create_cluster_with_orchestrator(SageMakerResponse.create_cluster)
    SageMakerResponse.list_cluster_nodes = list_cluster_nodes_with_limit_check(
        SageMakerResponse.list_cluster_nodes
    )


apply_moto_patches()

# ---------------------------------------------------------------------------------------------
# Reading moto's state from the middleware


def sagemaker_clusters(region: str | None = None) -> list:
    """Clusters of the default account, in one region or in every region moto has created."""
    account_backends = sagemaker_models.sagemaker_backends[DEFAULT_ACCOUNT_ID]
    # dict.values() lists only the regions already created; the subscript would create one.
    backends = [account_backends[region]] if region else list(dict.values(account_backends))
    return [cluster for backend in backends for cluster in list(backend.clusters.values())]


def find_cluster(name_or_arn: str, region: str | None = None):
    for cluster in sagemaker_clusters(region):
        if name_or_arn in (cluster.cluster_name, cluster.arn):
            return cluster
    return None


def find_ssm_target_node(target: str, region: str):
    """The node behind `sagemaker-cluster:{cluster-id}_{group}-{instance-id}`, or None."""
    if not target.startswith(SSM_TARGET_PREFIX):
        return None
    cluster_id, _, group_and_instance = target[len(SSM_TARGET_PREFIX):].partition("_")
    group, separator, instance_tail = group_and_instance.rpartition("-i-")
    if not separator:
        return None
    for cluster in sagemaker_clusters(region):
        if cluster.arn.rsplit("/", 1)[-1] == cluster_id:
            node = cluster.nodes.get("i-" + instance_tail)
            if node is not None and node.instance_group_name == group:
                return node
    return None


# ---------------------------------------------------------------------------------------------
# The middleware: handlers answer what moto lacks, everything else goes to moto


def json_response(body, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(json.dumps(body, default=str), status=status, content_type=content_type)


def aws_json_error(code: str, message: str, status: int = 400) -> Response:
    response = json_response({"__type": code, "message": message}, status, "application/x-amz-json-1.1")
    response.headers["x-amzn-ErrorType"] = code
    response.headers["x-amzn-RequestId"] = request_id()
    return response


def request_id() -> str:
    hex_id = secrets.token_hex(16)
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


Handler = Callable[[Request], Response | None]


class RequestStats:
    """Per-operation request counts, so tests can assert pagination and retries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def count(self, request: Request) -> None:
        with self.lock:
            self.counts[self.key(request)] += 1

    @staticmethod
    def key(request: Request) -> str:
        target = request.headers.get("X-Amz-Target")
        if target:
            return target
        scope = credential_scope(request)
        # moto routes unsigned and presigned requests to S3 as well.
        service = scope[3] if scope else "s3"
        first_path_segment = request.path.lstrip("/").split("/", 1)[0]
        return f"{service} {request.method} {first_path_segment}"

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_emu/stats":
            return None
        with self.lock:
            snapshot = dict(self.counts)
            if request.method == "DELETE":
                self.counts.clear()
        return json_response(snapshot)


class SessionManager:
    """SSM StartSession/TerminateSession for HyperPod targets, with a registry of sessions.

    Faults: StartSession calls above the scenario's rate get ThrottlingException, as the real API
    gives them (a token bucket: `rate` calls a second, bursts of up to max(1, rate)); a node marked
    `target_not_connected` (its SSM agent is gone, whatever its HyperPod status) gets TargetNotConnected.
    """

    def __init__(self, faults: "FaultState") -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}
        self.faults = faults
        self.rate: float | None = None
        self.tokens = 1.0
        self.refilled_at = time.monotonic()

    def handle(self, request: Request) -> Response | None:
        target = request.headers.get("X-Amz-Target")
        if target == "AmazonSSM.StartSession":
            return self.start_session(request)
        if target == "AmazonSSM.TerminateSession":
            return self.terminate_session(request)
        if request.path == "/_emu/sessions" and request.method == "GET":
            with self.lock:
                return json_response([dict(session_id=sid, **info) for sid, info in self.sessions.items()])
        return None

    def take_token(self) -> bool:
        """One StartSession allowed by the rate limit (always, without one)."""
        rate = self.faults.scenario["start_session_rate"]
        with self.lock:
            now = time.monotonic()
            burst = max(1.0, rate or 0.0)
            if rate != self.rate:  # a new limit starts with a full bucket
                self.rate, self.tokens, self.refilled_at = rate, burst, now
            if rate is None:
                return True
            self.tokens = min(burst, self.tokens + (now - self.refilled_at) * rate)
            self.refilled_at = now
            if self.tokens < 1.0:
                return False
            self.tokens -= 1.0
            return True

    def start_session(self, request: Request) -> Response:
        scope = credential_scope(request)
        region = scope[2] if scope else "us-east-1"
        target = json.loads(request.get_data() or b"{}").get("Target", "")
        if not self.take_token():
            return aws_json_error("ThrottlingException", "Rate exceeded")
        node = find_ssm_target_node(target, region)
        if node is None or node.status != "Running" or self.faults.node(node.instance_id)["target_not_connected"]:
            return aws_json_error("TargetNotConnected", f"{target} is not connected.")
        user = scope[0] if scope else "sandbox"
        session_id = f"{user}-{secrets.token_hex(9)[:17]}"
        with self.lock:
            self.sessions[session_id] = {"target": target, "started": utc_now(), "terminated": None}
        return json_response(
            {
                "SessionId": session_id,
                "TokenValue": secrets.token_urlsafe(96),
                "StreamUrl": f"wss://ssmmessages.{region}.amazonaws.com/v1/data-channel/{session_id}"
                "?role=publish_subscribe",
            },
            content_type="application/x-amz-json-1.1",
        )

    def terminate_session(self, request: Request) -> Response:
        session_id = json.loads(request.get_data() or b"{}").get("SessionId", "")
        with self.lock:
            if session_id in self.sessions:
                self.sessions[session_id]["terminated"] = utc_now()
        return json_response({"SessionId": session_id}, content_type="application/x-amz-json-1.1")


NODE_SIDE_FAULTS = ("slow", "hang", "tmp_free_mb")  # the ones that change the node itself


class FaultState:
    """The faults now: scenario-wide and per node. GET|POST /_emu/faults.

    A POST takes {"faults": {...}, "nodes": {instance id: {...}}} with the keys of docs/scenarios.md;
    keys left out stay as they are, a null puts one back to its default. Every change is written to
    ROOT/faults.json (the session plugin reads it when a session starts) and the changed nodes' own
    faults (slow, hang, tmp_free_mb) are applied to them at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.scenario = dict(SCENARIO_FAULT_DEFAULTS)
        self.nodes: dict[str, dict] = {}

    def node(self, instance_id: str) -> dict:
        return self.nodes.get(instance_id, NODE_FAULT_DEFAULTS)

    def snapshot(self) -> dict:
        return {"faults": self.scenario, "nodes": self.nodes}

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_emu/faults":
            return None
        if request.method == "GET":
            with self.lock:
                return json_response(self.snapshot())
        if request.method != "POST":
            return json_response({"error": "GET or POST"}, 405)
        try:
            return json_response(self.change(json.loads(request.get_data() or b"{}")))
        except (SandboxError, ValueError) as error:
            return json_response({"error": str(error)}, 400)
        except Exception as error:  # a node could not take its fault: say why, keep serving
            return json_response({"error": f"{type(error).__name__}: {error}"}, 500)

    def change(self, requested) -> dict:
        instance_ids = {node_id for cluster in sagemaker_clusters() for node_id in cluster.nodes}
        change = check_fault_change(requested, instance_ids)
        with self.lock:
            self.scenario = merged_faults(self.scenario, change["faults"], SCENARIO_FAULT_DEFAULTS)
            for instance_id, node_change in change["nodes"].items():
                merged = merged_faults(self.node(instance_id), node_change, NODE_FAULT_DEFAULTS)
                if any(merged[key] != self.node(instance_id)[key] for key in NODE_SIDE_FAULTS):
                    apply_node_faults(self.root, instance_id, merged)
                self.nodes[instance_id] = merged
            write_json_atomically(self.root / "faults.json", self.snapshot())
            return self.snapshot()


S3_ERRORS = {
    403: ("AccessDenied", "Access Denied"),  # what a missing s3:PutObject permission looks like
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class S3UploadFailures:
    """The scenario's `s3_put_failures`: uploads (PUT, POST) to matching keys fail as S3 fails them.

    Each rule fails every matching key `times` times (per key), then lets it through; "always" never
    does; a new list of rules starts counting afresh. The body is read first, as S3 reads it before
    it answers.
    """

    def __init__(self, faults: FaultState) -> None:
        self.faults = faults
        self.lock = threading.Lock()
        self.failed: Counter[tuple[str, int, str]] = Counter()

    def handle(self, request: Request) -> Response | None:
        if request.method not in ("PUT", "POST") or request.path.startswith("/_emu/") or is_api_call(request):
            return None
        key = urllib.parse.unquote(request.path.lstrip("/").partition("/")[2])
        rules = self.faults.scenario["s3_put_failures"]
        for number, rule in enumerate(rules):
            if key and rule["key_contains"] in key and self.fails_now((json.dumps(rules), number, key), rule):
                request.get_data()
                status = rule.get("status", 500)
                return s3_error_response(request, S3Refusal(status, *S3_ERRORS[status]))
        return None

    def fails_now(self, counted_as: tuple[str, int, str], rule: dict) -> bool:
        """Whether this upload fails; `counted_as` is (the rules, which rule, the key)."""
        times = rule.get("times", 1)
        with self.lock:
            if times != "always" and self.failed[counted_as] >= times:
                return False
            self.failed[counted_as] += 1
            return True


def bucket_region(name: str) -> str | None:
    """The region moto created a bucket in (its LocationConstraint), None when there is no such bucket."""
    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.get(name)
    return bucket.region_name if bucket is not None else None


class NodeRoleControl:
    """POST /_emu/node-role {"role", "bucket", "prefix"}: the nodes' role, and the S3 prefix it may write under."""

    def __init__(self, credentials: CredentialStore) -> None:
        self.credentials = credentials

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_emu/node-role" or request.method != "POST":
            return None
        role = json.loads(request.get_data() or b"{}")
        if not all(isinstance(role.get(key), str) and role[key] for key in ("role", "bucket", "prefix")):
            return json_response({"error": "role, bucket and prefix must be non-empty strings"}, 400)
        statements = node_role_statements(role["bucket"], role["prefix"])
        self.credentials.set_node_role(role["role"], statements)
        return json_response({"role": role["role"], "allowed": [vars(statement) for statement in statements]})


class NodeStatusControl:
    """POST /_emu/node-status {"cluster", "instance", "status", "message"}: make a node unhealthy (or well)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_emu/node-status" or request.method != "POST":
            return None
        change = json.loads(request.get_data() or b"{}")
        if change.get("status") not in NODE_STATUSES:
            return json_response({"error": f"status must be one of {NODE_STATUSES}"}, 400)
        cluster = find_cluster(change.get("cluster", ""), change.get("region"))
        node = cluster.nodes.get(change.get("instance", "")) if cluster else None
        if node is None:
            missing = f"no node {change.get('instance')} in cluster {change.get('cluster')}"
            return json_response({"error": missing}, 404)
        with self.lock:
            node.status = change["status"]
            node.status_message = change.get("message", "")
        return json_response(node_instance_status(node))


# ---------------------------------------------------------------------------------------------
# HyperPod's own record of the cluster: cluster events, and its CloudWatch log group

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


def validation_error(value, field: str, constraint: str) -> Response:
    return aws_json_error("ValidationException",
                          f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
                          f"{constraint}")


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


class DeniedActions:
    """The scenario's `denied_actions` fault: the operator's identity lacks these IAM permissions, so each
    such call answers AccessDeniedException with IAM's implicit-deny message
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html)."""

    SERVICES = {"SageMaker": "sagemaker", "Logs_20140328": "logs", "AmazonSSM": "ssm"}

    def __init__(self, faults: "FaultState") -> None:
        self.faults = faults

    def handle(self, request: Request) -> Response | None:
        prefix, _, operation = request.headers.get("X-Amz-Target", "").partition(".")
        action = f"{self.SERVICES.get(prefix)}:{operation}"
        if action not in self.faults.scenario["denied_actions"]:
            return None
        scope = credential_scope(request)
        region = scope[2] if scope else "us-east-1"
        resource = denied_resource(action, json.loads(request.get_data() or b"{}"), region)
        return aws_json_error("AccessDeniedException",
                              f"User: arn:aws:iam::{DEFAULT_ACCOUNT_ID}:user/sandbox-operator is not authorized to "
                              f"perform: {action} on resource: {resource} because no identity-based policy allows "
                              f"the {action} action")


def denied_resource(action: str, body: dict, region: str) -> str:
    if action.startswith("logs:") and body.get("logGroupName"):
        return f"arn:aws:logs:{region}:{DEFAULT_ACCOUNT_ID}:log-group:{body['logGroupName']}:log-stream:"
    cluster = find_cluster(body.get("ClusterName", ""), region) if body.get("ClusterName") else None
    return cluster.arn if cluster else "*"


# Request headers moto copies into its S3 answers; S3 never sends them (no output shape has them).
ECHOED_REQUEST_HEADERS = {"x-amz-content-sha256", "x-amz-sdk-checksum-algorithm"}


def without_echoed_request_headers(start_response):
    def start(status, headers, exc_info=None):
        kept = [(name, value) for name, value in headers if name.lower() not in ECHOED_REQUEST_HEADERS]
        return start_response(status, kept, exc_info)

    return start


class SandboxMiddleware:
    """Counts requests, lets each handler in turn answer, and passes the rest to moto.

    A handler returns a Response or None; it reads the request body only when it answers, because
    moto reads the same WSGI input afterwards (the S3 check, which hashes a signed body, hands moto a
    copy). S3's own checks come before the fault rules, as S3 authenticates a request before anything else.
    """

    def __init__(self, moto_app, handlers: list[Handler], stats: RequestStats) -> None:
        self.moto_app = moto_app
        self.handlers = handlers
        self.stats = stats

    def __call__(self, environ, start_response):
        request = Request(environ)
        if not request.path.startswith("/_emu/"):
            self.stats.count(request)
        for handler in self.handlers:
            response = handler(request)
            if response is not None:
                return response(environ, start_response)
        if is_s3_request(request):
            start_response = without_echoed_request_headers(start_response)
        if request.headers.get("X-Amz-Target", "").startswith(LOGS_TARGET):
            return without_null_members(self.moto_app, environ, start_response)
        return self.moto_app(environ, start_response)


LOGS_TARGET = "Logs_20140328."


def without_null_members(app, environ, start_response):
    """moto's CloudWatch Logs answers carry `"nextToken": null` where the service leaves the member out
    (FilterLogEvents on its last page): members set to null are dropped from a JSON answer."""
    captured: dict = {}

    def capture(status, headers, exc_info=None):
        captured.update(status=status, headers=headers, exc_info=exc_info)
        return lambda data: None

    body = b"".join(app(environ, capture))
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if isinstance(document, dict) and None in document.values():
        body = json.dumps({key: value for key, value in document.items() if value is not None}).encode()
    headers = [(name, str(len(body)) if name.lower() == "content-length" else value)
               for name, value in captured["headers"]]
    start_response(captured["status"], headers, captured["exc_info"])
    return [body]


def build_app(root: Path, credentials: CredentialStore) -> SandboxMiddleware:
    stats = RequestStats()
    faults = FaultState(root)
    handlers = [
        stats.handle, faults.handle, S3Authenticator(credentials, bucket_region).handle, DeniedActions(faults).handle,
        S3UploadFailures(faults).handle, SessionManager(faults).handle, NodeStatusControl().handle,
        NodeRoleControl(credentials).handle, ClusterEventStore().handle,
    ]
    return SandboxMiddleware(DomainDispatcherApplication(create_backend_app), handlers, stats)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def serve(root: Path) -> None:
    credentials = CredentialStore()
    server = make_server(LISTEN_HOST, 0, build_app(root, credentials), threaded=True)
    imds = make_server(LISTEN_HOST, 0, InstanceMetadataService(credentials), threaded=True)
    threading.Thread(target=imds.serve_forever, name="imds", daemon=True).start()
    # make_server has bound and is listening: connections queue until serve_forever accepts them.
    port = server.server_port
    write_json_atomically(root / "server.json", {
        "pid": os.getpid(), "port": port, "endpoint": f"http://{LISTEN_HOST}:{port}",
        "imds_endpoint": f"http://{LISTEN_HOST}:{imds.server_port}/",
    })
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="sandbox folder; server.json is written there")
    serve(parser.parse_args().root)


if __name__ == "__main__":
    main()
