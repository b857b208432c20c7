"""discover: what cluster is this, which nodes does it have, and which of them do we collect from."""

from __future__ import annotations

import json
from typing import Any, Iterable

import botocore.exceptions

from collectors import console
from collectors.aws import describe_aws_error, error_code
from collectors.context import StageContext
from collectors.errors import UsageError
from collectors.nodes import match_names
from collectors.settings import Settings
from collectors.sources import head_node, sagemaker_api
from collectors.state import PENDING, utc_now

ACCESS_DENIED_CODES = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
API_UNREACHABLE_ERRORS = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ReadTimeoutError)
# Fields a node keeps from one discovery to the next; the rest is refreshed from the API.
OUTCOME_FIELDS = ("status", "error_kind", "error", "attempts", "started", "finished", "elapsed",
                  "s3_key", "bytes", "sha256", "output", "items", "failed_items", "transcript")


def execute(ctx: StageContext) -> None:
    cluster, nodes = read_cluster(ctx)
    selected = select_nodes(nodes, ctx.options.get("instance_groups") or [], ctx.options.get("nodes") or [],
                            cluster["name"])
    record(ctx, cluster, selected, total=len(nodes))
    if ctx.options.get("json"):
        console.out(json.dumps({"run_id": ctx.state.run_id, "run_dir": str(ctx.state.run_dir), "cluster": cluster,
                                "nodes": list(ctx.state.nodes.values())}, indent=2))
    console.log(f"cluster {cluster['name']} ({cluster['type']}, {cluster['status']}): {len(nodes)} nodes, "
                f"{len(selected)} selected; run {ctx.state.run_id} in {ctx.state.run_dir}")


def read_cluster(ctx: StageContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """From the SageMaker API, or from the head node when asked to, or when the API cannot be reached."""
    settings = ctx.settings
    if settings.discovery == "head-node":
        return head_node.read_cluster(settings, ctx.aws.region)
    try:
        return read_cluster_from_api(ctx)
    except Exception as exc:  # noqa: BLE001 - only an unreachable API is ours to handle
        if not (settings.discovery == "auto" and api_unreachable(exc) and head_node_configured(settings)):
            raise
        console.log(f"warning: the SageMaker API cannot be reached ({describe_aws_error(exc)}); reading the nodes "
                    f"from the head node {settings.ssh.gateway}")
    return head_node.read_cluster(settings, ctx.aws.region)


def read_cluster_from_api(ctx: StageContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # Two tries per call where the head node can stand in: not five retries of a dead endpoint first.
    sagemaker = ctx.aws.client("sagemaker", retries=2 if head_node_configured(ctx.settings) else 5)
    return sagemaker_api.read_cluster(sagemaker, ctx.settings.require_cluster(), ctx.aws.region,
                                      workers=ctx.settings.api_workers)


def api_unreachable(exc: BaseException) -> bool:
    """No route to the endpoint, or no permission to call it: what the head node can stand in for."""
    return isinstance(exc, API_UNREACHABLE_ERRORS) or error_code(exc) in ACCESS_DENIED_CODES


def head_node_configured(settings: Settings) -> bool:
    """`auto` falls back only where the head node can be reached without the API: SSH to a named host."""
    if settings.discovery == "api" or settings.transport != "ssh":
        return False
    try:
        head_node.head_node_address(settings)
    except UsageError:
        return False
    return True


def select_nodes(nodes: list[dict[str, Any]], groups: Iterable[str], names: Iterable[str],
                 cluster_name: str) -> list[dict[str, Any]]:
    groups, names = list(groups), list(names)
    if groups and names:
        raise UsageError("--instance-groups and --nodes cannot be used together")
    if groups:
        return select_by_groups(nodes, groups, cluster_name)
    if names:
        return select_by_names(nodes, names, cluster_name)
    return nodes


def select_by_groups(nodes: list[dict[str, Any]], groups: list[str], cluster_name: str) -> list[dict[str, Any]]:
    wanted = {g.lower() for g in groups}
    known = {node["group"].lower() for node in nodes}
    unknown = sorted(wanted - known)
    if unknown:
        raise UsageError(f"no instance group {', '.join(unknown)} in cluster {cluster_name} "
                         f"(groups: {', '.join(sorted(known)) or 'none'})")
    return [node for node in nodes if node["group"].lower() in wanted]


def select_by_names(nodes: list[dict[str, Any]], names: list[str], cluster_name: str) -> list[dict[str, Any]]:
    """Accept what people see: instance ids, EKS node names `hyperpod-i-…`, Slurm names `ip-a-b-c-d`."""
    chosen, unmatched = match_names(nodes, names)
    if unmatched:
        raise UsageError(f"no node in cluster {cluster_name} matches {', '.join(unmatched)}")
    return chosen


def record(ctx: StageContext, cluster: dict[str, Any], selected: list[dict[str, Any]], total: int) -> None:
    state = ctx.state
    previous = state.nodes
    state.data["cluster"] = cluster
    state.data["nodes"] = {node["instance_id"]: merge_outcome(node, previous.get(node["instance_id"]))
                           for node in selected}
    state.options.update({
        "instance_groups": list(ctx.options.get("instance_groups") or []),
        "nodes": list(ctx.options.get("nodes") or []),
        "region": ctx.aws.region,
        "profile": ctx.settings.profile,
    })
    state.mark_stage("discover", "done", total_nodes=total, selected_nodes=len(selected), discovered=utc_now())


def merge_outcome(node: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Re-discovering a run refreshes API facts but keeps what collection already achieved."""
    merged = dict(node, status=PENDING, attempts=0)
    for key in OUTCOME_FIELDS:
        if previous and key in previous:
            merged[key] = previous[key]
    return merged
