"""What changed between two reports of the same cluster: new and cleared findings, counters that grew.

Totals of error counters mean little (they may be months old); growth between two runs is what
points at live trouble. A finding only counts as cleared on a node this run could read: a node
that was not collected this time has not been shown healthy.
"""

from __future__ import annotations

from typing import Any

from collectors.report import nodeset


def compare(current: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    now, before = pairs(current), pairs(earlier)
    readable = {iid for iid, node in current["node_index"].items() if node.get("read")}
    new = {pair for pair in now if pair not in before}
    cleared = {pair for pair in before if pair not in now and pair[1] in readable}
    return {
        "against": earlier["run_id"],
        "note": catalog_note(current, earlier),
        "new": grouped(new, current),
        "cleared": grouped(cleared, earlier),
        "grew": grown_counts(now, before, current),
        "counters": grown_counters(current, earlier),
        "nodes": node_changes(current, earlier),
    }


def node_ref(node: dict[str, Any]) -> str:
    return node["instance_id"] or node["hostname"]


def pairs(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(finding id, node) → count."""
    return {(finding["id"], node_ref(node)): node["count"] for finding in doc["findings"] for node in finding["nodes"]}


def grouped(selected: set[tuple[str, str]], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs folded back into one entry per finding, worst first, as the report lists them."""
    entries = []
    for finding in doc["findings"]:
        refs = [ref for finding_id, ref in selected if finding_id == finding["id"]]
        if refs:
            entries.append({"id": finding["id"], "title": finding["title"], "severity": finding["severity"],
                            "nodes": sorted(refs), "node_set": nodeset.fold(host_names(refs, doc))})
    return entries


def host_names(refs: list[str], doc: dict[str, Any]) -> list[str]:
    index = doc["node_index"]
    return [(index.get(ref) or {}).get("hostname") or ref for ref in refs]


def grown_counts(now: dict, before: dict, current: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": finding_id, "node": host_names([ref], current)[0], "instance_id": ref,
             "before": before[finding_id, ref], "after": count}
            for (finding_id, ref), count in sorted(now.items())
            if (finding_id, ref) in before and count > before[finding_id, ref]]


def grown_counters(current: dict[str, Any], earlier: dict[str, Any]) -> list[dict[str, Any]]:
    grown = []
    for iid, counters in sorted(current.get("counters", {}).items()):
        previous = earlier.get("counters", {}).get(iid, {})
        for name, value in sorted(counters.items()):
            if name in previous and value > previous[name]:
                grown.append({"node": host_names([iid], current)[0], "instance_id": iid, "counter": name,
                              "before": previous[name], "after": value})
    return grown


def node_changes(current: dict[str, Any], earlier: dict[str, Any]) -> dict[str, str]:
    now, before = set(current["node_index"]), set(earlier["node_index"])
    return {"appeared": nodeset.fold(host_names(sorted(now - before), current)),
            "gone": nodeset.fold(host_names(sorted(before - now), earlier))}


def catalog_note(current: dict[str, Any], earlier: dict[str, Any]) -> str | None:
    if current["catalog_version"] == earlier["catalog_version"]:
        return None
    return (f"run {earlier['run_id']} was judged by catalog version {earlier['catalog_version']}, this run by "
            f"{current['catalog_version']}: some changes may come from the catalog, not the cluster")
