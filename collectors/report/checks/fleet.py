"""Run tests across the fleet: a node whose fact differs from its instance group's, fewer GPUs than expected."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from collectors.report.model import Evidence, Hit, RunView


def fleet_hit(rule: Any, view: RunView, iid: str, key: str, fact: str, text: str | None = None) -> Hit:
    source = view.scans[iid].fact_evidence.get(fact)
    proof = Evidence(source.file, source.line, text or source.text) if source else Evidence("-", None, text or "")
    return Hit(rule=rule.id, key=key, count=1, subject=iid, evidence=[proof])


def majority(rule: Any, view: RunView) -> list[Hit]:
    """Within each instance group, nodes whose fact differs from the group's strict majority; with
    no strict majority, every node of the split group, since no one can say which side is right."""
    fact = rule.params["fact"]
    by_group: dict[str, dict[str, str]] = defaultdict(dict)
    for iid, scan in view.scans.items():
        if fact in scan.facts:
            group = (view.nodes.get(iid) or {}).get("group") or scan.group or "?"
            by_group[group][iid] = str(scan.facts[fact])
    hits = []
    for group, values in sorted(by_group.items()):
        if len(set(values.values())) < 2:
            continue
        top, top_count = Counter(values.values()).most_common(1)[0]
        has_majority = top_count * 2 > len(values)
        for iid, value in sorted(values.items()):
            if value != top or not has_majority:
                key = f"{value} vs {top}" if has_majority else f"{value}, no majority"
                text = f"{fact} {value} here; {top_count} of {len(values)} nodes of {group} have {top}"
                hits.append(fleet_hit(rule, view, iid, key, fact, text))
    return hits


def expected_count(rule: Any, view: RunView) -> list[Hit]:
    """Fewer GPUs in nvidia-smi than the instance type has (EKS NMA NvidiaDeviceCountMismatch) or
    than lspci sees on the PCI bus (azhpc check_missing_gpus). A node where nvidia-smi said
    nothing is left to the nvidia-smi rules rather than guessed at here."""
    fact, expected = rule.params["fact"], rule.params.get("expected", {})
    hits = []
    for iid, scan in view.scans.items():
        found = scan.facts.get(fact)
        references = gpu_references(expected, (view.nodes.get(iid) or {}).get("instance_type"),
                                    scan.facts.get(rule.params.get("bus_fact", "")))
        if found is None or not references:
            continue
        want, source = max(references)
        if int(found) < want:
            hits.append(fleet_hit(rule, view, iid, f"{found} of {want}", fact,
                                  f"nvidia-smi shows {found} GPU(s); {source} {want}"))
    return hits


def gpu_references(expected: dict[str, int], instance_type: str | None, on_bus: Any) -> list[tuple[int, str]]:
    """What the GPU count should be: the instance type's, and what lspci sees on the PCI bus."""
    references = []
    if instance_type in expected:
        references.append((int(expected[instance_type]), f"{instance_type} has"))
    if on_bus:
        references.append((int(on_bus), "lspci sees"))
    return references
