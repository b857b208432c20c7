"""The sandbox's two servers, its AWS (server/) and its Kubernetes API server (kube/), as detached children.

Each is `python -m <package> --root ROOT`, run from a folder of its own (ROOT for the AWS, ROOT/kube for
Kubernetes) in a session of its own, so that it outlives `invoke sandbox.up`. It logs to server.log in
that folder, is recorded there by PID and start time (process.json), is ready once it has written
server.json there, and is stopped by its record, so a later process (`invoke sandbox.down`) stops exactly it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collectors.errors import SandboxError
from collectors.sandbox.nodes import (
    kill_if_same,
    process_identity,
    read_process_record,
    record_process,
    wait_until_gone,
)

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds `collectors/`
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def start_server(package: str, root: Path, folder: Path) -> subprocess.Popen:
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", package, "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
            env=dict(os.environ, PYTHONPATH=python_path), start_new_session=True,
        )
    record_process(folder, {"server": process_identity(server.pid)})
    return server


def await_server(folder: Path, server: subprocess.Popen, name: str) -> dict:
    """What the server wrote to server.json once it listens; SandboxError with its log when it never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = folder / "server.json"
    while not ready.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            log_tail = (folder / "server.log").read_text(errors="replace")[-2000:]
            raise SandboxError(f"{name} did not start:\n{log_tail}")
        time.sleep(0.02)
    return json.loads(ready.read_text())


def stop_server(folder: Path) -> list[int]:
    """Stop the server recorded in `folder` by PID; return its PID if it is still alive afterwards."""
    record = read_process_record(folder)
    if not record:
        return []
    server = record["server"]
    kill_if_same(server, signal.SIGTERM)
    if wait_until_gone([server], STOP_TIMEOUT_S):
        kill_if_same(server, signal.SIGKILL)
    return wait_until_gone([server])
