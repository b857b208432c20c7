"""One run folder in, one report document (findings.json's content) out."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from collectors.report import nodeset
from collectors.report.catalog import SEVERITIES, Catalog, load
from collectors.report.cluster_api import load_cluster_api, summary as cluster_api_summary
from collectors.report.findings import Finding, build_findings, finding_nodes
from collectors.report.kube import KUBECTL_BUNDLE, load_kube
from collectors.report.model import NodeScan, RunView
from collectors.report.scan import scan_bundles
from collectors.report.secrets import secret_findings
from collectors.state import RESULTS_DIR, utc_now

REPORT_SCHEMA_VERSION = 1
# Severities that make a node "not healthy" in the counts; info findings are records, not trouble.
TROUBLE = ("critical", "high", "warning")
SEVERITY_ORDER = {severity: rank for rank, severity in enumerate(SEVERITIES)}
FLEET_FACTS = ("driver", "cuda", "kernel", "efa_installer", "efa_driver", "gpus", "efa_devices")


def build_report(run_dir: Path, state: dict[str, Any], workers: int | None = None,
                 catalog: Catalog | None = None) -> dict[str, Any]:
    """Scan the run's bundles, run every rule, and fold the hits into the report document."""
    catalog = catalog or load()
    started = time.monotonic()
    bundles = sorted((run_dir / RESULTS_DIR).glob("*.tar.gz"))
    workers = workers if workers is not None else default_workers()
    scans = scan_bundles(bundles, workers, catalog)
    view = RunView(nodes=state.get("nodes", {}), scans=index_scans(scans), kube=load_kube(run_dir),
                   cluster=load_cluster_api(run_dir))
    # The second net (issue 14): secrets the nodes' redaction left in the bundles, as findings.
    findings = sorted(build_findings(catalog, view) + secret_findings(run_dir, bundles, workers), key=Finding.sort_key)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "catalog_version": catalog.version,
        "generated": utc_now(),
        "run_id": state.get("run_id", run_dir.name),
        "run_dir": str(run_dir),
        "cluster": cluster_summary(state),
        "nodes": node_summary(view, findings),
        "node_index": node_index(view),
        "kubectl": kubectl_summary(view),
        "cluster_api": cluster_api_summary(view.cluster),
        "findings": [finding_document(finding, view) for finding in findings],
        "fleet": fleet_summary(view),
        "counters": {iid: scan.counters for iid, scan in sorted(view.scans.items()) if scan.counters},
        "scan": {"bundles": len(bundles), "files_read": sum(s.files for s in scans),
                 "bytes_read": sum(s.bytes_read for s in scans), "seconds": round(time.monotonic() - started, 3)},
    }


