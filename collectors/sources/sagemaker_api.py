"""Nodes as the SageMaker API knows them: DescribeCluster, every page of ListClusterNodes, and
DescribeClusterNode for the nodes whose summary lacks their host name (older APIs)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from collectors import console
from collectors.aws import error_code
from collectors.errors import UsageError
from collectors.nodes import ip_from_hostname

NOT_FOUND_CODES = ("ValidationException", "ResourceNotFound", "ResourceNotFoundException")


def read_cluster(sagemaker: Any, name: str, region: str, workers: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cluster's record and every node's, with host names filled in."""
    cluster = describe_cluster(sagemaker, name, region)
    nodes = [node_from_summary(s) for s in list_cluster_nodes(sagemaker, cluster["arn"])]
    fill_missing_hostnames(sagemaker, cluster["arn"], nodes, workers)
    return cluster, nodes


def describe_cluster(sagemaker: Any, name: str, region: str) -> dict[str, Any]:
    try:
        response = sagemaker.describe_cluster(ClusterName=name)
    except Exception as exc:  # noqa: BLE001 - only "not found" is the user's input; the rest propagates
        if error_code(exc) in NOT_FOUND_CODES:
            raise UsageError(f"cluster {name!r} not found in region {region}") from None
        raise
    arn = response["ClusterArn"]
    orchestrator = response.get("Orchestrator") or {}
    eks_arn = (orchestrator.get("Eks") or {}).get("ClusterArn")
    return {
        "requested": name,
        "name": response["ClusterName"],
        "arn": arn,
        # The SSM target uses the id (last ARN segment), never the name.
        "id": arn.rsplit("/", 1)[-1],
        "status": response.get("ClusterStatus", "Unknown"),
        # Older Slurm clusters have no Orchestrator at all; only Eks means EKS.
        "type": "eks" if eks_arn else "slurm",
        "eks_cluster_arn": eks_arn,
        "eks_cluster_name": eks_arn.rsplit("/", 1)[-1] if eks_arn else None,
        "region": region,
        "instance_groups": [g.get("InstanceGroupName") for g in response.get("InstanceGroups", [])],
    }


def list_cluster_nodes(sagemaker: Any, cluster_arn: str) -> list[dict[str, Any]]:
    paginator = sagemaker.get_paginator("list_cluster_nodes")
    summaries: list[dict[str, Any]] = []
    for page in paginator.paginate(ClusterName=cluster_arn, PaginationConfig={"PageSize": 100}):
        summaries.extend(page.get("ClusterNodeSummaries", []))
    return summaries


def node_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    status = summary.get("InstanceStatus") or {}
    node = {
        "instance_id": summary["InstanceId"],
        "group": summary.get("InstanceGroupName", "unknown"),
        "instance_type": summary.get("InstanceType"),
        "hyperpod_status": status.get("Status", "Unknown"),
        "hyperpod_message": status.get("Message", ""),
        "launch_time": str(summary.get("LaunchTime", "")) or None,
    }
    set_hostname(node, summary.get("PrivateDnsHostname"), None)
    return node


def set_hostname(node: dict[str, Any], dns_hostname: str | None, ip: str | None) -> None:
    """Slurm's node name is the short form of PrivateDnsHostname; AWS hostnames also encode the IP."""
    short = dns_hostname.split(".", 1)[0] if dns_hostname else None
    node["dns_hostname"] = dns_hostname
    node["hostname"] = short
    node["ip"] = ip or ip_from_hostname(short)


def fill_missing_hostnames(sagemaker: Any, cluster_arn: str, nodes: list[dict[str, Any]], workers: int) -> None:
    """Older APIs leave PrivateDnsHostname out of the summary: ask only for those nodes, in parallel."""
    missing = [node for node in nodes if not node["hostname"]]
    if not missing:
        return

    def describe(node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        try:
            details = sagemaker.describe_cluster_node(ClusterName=cluster_arn, NodeId=node["instance_id"])
            return node, details["NodeDetails"]
        except Exception as exc:  # noqa: BLE001 - one node's lookup must not stop discovery
            console.log(f"warning: could not describe node {node['instance_id']}: {exc}")
            return node, None

    with ThreadPoolExecutor(max_workers=min(workers, len(missing))) as pool:
        for node, details in pool.map(describe, missing):
            if details:
                set_hostname(node, details.get("PrivateDnsHostname"), details.get("PrivatePrimaryIp"))
