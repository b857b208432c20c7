"""The sandbox's faults (docs/scenarios.md): their keys, checks and defaults, and runtime changes.

One format for both places a fault is set: a scenario file (`faults:` at the top and under each
node, scenario.py) and the runtime fault endpoint (`POST /_emu/faults`, server/injection.py), so a
fault is spelled the same in a file and at runtime. The stand-in session-manager-plugin reads the
armed faults over these defaults; it imports this module once per session, so it stays light.
"""

from __future__ import annotations

from typing import Any

from collectors.errors import SandboxError
from collectors.sandbox.checks import boolean, choice, list_of, mapping, number, optional, problem, text

S3_ERROR_STATUSES = (403, 500, 503)
# IAM actions the operator may be denied (the `denied_actions` fault): the JSON APIs the tool calls.
DENIABLE_SERVICES = ("sagemaker", "logs", "ssm")


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
# The format; to add a fault, add it here and document it in docs/scenarios.md

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
