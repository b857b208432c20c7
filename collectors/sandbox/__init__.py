"""The local emulated HyperPod used by `invoke demo`, `invoke sandbox.*` and the integration tests.

The public names load control.py on first use, not on import: the stand-in session-manager-plugin
imports this package once per session and needs none of it.
"""

import importlib

__all__ = [
    "GroupSpec",
    "Sandbox",
    "SandboxSpec",
    "default_root",
    "sandbox_client",
]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("collectors.sandbox.control"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
