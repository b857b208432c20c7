"""summarize: `summary.json` (locally and in S3), a table on screen, and the run's exit code.

summary.json keeps every field the earlier tool wrote, with the same names and types, so
existing automation keeps working, and adds ours next to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collectors import buckets, console
from collectors.context import StageContext
from collectors.errors import EXIT_NODES_FAILED, EXIT_OK
from collectors.layout import SUMMARY_NAME, RunLocation
from collectors.state import FAILURE_STATUSES, SKIPPED, SUCCESS_STATUSES, UNFINISHED_STATUSES, utc_now

TABLE_ROWS_MAX = 50


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("discover", "summarize")
    summary = build_summary(state.data)
    path = state.run_dir / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=2) + "\n")
    s3_uri = upload_summary(ctx, path)
    state.mark_stage("summarize", "done", summary_path=str(path), s3_uri=s3_uri)
    if ctx.options.get("json"):
        console.out(json.dumps(summary, indent=2))
    else:
        console.out(render_table(summary, state.data))
    failed = [r for r in summary["results"] if r["Status"] not in SUCCESS_STATUSES + (SKIPPED,)]
    console.log(f"summary: {path}" + (f" and {s3_uri}" if s3_uri else ""))
    if failed:
        console.log(f"{len(failed)} node(s) not collected; retry them with: "
                    f"invoke run --cluster {state.cluster['name']} --run-id {state.run_id} --retry-failed")
        return EXIT_NODES_FAILED
    return EXIT_OK


def build_summary(data: dict[str, Any]) -> dict[str, Any]:
    cluster = data["cluster"]
    results = [node_result(node) for node in sorted(data["nodes"].values(), key=node_order)]
    counts = {status: sum(1 for r in results if r["Status"] == status) for status in {r["Status"] for r in results}}
    s3 = data.get("s3") or {}
    return {
        # The earlier tool's fields.
        "cluster_name": cluster.get("name") or cluster.get("requested"),
        "cluster_id": cluster.get("id"),
        "report_id": data["run_id"],
        "timestamp": utc_now(),
        "total_nodes": len(results),
        "successful": sum(1 for r in results if r["Success"]),
        "failed": sum(1 for r in results if r["Status"] in FAILURE_STATUSES + UNFINISHED_STATUSES),
        "results": results,
        # Ours.
        "cluster_type": cluster.get("type"),
        "cluster_arn": cluster.get("arn"),
        "cluster_status": cluster.get("status"),
        "eks_cluster_name": cluster.get("eks_cluster_name"),
        "region": cluster.get("region"),
        "skipped": counts.get(SKIPPED, 0),
        "status_counts": counts,
        "s3_prefix": RunLocation.from_dict(s3).uri(s3["run_prefix"]) if s3 else None,
        "stages": {name: stage.get("status") for name, stage in data["stages"].items()},
        "kubectl_resources": data["stages"].get("kubectl", {}).get("s3_uri"),
        "commands": data["options"].get("commands", []),
    }


def node_order(node: dict[str, Any]) -> tuple[str, str]:
    return node["group"], node["instance_id"]


def node_result(node: dict[str, Any]) -> dict[str, Any]:
    status = node.get("status", "pending")
    return {
        "InstanceId": node["instance_id"],
        "NodeGroup": node["group"],
        "Success": status in SUCCESS_STATUSES,
        "Output": node.get("output") or "",
        "Error": node.get("error") or "",
        "ElapsedTime": float(node.get("elapsed") or 0.0),
        "Status": status,
        "ErrorKind": node.get("error_kind"),
        "Hostname": node.get("hostname"),
        "PrivateIp": node.get("ip"),
        "InstanceType": node.get("instance_type"),
        "HyperPodStatus": node.get("hyperpod_status"),
        "Attempts": node.get("attempts", 0),
        "Bytes": node.get("bytes"),
        "Sha256": node.get("sha256"),
        "S3Key": node.get("s3_key"),
        "Items": node.get("items"),
        "FailedItems": node.get("failed_items"),
        "StartedAt": node.get("started"),
        "FinishedAt": node.get("finished"),
    }


def upload_summary(ctx: StageContext, path: Path) -> str | None:
    uri, problem = buckets.store_run_file(ctx.aws, ctx.state, path, SUMMARY_NAME, "application/json")
    if problem:
        console.log(f"warning: summary {problem}")
    return uri



def render_table(summary: dict[str, Any], data: dict[str, Any]) -> str:
    results = summary["results"]
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["status_counts"].items()))
    lines = [f"Cluster {summary['cluster_name']} ({summary['cluster_type']}), run {summary['report_id']}: "
             f"{summary['total_nodes']} node(s): {counts or 'none'}"]
    shown = results if len(results) <= TABLE_ROWS_MAX else [r for r in results if not r["Success"]]
    if shown:
        lines.append(f"{'GROUP':<20} {'INSTANCE':<21} {'HOSTNAME':<16} {'STATUS':<14} {'TIME':>7} {'SIZE':>8}  ERROR")
        lines += [table_row(r) for r in shown]
    if len(shown) < len(results):
        lines.append(f"({len(results) - len(shown)} successful node(s) not listed)")
    kubectl = data["stages"].get("kubectl", {})
    if kubectl.get("status") in ("failed", "incomplete"):
        lines.append(f"Kubernetes state {kubectl['status']} (kubectl stage): {kubectl.get('error', '')}")
    return "\n".join(lines)


def table_row(result: dict[str, Any]) -> str:
    error = (result["Error"] or "").splitlines()[0][:80] if result["Error"] else ""
    return (f"{result['NodeGroup']:<20} {result['InstanceId']:<21} {result['Hostname'] or '-':<16} "
            f"{result['Status']:<14} {result['ElapsedTime']:>6.1f}s {console.human_bytes(result['Bytes']):>8}  {error}")
