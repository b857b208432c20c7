"""The checks that read the sandbox's scenario files and runtime fault changes strictly.

Each check takes (value, where) and returns the normalised value or raises one SandboxError line
naming the key (`where`), so a typo never silently becomes a healthy node. Standard library only:
the stand-in session-manager-plugin imports faults.py, and with it this module, once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collectors.errors import SandboxError

Check = Callable[[Any, str], Any]


def problem(where: str, message: str) -> SandboxError:
    return SandboxError(f"scenario: {where}: {message}" if where else f"scenario: {message}")


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
