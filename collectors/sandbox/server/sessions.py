"""SSM StartSession and TerminateSession for HyperPod targets (moto has neither for them)."""

import json
import secrets
import threading
import time
from datetime import datetime, timezone

from werkzeug.wrappers import Request, Response

from collectors.sandbox.s3auth import credential_scope
from collectors.sandbox.server.injection import FaultState
from collectors.sandbox.server.responses import aws_json_error, json_response
from collectors.sandbox.server.sagemaker import sagemaker_clusters

SSM_TARGET_PREFIX = "sagemaker-cluster:"


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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()
