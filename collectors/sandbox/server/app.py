"""The sandbox's AWS as one WSGI app: the middleware in front of moto, and the process that serves it.

Run as `python -m collectors.sandbox.server --root DIR` (control.py starts it detached). It binds
127.0.0.1 on a free port and, once listening, writes DIR/server.json = {"pid", "port", "endpoint",
"imds_endpoint"}; a second listener serves the nodes' instance metadata (imds.py).
"""

import argparse
import json
import os
import threading
from collections import Counter
from pathlib import Path

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import s3_backends
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from collectors.sandbox.credentials import CredentialStore
from collectors.sandbox.imds import InstanceMetadataService
from collectors.sandbox.nodes import write_json_atomically
from collectors.sandbox.s3auth import S3Authenticator, credential_scope, is_s3_request
from collectors.sandbox.server.cluster_events import ClusterEventStore
from collectors.sandbox.server.controls import NodeRoleControl, NodeStatusControl
from collectors.sandbox.server.injection import DeniedActions, FaultState, S3UploadFailures
from collectors.sandbox.server.responses import Handler, json_response
from collectors.sandbox.server.sagemaker import apply_moto_patches
from collectors.sandbox.server.sessions import SessionManager

LISTEN_HOST = "127.0.0.1"


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


def bucket_region(name: str) -> str | None:
    """The region moto created a bucket in (its LocationConstraint), None when there is no such bucket."""
    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.get(name)
    return bucket.region_name if bucket is not None else None


def build_app(root: Path, credentials: CredentialStore) -> SandboxMiddleware:
    stats = RequestStats()
    faults = FaultState(root)
    handlers = [
        stats.handle, faults.handle, S3Authenticator(credentials, bucket_region).handle, DeniedActions(faults).handle,
        S3UploadFailures(faults).handle, SessionManager(faults).handle, NodeStatusControl().handle,
        NodeRoleControl(credentials).handle, ClusterEventStore().handle,
    ]
    return SandboxMiddleware(DomainDispatcherApplication(create_backend_app), handlers, stats)


def serve(root: Path) -> None:
    apply_moto_patches()
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
