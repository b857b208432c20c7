"""The nodes' instance metadata service: the node role's temporary credentials, IMDSv2 only.

A real node's AWS CLI finds no keys in its environment or files and asks the instance metadata
service: PUT /latest/api/token (header X-aws-ec2-metadata-token-ttl-seconds, 1 to 21600) for a
session token, then, with that token in X-aws-ec2-metadata-token, GET
/latest/meta-data/iam/security-credentials/ for the role's name and
/latest/meta-data/iam/security-credentials/<role> for its keys (EC2 User Guide, "Use the Instance
Metadata Service to access instance metadata" and "Retrieve security credentials from instance
metadata"). A request without a valid token gets 401, as on an instance that requires IMDSv2.

This one listens on 127.0.0.1 (never 169.254.169.254: nothing may leave loopback); the nodes' AWS
config points their CLI at it (ec2_metadata_service_endpoint, node_aws.py). It answers for every
node: they share one role, the instance groups' execution role.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import datetime, timezone

from werkzeug.wrappers import Request, Response

from collectors.sandbox.credentials import CredentialStore

TOKEN_PATH = "/latest/api/token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL_RANGE = range(1, 21601)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def text_response(text: str, status: int = 200) -> Response:
    return Response(text, status=status, content_type="text/plain")


class InstanceMetadataService:
    """A WSGI app: session tokens, and the node role's credentials for holders of a live token."""

    def __init__(self, credentials: CredentialStore) -> None:
        self.credentials = credentials
        self.lock = threading.Lock()
        self.tokens: dict[str, float] = {}  # token -> when it expires

    def __call__(self, environ, start_response):
        return self.answer(Request(environ))(environ, start_response)

    def answer(self, request: Request) -> Response:
        if request.path == TOKEN_PATH:
            return self.new_token(request) if request.method == "PUT" else text_response("", 405)
        if request.method not in ("GET", "HEAD"):
            return text_response("", 405)
        if not self.token_is_live(request.headers.get(TOKEN_HEADER, "")):
            return text_response("", 401)
        if request.path.startswith(CREDENTIALS_PATH):
            return self.role_answer(request.path[len(CREDENTIALS_PATH):])
        return text_response("", 404)

    def new_token(self, request: Request) -> Response:
        ttl = request.headers.get(TOKEN_TTL_HEADER, "")
        if not ttl.isdigit() or int(ttl) not in TOKEN_TTL_RANGE:
            return text_response("", 400)
        token = secrets.token_urlsafe(42)
        now = time.time()
        with self.lock:
            self.tokens = {live: until for live, until in self.tokens.items() if until > now}
            self.tokens[token] = now + int(ttl)
        response = text_response(token)
        response.headers[TOKEN_TTL_HEADER] = ttl
        return response

    def token_is_live(self, token: str) -> bool:
        with self.lock:
            return self.tokens.get(token, 0) > time.time()

    def role_answer(self, role: str) -> Response:
        credential = self.credentials.node_role_credential()
        name = self.credentials.role_name
        if credential is None:
            return text_response("", 404)
        if not role:
            return text_response(name)
        if role.rstrip("/") != name:
            return text_response("", 404)
        return Response(json.dumps({
            "Code": "Success",
            "LastUpdated": iso_time(credential.issued_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": credential.access_key,
            "SecretAccessKey": credential.secret_key,
            "Token": credential.session_token,
            "Expiration": iso_time(credential.expires_at),
        }, indent=2), content_type="text/plain")
