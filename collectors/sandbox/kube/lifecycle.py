"""Starting and stopping the API server, from the sandbox (control.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collectors.sandbox.nodes import (
    kill_if_same,
    process_identity,
    read_process_record,
    record_process,
    wait_until_gone,
)

PACKAGE_PARENT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def kube_dir(root: Path) -> Path:
    return Path(root) / "kube"


def eks_cluster_arn(status: dict, root: Path) -> str:
    """Ask the sandbox's own API, as discover does, so the kubeconfig names exactly what the toolkit expects."""
    from collectors.sandbox.control import sandbox_client  # control imports this module

    sagemaker = sandbox_client("sagemaker", status["endpoint"], status["region"], root)
    return sagemaker.describe_cluster(ClusterName=status["cluster"])["Orchestrator"]["Eks"]["ClusterArn"]


def kubeconfig(endpoint: str, name: str) -> dict:
    """What `aws eks update-kubeconfig` writes, named by the EKS cluster's ARN, but plain HTTP and no user."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": endpoint}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def start_kube(root: Path, status: dict) -> dict:
    """Start the API server for the sandbox described by `status`; return what `sandbox.json` records."""
    directory = kube_dir(root)
    directory.mkdir()
    arn = eks_cluster_arn(status, Path(root))
    (directory / "cluster.json").write_text(json.dumps(status))
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "collectors.sandbox.kube", "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory,
            env=dict(os.environ, PYTHONPATH=python_path), start_new_session=True,  # outlives `invoke sandbox.up`
        )
    record_process(directory, {"server": process_identity(server.pid)})
    endpoint = await_endpoint(directory, server)
    config_path = directory / "kubeconfig"
    config_path.write_text(json.dumps(kubeconfig(endpoint, arn), indent=2) + "\n")
    config_path.chmod(0o600)
    return {"endpoint": endpoint, "kubeconfig": str(config_path), "context": arn, "eks_cluster_arn": arn,
            "pid": server.pid, "cache_dir": str(directory / "cache")}


def await_endpoint(directory: Path, server: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (directory / "server.json").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            log_tail = (directory / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the sandbox Kubernetes API server did not start:\n{log_tail}")
        time.sleep(0.02)
    return json.loads((directory / "server.json").read_text())["endpoint"]


def stop_kube(root: Path) -> list[int]:
    """Stop the recorded API server by PID; return its PID if it is still alive afterwards."""
    record = read_process_record(kube_dir(root))
    if not record:
        return []
    server = record["server"]
    kill_if_same(server, signal.SIGTERM)
    if wait_until_gone([server], STOP_TIMEOUT_S):
        kill_if_same(server, signal.SIGKILL)
    return wait_until_gone([server])
