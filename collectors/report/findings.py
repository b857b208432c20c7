"""Hits from every node folded into findings: one per rule and key, with the nodes it is on.

A finding is what the engineer reads: "Xid 79 on ip-10-1-4-[2,9]", its severity, one evidence
line per node, the action. Hits name their node by instance id, or by host name when they come
from another node's view (sinfo -R); both end up as the same node here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from collectors.report.catalog import SEVERITIES, Catalog
from collectors.report.checks import NODE_TESTS, TESTS
from collectors.report.model import Evidence, Hit, NodeScan, RunView

SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
EVIDENCE_PER_NODE = 3


@dataclass
class NodeFinding:
    ref: str  # instance id, or a host name the run does not know
    count: int
    evidence: list[Evidence]
    first_on: list[str] = field(default_factory=list)
    after: dict[str, str] = field(default_factory=dict)


@dataclass
class Finding:
    rule: str
    key: str | None
    severity: str
    title: str
    meaning: str
    action: str
    nodes: dict[str, NodeFinding] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.rule if self.key is None else f"{self.rule}:{self.key}"

    def sort_key(self) -> tuple:
        return SEVERITY_RANK[self.severity], -len(self.nodes), self.id


class NodeIndex:
    """Names of the run's nodes: instance id ↔ host name, from the state and from the bundles."""

    def __init__(self, view: RunView):
        self.by_hostname: dict[str, str] = {}
        for iid, node in view.nodes.items():
            for name in (node.get("hostname"), node.get("dns_hostname")):
                if name:
                    self.by_hostname[name] = iid
        for iid, scan in view.scans.items():
            if scan.facts.get("hostname"):
                self.by_hostname.setdefault(str(scan.facts["hostname"]), iid)

    def resolve(self, subject: str) -> str:
        if subject.startswith("i-"):
            return subject
        return self.by_hostname.get(subject) or self.by_hostname.get(subject.split(".", 1)[0]) or subject


def collect_hits(catalog: Catalog, view: RunView) -> list[tuple[str, Hit]]:
    """Every hit with the node it is about: node rules from the bundles, then the run-wide tests."""
    index = NodeIndex(view)
    placed: list[tuple[str, Hit]] = []
    seen_by_others: list[tuple[str, Hit]] = []  # placed after the rest: a node's own lines are the better proof
    for iid, scan in view.scans.items():
        for hit in scan.hits:
            ref = index.resolve(hit.subject) if hit.subject else iid
            if ref == iid:
                placed.append((ref, hit))
            else:
                seen_by_others.append((ref, from_other_bundle(hit, scan)))
    placed += seen_by_others
    for source in ("state", "kubectl", "fleet"):
        for rule in catalog.rules_from(source):
            for hit in TESTS[source][rule.test](rule, view):
                placed.append((index.resolve(hit.subject or ""), hit))
    return placed


def from_other_bundle(hit: Hit, scan: NodeScan) -> Hit:
    """The hit with its evidence saying whose bundle the lines are in."""
    source = str(scan.facts.get("hostname") or scan.bundle)
    return replace(hit, evidence=[replace(item, bundle=source) for item in hit.evidence])


def build_findings(catalog: Catalog, view: RunView) -> list[Finding]:
    findings: dict[tuple[str, str | None], Finding] = {}
    for ref, hit in drop_truncated(catalog, collect_hits(catalog, view)):
        rule = catalog.rule(hit.rule)
        rule_id, key = rule.same_as if rule.same_as else (hit.rule, hit.key)
        finding = findings.get((rule_id, key))
        if finding is None:
            text = catalog.rule(rule_id).describe(key) if rule.same_as else rule.describe(key, hit.case, hit.override)
            finding = findings[rule_id, key] = Finding(rule=rule_id, key=key, **text)
        add_node(finding, ref, hit)
    return sorted(findings.values(), key=Finding.sort_key)


def add_node(finding: Finding, ref: str, hit: Hit) -> None:
    """The same node may be reported by many bundles (sinfo -R is everywhere): keep one entry."""
    known = finding.nodes.get(ref)
    if known is None:
        finding.nodes[ref] = NodeFinding(ref, hit.count, list(hit.evidence[:EVIDENCE_PER_NODE]), list(hit.first_on),
                                         dict(hit.after))
        return
    known.count = max(known.count, hit.count)
    known.first_on = sorted(set(known.first_on) | set(hit.first_on))
    known.after.update(hit.after)
    texts = {item.text for item in known.evidence}
    fresh = [item for item in hit.evidence if item.text not in texts]
    known.evidence += fresh[:EVIDENCE_PER_NODE - len(known.evidence)]


def drop_truncated(catalog: Catalog, placed: list[tuple[str, Hit]]) -> list[tuple[str, Hit]]:
    """For tests whose keys may come cut short (sinfo -R's REASON column), a key that is a strict
    prefix of another key of the same rule on the same node is that key, shortened."""
    truncating = {rule.id for rule in catalog.rules_from("node")
                  if rule.test and getattr(NODE_TESTS[rule.test], "truncated_keys", False)}
    keys: dict[tuple[str, str], set[str]] = {}
    for ref, hit in placed:
        if hit.rule in truncating and hit.key:
            keys.setdefault((hit.rule, ref), set()).add(hit.key)

    def is_cut_short(ref: str, hit: Hit) -> bool:
        others = keys.get((hit.rule, ref), set())
        return any(other != hit.key and other.startswith(hit.key) for other in others)

    return [(ref, hit) for ref, hit in placed if not (hit.rule in truncating and hit.key and is_cut_short(ref, hit))]


def finding_nodes(finding: Finding, view: RunView) -> list[dict[str, Any]]:
    """The finding's nodes as findings.json lists them, sorted by group then host name."""
    rows = []
    for ref, node in finding.nodes.items():
        record = view.nodes.get(ref) or {}
        scan = view.scans.get(ref)
        hostname = record.get("hostname") or (scan.facts.get("hostname") if scan else None)
        rows.append({
            "instance_id": ref if ref.startswith("i-") else None,
            "hostname": hostname or (None if ref.startswith("i-") else ref),
            "group": record.get("group") or (scan.group if scan else None),
            "count": node.count,
            "evidence": [item.as_dict() for item in node.evidence],
            # Per GPU: where this was the first (the root cause), and where another came first.
            **({"first_on_gpus": node.first_on} if node.first_on else {}),
            **({"after_on_gpus": node.after} if node.after else {}),
        })
    return sorted(rows, key=lambda row: (row["group"] or "~", row["hostname"] or "", row["instance_id"] or ""))
