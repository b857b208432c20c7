"""Control endpoints that change what the sandbox's AWS says: the nodes' role, and a node's HyperPod status."""

import json
import threading

from werkzeug.wrappers import Request, Response

from collectors.sandbox.credentials import CredentialStore, node_role_statements
from collectors.sandbox.scenario import NODE_STATUSES
from collectors.sandbox.server.responses import json_response
from collectors.sandbox.server.sagemaker import find_cluster, node_instance_status


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