def default_workers() -> int:
    """Processes for scanning: the CPUs this process may use, at most 8 (decompression is the cost)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def index_scans(scans: list[NodeScan]) -> dict[str, NodeScan]:
    """Scans by instance id; a bundle whose name carries none is keyed by its file name."""
    return {scan.instance_id or scan.bundle: scan for scan in scans}


def cluster_summary(state: dict[str, Any]) -> dict[str, Any]:
    cluster = state.get("cluster", {})
    summary = {key: cluster.get(key) for key in ("name", "id", "type", "status", "region", "arn")}
    summary["name"] = summary["name"] or cluster.get("requested")
    return summary


def node_summary(view: RunView, findings: list[Finding]) -> dict[str, Any]:
    # A drained, down or failing node is out of service even when the reason's severity is info.
    unavailable = {ref for finding in findings for ref, node in finding.nodes.items()
                   if finding.node_unavailable or any(other.node_unavailable for other, _ in node.also_seen)}
    troubled = {ref for finding in findings if finding.severity in TROUBLE for ref in finding.nodes} | unavailable
    collected = {iid for iid, scan in view.scans.items() if not scan.error}
    statuses = Counter(node.get("status", "pending") for node in view.nodes.values())
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"nodes": 0, "instance_types": set()})
    for node in view.nodes.values():
        group = groups[node.get("group") or "?"]
        group["nodes"] += 1
        if node.get("instance_type"):
            group["instance_types"].add(node["instance_type"])
    severities = Counter(finding.severity for finding in findings)
    return {
        "total": len(view.nodes) or len(view.scans),
        "collected": len(collected),
        "status_counts": dict(sorted(statuses.items())),
        "healthy": len(collected - troubled),
        "unavailable": len(unavailable),
        "unavailable_set": nodeset.fold(sorted(node_names(view, unavailable))),
        "with_findings": {severity: len({ref for f in findings if f.severity == severity for ref in f.nodes})
                          for severity in SEVERITIES},
        "findings_by_severity": {severity: severities.get(severity, 0) for severity in SEVERITIES},
        "groups": {name: {"nodes": group["nodes"], "instance_types": sorted(group["instance_types"])}
                   for name, group in sorted(groups.items())},
    }


def node_names(view: RunView, refs: set[str]) -> list[str]:
    """Host names where known (instance ids otherwise), for folded node sets."""
    names = []
    for ref in refs:
        scan = view.scans.get(ref)
        names.append((view.nodes.get(ref) or {}).get("hostname") or (scan.facts.get("hostname") if scan else None)
                     or ref)
    return names


def node_index(view: RunView) -> dict[str, dict[str, Any]]:
    """Every node of the run, so a later `--against` knows which nodes this run could see."""
    index = {}
    for iid in sorted(set(view.nodes) | set(view.scans)):
        node, scan = view.nodes.get(iid, {}), view.scans.get(iid)
        index[iid] = {
            "hostname": node.get("hostname") or (scan.facts.get("hostname") if scan else None),
            "group": node.get("group") or (scan.group if scan else None),
            "status": node.get("status"),
            "hyperpod_status": node.get("hyperpod_status"),
            "read": scan is not None and not scan.error,
        }
    return index


def kubectl_summary(view: RunView) -> dict[str, Any]:
    if view.kube is None:
        return {"read": False, "note": f"no {KUBECTL_BUNDLE} in the run: Kubernetes rules did not run"}
    return {"read": True, "nodes": len(view.kube.nodes), "pods": len(view.kube.pods),
            "problems": view.kube.problems}


def finding_document(finding: Finding, view: RunView) -> dict[str, Any]:
    nodes = finding_nodes(finding, view)
    by_group: dict[str, list[str]] = defaultdict(list)
    for row in nodes:
        by_group[row["group"] or "?"].append(row["instance_id"] or row["hostname"])
    return {
        "id": finding.id,
        "rule": finding.rule,
        "key": finding.key,
        "severity": finding.severity,
        "title": finding.title,
        "meaning": finding.meaning,
        "action": finding.action,
        "node_count": len(nodes),
        "node_set": nodeset.fold(row["hostname"] or row["instance_id"] for row in nodes),
        "by_group": dict(sorted(by_group.items())),
        "nodes": nodes,
        "also_seen": also_seen(finding, view),
    }


def also_seen(finding: Finding, view: RunView) -> list[dict[str, Any]]:
    """The consequences folded under this finding, each once, with the nodes it was seen on."""
    seen: dict[str, dict[str, Any]] = {}
    for ref, node in finding.nodes.items():
        for other, _ in node.also_seen:
            entry = seen.setdefault(other.id, {"id": other.id, "title": other.title, "severity": other.severity,
                                               "refs": set()})
            entry["refs"].add(ref)
    return [{"id": entry["id"], "title": entry["title"], "severity": entry["severity"],
             "node_count": len(entry["refs"]), "node_set": nodeset.fold(sorted(node_names(view, entry["refs"])))}
            for entry in sorted(seen.values(), key=lambda e: (SEVERITY_ORDER[e["severity"]], e["id"]))]


def fleet_summary(view: RunView) -> dict[str, dict[str, dict[str, int]]]:
    """Per instance group, how many nodes have each value of each compared fact."""
    summary: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for iid, scan in view.scans.items():
        group = (view.nodes.get(iid) or {}).get("group") or scan.group or "?"
        for fact in FLEET_FACTS:
            if fact in scan.facts:
                summary[group][fact][str(scan.facts[fact])] += 1
    return {group: {fact: dict(values) for fact, values in facts.items()} for group, facts in sorted(summary.items())}
