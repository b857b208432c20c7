"""The API server's HTTP side: the request handler, the test hooks under /_emu/kube/, and the process itself.

Run as `python -m collectors.sandbox.kube --root ROOT` (lifecycle.start_kube starts it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import traceback
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from collectors.sandbox.kube.api import KubeApi, no_such_path
from collectors.sandbox.kube.cluster import build_cluster
from collectors.sandbox.kube.lifecycle import kube_dir
from collectors.sandbox.kube.meta import Clock


class Faults:
    """Armed delays, and a log of every request, for tests that make kubectl wait or check what it asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delays: dict[str, float] = {}
        self.requests: list[dict] = []

    def record(self, method: str, target: str, accept: str) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": target, "accept": accept})

    def delay_for(self, path: str) -> float:
        with self.lock:
            return max([seconds for part, seconds in self.delays.items() if part in path], default=0.0)

    def arm_delay(self, path_contains: str, seconds: float) -> None:
        with self.lock:
            if seconds > 0:
                self.delays[path_contains] = seconds
            else:
                self.delays.pop(path_contains, None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API server: kubectl reuses its connections
    # Headers and body go out in two writes; with Nagle's algorithm on, each answer on a kept-alive
    # connection would then wait for the client's delayed ACK (40 ms), which made `describe nodes` crawl.
    disable_nagle_algorithm = True
    api: KubeApi
    faults: Faults

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_emu/"):
            self.emu_get(url.path)
            return
        self.faults.record("GET", self.path, self.headers.get("Accept", ""))
        delay = self.faults.delay_for(url.path)
        if delay:
            time.sleep(delay)
        params = dict(urllib.parse.parse_qsl(url.query))
        try:
            status, body = self.api.get(url.path, params, self.headers.get("Accept", ""))
        except Exception:  # noqa: BLE001 - a bug here must read as a server error, not a dropped connection
            traceback.print_exc()  # into ROOT/kube/server.log
            status, body = 500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": "sandbox API server error (see kube/server.log)",
                                 "reason": "InternalError", "code": 500}
        self.send_json(status, body)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/_emu/kube/delay":
            self.faults.arm_delay(body["path_contains"], float(body.get("seconds") or 0))
            self.send_json(200, {"delays": self.faults.delays})
        else:
            self.send_json(*method_not_allowed())

    def do_DELETE(self) -> None:  # noqa: N802
        if self.path == "/_emu/kube/requests":
            with self.faults.lock:
                self.faults.requests.clear()
            self.send_json(200, {})
        else:
            self.send_json(*method_not_allowed())

    do_PUT = do_PATCH = lambda self: self.send_json(*method_not_allowed())  # noqa: E731 - read only

    def emu_get(self, path: str) -> None:
        if path == "/_emu/kube/requests":
            with self.faults.lock:
                self.send_json(200, {"requests": list(self.faults.requests)})
        else:
            self.send_json(*no_such_path(path))

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # kubectl gave up (its own timeout, or killed by ours); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # every request is in Faults.requests; a log line per request would only slow the server


def method_not_allowed() -> tuple[int, dict]:
    return 405, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "the sandbox API server is read only", "reason": "MethodNotAllowed", "code": 405}


def serve(root: Path) -> None:
    directory = kube_dir(root)
    cluster = json.loads((directory / "cluster.json").read_text())
    store = build_cluster(cluster, Clock(datetime.now(timezone.utc)))
    handler = type("BoundHandler", (Handler,), {"api": KubeApi(store), "faults": Faults()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    temporary = directory / "server.json.tmp"
    temporary.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid()}))
    os.replace(temporary, directory / "server.json")
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="The sandbox's Kubernetes API server (started by start_kube).")
    parser.add_argument("--root", type=Path, required=True)
    serve(parser.parse_args().root)
