"""The local emulated HyperPod used by `invoke demo`, `invoke sandbox.*` and the integration tests.

The public names load their modules on first use, not on import: the stand-in session-manager-plugin
imports this package once per session and needs none of them.
"""

import importlib
from pathlib import Path

FIXTURES = Path(__file__).with_name("fixtures")  # the files the sandbox's nodes and servers are made from

PUBLIC_NAMES = {
    "GroupSpec": "collectors.sandbox.spec",
    "Sandbox": "collectors.sandbox.control",
    "SandboxSpec": "collectors.sandbox.spec",
    "default_root": "collectors.sandbox.control",
    "sandbox_client": "collectors.sandbox.clients",
}
__all__ = list(PUBLIC_NAMES)


def __getattr__(name: str):
    if name in PUBLIC_NAMES:
        return getattr(importlib.import_module(PUBLIC_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
