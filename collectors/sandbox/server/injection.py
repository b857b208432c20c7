"""The faults armed now (GET|POST /_emu/faults), and the handlers that show them as the real services do.

Scenario-wide and per-node faults (docs/scenarios.md; their format is faults.py's), failed S3
uploads for chosen keys, and IAM actions the operator is denied. The session faults are shown by
sessions.py and the stand-in session-manager-plugin, which reads ROOT/faults.json.
"""

import json
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

from moto.core.models import DEFAULT_ACCOUNT_ID
from werkzeug.wrappers import Request, Response

from collectors.errors import SandboxError
from collectors.sandbox.nodes import apply_node_faults, write_json_atomically
from collectors.sandbox.s3auth import S3Refusal, credential_scope, is_api_call, s3_error_response
from collectors.sandbox.faults import NODE_FAULT_DEFAULTS, SCENARIO_FAULT_DEFAULTS, check_fault_change, merged_faults
from collectors.sandbox.server.responses import aws_json_error, json_response
from collectors.sandbox.server.sagemaker import find_cluster, sagemaker_clusters


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
