"""Run tests of the state file: what HyperPod says of each node, how its collection ended, a bundle missing."""

from __future__ import annotations

from typing import Any

from collectors.report.model import Evidence, Hit, RunView
from collectors.state import STATE_FILE, SUCCESS_STATUSES


def state_hit(rule: Any, iid: str, key: str | None, text: str) -> Hit:
    return Hit(rule=rule.id, key=key, count=1, subject=iid, evidence=[Evidence(STATE_FILE, None, text)])


def hyperpod_status(rule: Any, view: RunView) -> list[Hit]:
    """ListClusterNodes' InstanceStatus: HyperPod's own view, whether or not we reached the node."""
    hits = []
    for iid, node in view.nodes.items():
        status = node.get("hyperpod_status")
        if status and status != "Running":
            message = node.get("hyperpod_message") or ""
            hits.append(state_hit(rule, iid, status, f"ListClusterNodes InstanceStatus {status}"
                                  + (f": {message}" if message else "")))
    return hits


def collection_status(rule: Any, view: RunView) -> list[Hit]:
    wanted = set(rule.params.get("statuses", []))
    hits = []
    for iid, node in view.nodes.items():
        status = node.get("status", "pending")
        if status in wanted:
            error = (node.get("error") or "").strip().splitlines()
            text = f"status {status}" + (f" ({node['error_kind']})" if node.get("error_kind") else "")
            key = status if len(wanted) > 1 else None  # one status: the title already says it
            hits.append(state_hit(rule, iid, key, text + (f": {error[0]}" if error else "")))
    return hits


def bundle_missing(rule: Any, view: RunView) -> list[Hit]:
    hits = []
    for iid, node in view.nodes.items():
        if node.get("status") not in SUCCESS_STATUSES:
            continue
        scan = view.scans.get(iid)
        if scan is None:
            hits.append(state_hit(rule, iid, None, f"no results/{node.get('group')}_{iid}.tar.gz"))
        elif scan.error:
            hits.append(state_hit(rule, iid, None, f"{scan.bundle}: {scan.error}"))
    return hits
