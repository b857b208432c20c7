"""Shared test helpers.

A test that needs root, namespaces or a Debian package skips with a reason on a laptop and
fails instead when CI=true, so CI never passes by skipping.
"""

import os
import shutil
import socket
import subprocess

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) the calling test unless `condition` holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def can_create_namespaces() -> bool:
    """True when this process may create mount, UTS and PID namespaces (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--mount", "--uts", "--pid", "--fork", "true"]
    if os.geteuid() != 0:
        probe.insert(1, "--user")
        probe.insert(2, "--map-root-user")
    return subprocess.run(probe, capture_output=True).returncode == 0


def require_namespaces() -> None:
    require(can_create_namespaces(), "needs root or unprivileged user namespaces to emulate nodes")


def require_tool(name: str, package: str) -> None:
    require(shutil.which(name) is not None, f"needs `{name}` (Debian package {package})")


def closed_port() -> int:
    """A loopback port nothing listens on: what a client meets when the server is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
