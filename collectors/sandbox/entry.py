"""Entering sandbox nodes, for the stand-in session-manager-plugin and sshd's sessions.

Standard library only: the plugin imports this once per session, and a thousand-node bench starts
a thousand sessions, so its start-up time is part of what the bench measures.
"""

import json
import os
from pathlib import Path

NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def in_user_namespace() -> bool:
    """A normal user's nodes live in a user namespace that maps the user to root."""
    return os.geteuid() != 0


def nsenter_command(init_pid: int) -> list[str]:
    """Enter a node's mount, UTS and PID namespaces (and its user namespace), at its root folder."""
    user = ["--user", "--preserve-credentials"] if in_user_namespace() else []
    return ["nsenter", "-t", str(init_pid), *user, "-m", "-u", "-p", "--wd=/", "--"]


def node_shell_env(term: str) -> list[str]:
    """`env -i ...` for a node shell: what an SSM root shell gets, nothing from the caller.

    Absolute paths, so the node's `slow` shims slow down what the shell runs, not its own start.
    """
    return [
        "/usr/bin/env", "-i", f"PATH={NODE_PATH}", "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh",
        f"TERM={term}", "LANG=C.UTF-8", "AWS_EC2_METADATA_DISABLED=true",
    ]


# Processes recorded by PID and start time, so a reused PID is never signalled


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = stat.rpartition(")")[2].split()
    state, start_ticks = fields_after_name[0], fields_after_name[19]
    return None if state in ("Z", "X") else int(start_ticks)


def is_same_process(pid: int, start_ticks: int | None) -> bool:
    """The process recorded as (pid, start_ticks) still runs; one that was gone when recorded never does."""
    return start_ticks is not None and process_start_ticks(pid) == start_ticks


# The nodes' records: ROOT/nodes/launched.jsonl gets each `unshare` the moment it starts (so a start
# that fails part-way still leaves every process findable); ROOT/nodes/inits.json maps each instance
# id to [unshare, init] identities once all are up. One file each, not one per node: 1000 nodes.


def read_node_records(root: Path) -> dict[str, dict]:
    """instance id -> {"unshare": identity, "init": identity or None}."""
    records: dict[str, dict] = {}
    try:
        lines = (root / "nodes" / "launched.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            records[entry["instance_id"]] = {"unshare": entry["unshare"], "init": None}
    try:
        inits = json.loads((root / "nodes" / "inits.json").read_text())
    except (OSError, ValueError):
        inits = {}
    for instance_id, record in inits.items():
        records[instance_id] = record
    return records


def read_init_pid(root: Path, instance_id: str) -> int | None:
    """The node's PID 1 as a host PID, or None when the node is not running."""
    return live_init_pid(read_node_records(root).get(instance_id) or {})


def read_init_pids(root: Path) -> dict[str, int | None]:
    """Every node's PID 1 (None for a node that is not running), reading the records once."""
    return {instance_id: live_init_pid(record) for instance_id, record in read_node_records(root).items()}


def live_init_pid(record: dict) -> int | None:
    init = record.get("init")
    if not init or not is_same_process(*init):
        return None
    return init[0]
