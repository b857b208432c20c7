"""Node names as people type them: instance ids, EKS names `hyperpod-i-…`, Slurm names `ip-a-b-c-d`."""

from __future__ import annotations

import re
from typing import Any, Iterable, TextIO

SLURM_NAME_RE = re.compile(r"^ip-\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}$")
EKS_NODE_PREFIX = "hyperpod-"
STDIN_MARK = "-"


def split_names(values: Iterable[str] | None, stdin: TextIO | None = None) -> list[str]:
    """Flags are repeatable and comma-separated; `-` reads more names from stdin (one pipeline stage's output)."""
    names: list[str] = []
    for value in values or []:
        if value.strip() == STDIN_MARK and stdin is not None:
            names.extend(names_from_text(stdin.read()))
        else:
            names.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(names))


def names_from_text(text: str) -> list[str]:
    """Whitespace- or comma-separated names; `#` starts a comment."""
    words = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        words.extend(word for word in re.split(r"[\s,]+", line) if word)
    return words


def resolve_name(name: str, by_id: dict[str, Any], by_hostname: dict[str, Any]) -> Any | None:
    if name.startswith(EKS_NODE_PREFIX + "i-"):
        return by_id.get(name[len(EKS_NODE_PREFIX):])
    if name.startswith("i-"):
        return by_id.get(name)
    return by_hostname.get(name.split(".", 1)[0])


def match_names(nodes: list[dict[str, Any]], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The nodes the names point at (each once, in name order) and the names that match nothing."""
    by_id = {node["instance_id"]: node for node in nodes}
    by_hostname = {node["hostname"]: node for node in nodes if node.get("hostname")}
    chosen: dict[str, dict[str, Any]] = {}
    unmatched = []
    for name in names:
        node = resolve_name(name, by_id, by_hostname)
        if node is None:
            unmatched.append(name)
        else:
            chosen[node["instance_id"]] = node
    return list(chosen.values()), unmatched


def ip_from_hostname(hostname: str | None) -> str | None:
    """AWS default hostnames encode the private IP: ip-10-1-2-3 is 10.1.2.3."""
    if hostname and SLURM_NAME_RE.match(hostname):
        return hostname[3:].replace("-", ".")
    return None
