"""Sandbox scenarios: the YAML format of docs/scenarios.md, checked strictly.

A scenario describes a cluster (name, type, instance groups), per-node settings (HyperPod status,
fixture pack, Slurm state, Kubernetes labels, faults) and scenario-wide faults. `load_scenario()`
returns it checked and normalised; every problem is one SandboxError line naming the key, so a typo
never silently becomes a healthy node. The same checks serve the runtime fault endpoint
(`POST /_emu/faults`), so a fault is spelled the same in a file and at runtime.

Kept free of heavy imports (PyYAML is imported only to read a file): the server and the stand-in
session-manager-plugin import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.errors import SandboxError

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
S3_ERROR_STATUSES = (403, 500, 503)
# How a node's lifecycle scripts (the instance group's OnCreate) ended: what its CloudWatch
# LifecycleConfig stream and its cluster events say (history.py).
LIFECYCLE_OUTCOMES = ("ok", "failed")
# IAM actions the operator may be denied (the `denied_actions` fault): the JSON APIs the tool calls.
DENIABLE_SERVICES = ("sagemaker", "logs", "ssm")
# Fixture packs (collectors/sandbox/packs.py renders them); the GPU ones need a GPU instance type.
GPU_PACKS = ("xid79", "ecc", "nvlink")
PACKS = ("healthy", *GPU_PACKS, "disk_full", "oom")

Check = Callable[[Any, str], Any]


def problem(where: str, message: str) -> SandboxError:
    return SandboxError(f"scenario: {where}: {message}" if where else f"scenario: {message}")


# ---------------------------------------------------------------------------------------------
# Checks: each takes (value, where) and returns the normalised value or raises one clear line


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise problem(where, f"must be a non-empty string, not {value!r}")
    return value


def choice(*choices: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if value not in choices:
            raise problem(where, f"must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise problem(where, f"must be true or false, not {value!r}")
    return value


def number(minimum: float, *, integer: bool = False, above: bool = False) -> Check:
    """A number >= minimum (> minimum when `above`); YAML's true/false are not numbers."""
    kinds = (int,) if integer else (int, float)

    def check(value: Any, where: str) -> float:
        is_number = isinstance(value, kinds) and not isinstance(value, bool)
        if not is_number or (value <= minimum if above else value < minimum):
            kind = "an integer" if integer else "a number"
            bound = f"above {minimum}" if above else f"at least {minimum}"
            raise problem(where, f"must be {kind} {bound}, not {value!r}")
        return value

    return check


def optional(check: Check) -> Check:
    """`null` means "not set" (the default); runtime updates use it to switch a fault off."""

    def check_optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return check_optional


def list_of(check: Check) -> Check:
    def check_list(value: Any, where: str) -> list:
        if not isinstance(value, list):
            raise problem(where, f"must be a list, not {value!r}")
        return [check(item, f"{where}[{index}]") for index, item in enumerate(value)]

    return check_list


def string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise problem(where, f"must map strings to strings (quote numbers and booleans), not {value!r}")
    return dict(value)


