"""Starting and stopping the API server, from the sandbox (control.py)."""

from __future__ import annotations

import json
from pathlib import Path

from collectors.sandbox.clients import sandbox_client
from collectors.sandbox.processes import await_server, start_server, stop_server


def kube_dir(root: Path) -> Path:
    return Path(root) / "kube"


def eks_cluster_arn(status: dict, root: Path) -> str:
    """Ask the sandbox's own API, as discover does, so the kubeconfig names exactly what the toolkit expects."""
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
    server = start_server("collectors.sandbox.kube", root, directory)
    endpoint = await_server(directory, server, "the sandbox Kubernetes API server")["endpoint"]
    config_path = directory / "kubeconfig"
    config_path.write_text(json.dumps(kubeconfig(endpoint, arn), indent=2) + "\n")
    config_path.chmod(0o600)
    return {"endpoint": endpoint, "kubeconfig": str(config_path), "context": arn, "eks_cluster_arn": arn,
            "pid": server.pid, "cache_dir": str(directory / "cache")}


def stop_kube(root: Path) -> list[int]:
    """Stop the recorded API server by PID; return its PID if it is still alive afterwards."""
    return stop_server(kube_dir(root))
