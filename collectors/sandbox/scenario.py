"""Sandbox scenarios: the YAML format of docs/scenarios.md, checked strictly.

A scenario describes a cluster (name, type, instance groups), per-node settings (HyperPod status,
fixture pack, Slurm state, Kubernetes labels, faults) and scenario-wide faults. `load_scenario()`
returns it checked and normalised; every problem is one SandboxError line naming the key, so a typo
never silently becomes a healthy node (checks.py). The faults' keys are faults.py's, shared with the
runtime fault endpoint; the fixture packs and which nodes can show them are packs.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from collectors.errors import SandboxError
from collectors.sandbox.checks import boolean, choice, list_of, mapping, number, problem, string_map, text
from collectors.sandbox.faults import (
    NODE_FAULT_DEFAULTS,
    NODE_FAULTS,
    SCENARIO_FAULT_DEFAULTS,
    SCENARIO_FAULTS,
    merged_faults,
)
from collectors.sandbox.packs import PACKS, pack_problem

CLUSTER_TYPES = ("eks", "slurm")
SHELLS = ("sh", "bash")
# Node distributions as HyperPod has them, with the shell SSM's `sh` is on each: dash on Ubuntu (the
# Slurm DLAMI base), bash started as sh on Amazon Linux 2023 (EKS). Their files are in content.py.
DISTRIBUTION_SHELLS = {"ubuntu-20.04": "sh", "ubuntu-22.04": "sh", "al2023": "bash"}
DISTRIBUTIONS = tuple(DISTRIBUTION_SHELLS)
DEFAULT_DISTRIBUTION = "ubuntu-20.04"
# Ubuntu logs through rsyslog (syslog, kern.log); AL2023 ships without it: journald only.
RSYSLOG_BY_DEFAULT = {"ubuntu-20.04": True, "ubuntu-22.04": True, "al2023": False}
ROLES = ("controller", "worker")
NODE_STATUSES = ("Running", "Pending", "ShuttingDown", "SystemUpdating", "Failure", "DeepHealthCheckInProgress")
SLURM_STATES = ("idle", "drain", "down")
# How a node's lifecycle scripts (the instance group's OnCreate) ended: what its CloudWatch
# LifecycleConfig stream and its cluster events say (history.py).
LIFECYCLE_OUTCOMES = ("ok", "failed")


# ---------------------------------------------------------------------------------------------
# The format (docs/scenarios.md); to add a key, add it here and document it there

NODE_SETTINGS = mapping(
    {
        "status": choice(*NODE_STATUSES),
        "message": text,
        "fixture": choice(*PACKS),
        "slurm": mapping({"state": choice(*SLURM_STATES), "reason": text}),
        "kubernetes": mapping({"ready": boolean, "labels": string_map}),
        "faults": mapping(NODE_FAULTS),
        "lifecycle": choice(*LIFECYCLE_OUTCOMES),
    }
)
GROUP = mapping(
    {
        "name": text,
        "instance_type": text,
        "count": number(1, integer=True),
        "role": choice(*ROLES),
        "fixture": choice(*PACKS),
        "os": choice(*DISTRIBUTIONS),
        "rsyslog": boolean,
    },
    required=("name", "instance_type", "count"),
)
SCENARIO = mapping(
    {
        "cluster": text,
        "type": choice(*CLUSTER_TYPES),
        "region": text,
        "shell": choice(*SHELLS),
        "os": choice(*DISTRIBUTIONS),
        "rsyslog": boolean,
        "bucket": text,
        "instance_groups": list_of(GROUP),
        "nodes": lambda value, where: value,  # checked against the groups in check_node_keys()
        "faults": mapping(SCENARIO_FAULTS),
    },
    required=("cluster", "type", "instance_groups"),
)


# ---------------------------------------------------------------------------------------------
# Whole scenarios


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise SandboxError(f"scenario {path}: cannot read it: {error.strerror}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(error, "problem", None) or "not valid YAML"
        raise SandboxError(f"scenario {path}: not valid YAML{at}: {reason}") from error


def load_scenario(source: str | Path | dict) -> dict:
    """A scenario file (or an already-parsed dict), checked and normalised; SandboxError when bad."""
    if isinstance(source, dict):
        return check_scenario(source)
    path = Path(source)
    raw = read_yaml(path)
    try:
        return check_scenario(raw)
    except SandboxError as error:
        raise SandboxError(str(error).replace("scenario:", f"scenario {path}:", 1)) from None


def check_scenario(raw: Any) -> dict:
    scenario = SCENARIO(raw, "")
    groups = scenario["instance_groups"]
    if not groups:
        raise problem("instance_groups", "needs at least one instance group")
    check_groups(scenario["type"], groups)
    scenario["nodes"] = check_node_keys(scenario.get("nodes") or {}, groups)
    scenario["faults"] = merged_faults(SCENARIO_FAULT_DEFAULTS, scenario.get("faults", {}), SCENARIO_FAULT_DEFAULTS)
    return scenario


def check_groups(cluster_type: str, groups: list[dict]) -> None:
    names = [group["name"] for group in groups]
    for index, group in enumerate(groups):
        where = f"instance_groups[{index}]"
        # SSM targets are `{cluster-id}_{group}-{instance-id}`: a `_` in a group name is ambiguous.
        if "_" in group["name"]:
            raise problem(f"{where}.name", f"{group['name']!r} has a `_`, which SSM targets cannot carry")
        if names.count(group["name"]) > 1:
            raise problem(f"{where}.name", f"{group['name']!r} is used by more than one group")
        if group.get("role") == "controller" and cluster_type != "slurm":
            raise problem(f"{where}.role", "only Slurm clusters have a controller group")
        check_pack_fits(group.get("fixture", "healthy"), group["instance_type"], f"{where}.fixture")


def check_node_keys(nodes: Any, groups: list[dict]) -> dict[str, dict]:
    """`nodes` keys are "<group>/<index>", index from 0 within the group."""
    if not isinstance(nodes, dict):
        raise problem("nodes", f"must be a mapping of \"<group>/<index>\" to settings, not {nodes!r}")
    counts = {group["name"]: group for group in groups}
    checked = {}
    for key, settings in nodes.items():
        group_name, _, index = str(key).rpartition("/")
        group = counts.get(group_name)
        if group is None or not index.isdigit() or int(index) >= group["count"]:
            raise problem(f"nodes.{key}", "not a node: keys are \"<group>/<index>\", index from 0 below the count")
        checked[f"{group_name}/{int(index)}"] = NODE_SETTINGS(settings or {}, f"nodes.{key}")
        check_pack_fits(checked[f"{group_name}/{int(index)}"].get("fixture", "healthy"), group["instance_type"],
                        f"nodes.{key}.fixture")
    return checked


def check_pack_fits(pack: str, instance_type: str, where: str) -> None:
    reason = pack_problem(pack, instance_type)
    if reason:
        raise problem(where, reason)


def node_settings(scenario_nodes: dict[str, dict], group: dict, index: int) -> dict:
    """One node's merged settings: its own entry over its group's, over the defaults.

    `group` holds the group's name and fixture, and its distribution (os, rsyslog, shell) with the
    scenario's own filled in where the group sets none (None: the distribution's default).
    """
    entry = scenario_nodes.get(f"{group['name']}/{index}", {})
    distribution = group.get("os") or DEFAULT_DISTRIBUTION
    rsyslog = group.get("rsyslog")
    return {
        "status": entry.get("status", "Running"),
        "message": entry.get("message", ""),
        "os": distribution,
        "rsyslog": RSYSLOG_BY_DEFAULT[distribution] if rsyslog is None else rsyslog,
        "shell": group.get("shell") or DISTRIBUTION_SHELLS[distribution],
        "fixture": entry.get("fixture", group.get("fixture", "healthy")),
        "slurm": entry.get("slurm", {}),
        "kubernetes": entry.get("kubernetes", {}),
        "faults": merged_faults(NODE_FAULT_DEFAULTS, entry.get("faults", {}), NODE_FAULT_DEFAULTS),
        "lifecycle": entry.get("lifecycle", "ok"),
    }
