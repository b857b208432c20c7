"""The local emulated HyperPod used by `invoke demo`, `invoke sandbox.*` and the integration tests.

Kept free of heavy imports: the stand-in session-manager-plugin imports this package once per session.
"""

from collectors.sandbox.control import (
    GroupSpec,
    Sandbox,
    SandboxSpec,
    default_root,
    sandbox_client,
)

__all__ = [
    "GroupSpec",
    "Sandbox",
    "SandboxSpec",
    "default_root",
    "sandbox_client",
]
