"""Fixtures for tests against the sandbox (the local emulated HyperPod).

`sandbox_factory(spec)` starts a sandbox and returns (Sandbox, status dict, env dict); env holds only
the sandbox's variables (merge it over os.environ for a child process). Every sandbox a module
starts is taken down when the module ends, whether its tests passed or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from collectors.sandbox import Sandbox, SandboxSpec
from tests.conftest import require, require_namespaces

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


@pytest.fixture(scope="module")
def eks_sandbox(sandbox_factory: SandboxFactory) -> tuple[Sandbox, dict, dict[str, str]]:
    """An EKS-orchestrated sandbox: 4 nodes in 2 groups (ml.g5.8xlarge and ml.p5.48xlarge)."""
    return sandbox_factory(SandboxSpec.simple(type="eks", nodes=4))
