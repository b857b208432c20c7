"""How nodes are reached: a registry of transports (name -> module) over one interface.

Each transport module offers `make(needs) -> Transport` (base.Transport: run one node's job, close)
and `FLAGS`, the settings its task flags set (settings.KEYS paths), which the tasks that reach nodes
take. The runner knows none of them. A new transport is one module and one line in REGISTRY.
"""

from __future__ import annotations

from types import ModuleType

from collectors.transports import ssh, ssm
from collectors.transports.base import Transport, TransportNeeds

REGISTRY: dict[str, ModuleType] = {"ssm": ssm, "ssh": ssh}


def make(needs: TransportNeeds) -> Transport:
    return REGISTRY[needs.settings.transport].make(needs)


def flag_keys() -> list[str]:
    """The settings every transport's task flags set, each once, in the registry's order."""
    return list(dict.fromkeys(path for module in REGISTRY.values() for path in module.FLAGS))
