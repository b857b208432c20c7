"""Hits from every node folded into findings: one per rule and key, with the nodes it is on.

A finding is what the engineer reads: "Xid 79 on ip-10-1-4-[2,9]", its severity, one evidence
line per node, the action. Hits name their node by instance id, or by host name when they come
from another node's view (sinfo -R); both end up as the same node here.
"""

from __future__ import annotations

import fnmatch
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
    gpus: list[str] = field(default_factory=list)
    # Consequences of this fault seen on the node, folded here: (finding, its entry for this node).
    also_seen: list[tuple["Finding", "NodeFinding"]] = field(default_factory=list)


@dataclass
class Finding:
    rule: str
    key: str | None
    severity: str
    title: str
    meaning: str
    action: str
    nodes: dict[str, NodeFinding] = field(default_factory=dict)
    consequence_of: tuple[str, ...] = ()
    node_unavailable: bool = False

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
    for source in ("state", "kubectl", "fleet", "cluster_api"):
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
            owner = catalog.rule(rule_id)
            text = owner.describe(key) if rule.same_as else rule.describe(key, hit.case, hit.override)
            finding = findings[rule_id, key] = Finding(rule=rule_id, key=key, consequence_of=owner.consequences(key),
                                                       node_unavailable=owner.node_unavailable, **text)
        add_node(finding, ref, hit)
    return sorted(fold_consequences(list(findings.values())), key=Finding.sort_key)


def add_node(finding: Finding, ref: str, hit: Hit) -> None:
    """The same node may be reported by many bundles (sinfo -R is everywhere): keep one entry."""
    known = finding.nodes.get(ref)
    if known is None:
        finding.nodes[ref] = NodeFinding(ref, hit.count, list(hit.evidence[:EVIDENCE_PER_NODE]), list(hit.first_on),
                                         dict(hit.after), sorted(hit.gpus))
        return
    known.count = max(known.count, hit.count)
    known.first_on = sorted(set(known.first_on) | set(hit.first_on))
    known.gpus = sorted(set(known.gpus) | set(hit.gpus))
    known.after.update(hit.after)
    texts = {item.text for item in known.evidence}
    fresh = [item for item in hit.evidence if item.text not in texts]
    known.evidence += fresh[:EVIDENCE_PER_NODE - len(known.evidence)]


def fold_consequences(findings: list[Finding]) -> list[Finding]:
    """One fault, one finding: on each node, a finding that is a consequence of another one there
    (its rule's `consequence_of`; on the same GPU where both name GPUs) moves under that finding's
    root cause, whose severity and action stand for the fault. A finding left without nodes is gone."""
    by_node: dict[str, list[Finding]] = {}
    for finding in findings:
        for ref in finding.nodes:
            by_node.setdefault(ref, []).append(finding)
    for ref, present in by_node.items():
        roots = root_causes(present, ref)
        for finding in present:
            root = roots[finding.id]
            if root is not finding:
                entry = finding.nodes.pop(ref)
                root.nodes[ref].also_seen.append((finding, entry))
    return [finding for finding in findings if finding.nodes]


def root_causes(present: list[Finding], ref: str) -> dict[str, Finding]:
    """For each finding on the node, the finding its chain of causes ends at (itself when it has no
    cause there). A chain that comes back on itself (Xid 45 and Xid 154 each follow "any Xid") ends
    where it would close, so two findings never fold under each other."""
    roots: dict[str, Finding] = {}
    for finding in present:
        path: list[Finding] = []
        current = finding
        while current.id not in roots:
            path.append(current)
            passed = {item.id for item in path}
            cause = next((other for other in present if other.id not in passed and caused_by(current, other, ref)),
                         None)
            if cause is None:
                roots[current.id] = current
                break
            current = cause
        for item in path:
            roots[item.id] = roots[current.id]
    return roots


def caused_by(consequence: Finding, cause: Finding, ref: str) -> bool:
    # rule:key patterns name one finding; a bare rule (or rule glob) names every key of it.
    if not any(fnmatch.fnmatchcase(cause.id if ":" in pattern else cause.rule, pattern)
               for pattern in consequence.consequence_of):
        return False
    ours, theirs = consequence.nodes[ref].gpus, cause.nodes[ref].gpus
    return not ours or not theirs or bool(set(ours) & set(theirs))


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
            **({"gpus": node.gpus} if node.gpus else {}),
            **({"also_seen": [{"id": other.id, "title": other.title, "severity": other.severity, "count": entry.count,
                               "evidence": [item.as_dict() for item in entry.evidence[:1]]}
                              for other, entry in node.also_seen]} if node.also_seen else {}),
        })
    return sorted(rows, key=lambda row: (row["group"] or "~", row["hostname"] or "", row["instance_id"] or ""))