def mapping(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A mapping with only the keys in `fields`; those in `required` must be there."""

    def check_mapping(value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise problem(where, f"must be a mapping, not {value!r}")
        unknown = [key for key in value if key not in fields]
        if unknown:
            raise problem(where, f"unknown key {unknown[0]!r} (known: {', '.join(fields)})")
        missing = [key for key in required if key not in value]
        if missing:
            raise problem(where, f"missing key {missing[0]!r}")
        return {key: fields[key](item, f"{where}.{key}" if where else key) for key, item in value.items()}

    return check_mapping


def run_as_user(value: Any, where: str) -> str:
    """Session Manager does not support root as the Run-As user
    (https://docs.aws.amazon.com/systems-manager/latest/userguide/session-preferences-run-as.html)."""
    if value == "root":
        raise problem(where, "Session Manager does not support root as the Run-As user")
    return text(value, where)


def seconds_window(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        raise problem(where, f"must be [from, to] in seconds, not {value!r}")
    start, end = (number(0)(item, f"{where}[{index}]") for index, item in enumerate(value))
    if end <= start:
        raise problem(where, f"must end after it starts, not {value!r}")
    return [start, end]


def iam_action(value: Any, where: str) -> str:
    """`service:Operation`, as IAM names an action (sagemaker:ListClusterEvents)."""
    service, _, operation = text(value, where).partition(":")
    if service not in DENIABLE_SERVICES or not operation.isalnum() or not operation[:1].isupper():
        raise problem(where, f"must be an IAM action of {', '.join(DENIABLE_SERVICES)} such as "
                             f"sagemaker:ListClusterEvents, not {value!r}")
    return value


def times(value: Any, where: str) -> int | str:
    if value == "always":
        return value
    return number(1, integer=True)(value, where)


# ---------------------------------------------------------------------------------------------
# The format (docs/scenarios.md); to add a key, add it here and document it there

S3_PUT_FAILURE = mapping(
    {"key_contains": text, "status": choice(*S3_ERROR_STATUSES), "times": times}, required=("key_contains",)
)
SCENARIO_FAULTS = {
    "start_session_rate": optional(number(0, above=True)),
    "idle_timeout": optional(number(0, above=True)),
    "line_limit": optional(number(2, integer=True)),
    "s3_put_failures": list_of(S3_PUT_FAILURE),
    "session_drop_rate": number(0),
    "mid_session_drop_rate": number(0),
    "mid_session_drop_window": seconds_window,
    # Session Manager preferences (they apply to sessions started afterwards, as idle_timeout does).
    "run_as": optional(run_as_user),
    "shell_profile": optional(text),
    # The operator's identity lacks these permissions: each call answers AccessDeniedException.
    "denied_actions": list_of(iam_action),
}
NODE_FAULTS = {
    "target_not_connected": boolean,
    "session_drop_after": optional(number(0, above=True)),
    "session_drops": optional(number(1, integer=True)),
    "slow": number(0),
    "hang": list_of(text),
    "tmp_free_mb": optional(number(0, integer=True)),
}
# What a fault is when a scenario does not set it: real SSM's idle timeout and line limit, nothing else.
SCENARIO_FAULT_DEFAULTS = {"start_session_rate": None, "idle_timeout": 1200, "line_limit": 4096, "s3_put_failures": [],
                           "session_drop_rate": 0, "mid_session_drop_rate": 0, "mid_session_drop_window": [2, 60],
                           "run_as": None, "shell_profile": None, "denied_actions": []}
NODE_FAULT_DEFAULTS = {
    "target_not_connected": False, "session_drop_after": None, "session_drops": None, "slow": 0, "hang": [],
    "tmp_free_mb": None,
}
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
    import yaml  # only here: the server and the plugin import this module without needing it

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
    from collectors.sandbox.packs import pack_problem  # packs.py imports this module's pack names

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


# ---------------------------------------------------------------------------------------------
# Runtime fault changes (POST /_emu/faults): the same keys, checked the same way


def check_fault_change(change: Any, instance_ids: set[str]) -> dict:
    """{"faults": {...}, "nodes": {instance id: {...}}}; a null value puts a fault back to its default."""
    try:
        return checked_fault_change(change, instance_ids)
    except SandboxError as error:
        raise SandboxError(str(error).replace("scenario:", "fault change:", 1)) from None


def checked_fault_change(change: Any, instance_ids: set[str]) -> dict:
    scenario_faults = mapping({key: optional(check) for key, check in SCENARIO_FAULTS.items()})
    checked = mapping({"faults": scenario_faults, "nodes": lambda value, where: value})(change, "")
    nodes = checked.get("nodes") or {}
    if not isinstance(nodes, dict):
        raise problem("nodes", f"must map instance ids to faults, not {nodes!r}")
    unknown = sorted(set(nodes) - instance_ids)
    if unknown:
        raise problem("nodes", f"no node {unknown[0]} in this sandbox")
    node_faults = mapping({key: optional(check) for key, check in NODE_FAULTS.items()})
    return {
        "faults": checked.get("faults", {}),
        "nodes": {instance_id: node_faults(faults or {}, f"nodes.{instance_id}") for instance_id, faults in nodes.items()},
    }


def merged_faults(current: dict, change: dict, defaults: dict) -> dict:
    """`current` with `change` applied: None puts a key back to its default."""
    merged = dict(current)
    for key, value in change.items():
        merged[key] = defaults[key] if value is None else value
    return merged
