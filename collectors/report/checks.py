"""The catalog's `test:` rules: checks a regex alone cannot express.

Node tests read the lines of their files in one bundle (`feed`, then `finish`). The other tests
look at the whole run (`RunView`): the state file, every bundle's facts, the Kubernetes objects.
Each returns Hits; the engine turns them into findings exactly as it does pattern matches.
"""

from __future__ import annotations

import datetime as dt
import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from typing import Any, Iterator

from collectors.report import nodeset
from collectors.report.model import Evidence, Hit, RunView, decode
from collectors.state import SUCCESS_STATUSES

STATE_FILE = "state.json"
HEALTH_LABEL = "sagemaker.amazonaws.com/node-health-status"
DEEP_HEALTH_LABEL = "sagemaker.amazonaws.com/deep-health-check-status"
FAULT_LABELS = ("sagemaker.amazonaws.com/fault-type", "sagemaker.amazonaws.com/fault-reason")
EKS_NODE_PREFIX = "hyperpod-"


class NodeTest(ABC):
    """Reads the lines of its rule's files in one bundle, then says what it found."""

    def __init__(self, rule: Any):
        self.rule = rule
        self.counters: dict[str, int] = {}

    @abstractmethod
    def feed(self, path: str, number: int, line: bytes) -> None:
        """One line of one of the rule's files, in file order."""

    @abstractmethod
    def finish(self) -> list[Hit]:
        """What the lines showed, once the bundle has been read."""

    def hit(self, key: str | None, path: str, number: int | None, line: bytes | str, **extra: Any) -> Hit:
        proof = Evidence.of_line(path, number, line if isinstance(line, bytes) else line.encode())
        return Hit(rule=self.rule.id, key=key, count=1, evidence=[proof], **extra)


# -- node tests ------------------------------------------------------------------------------------

LNK_WIDTH_RE = re.compile(rb"^\s*(LnkCap|LnkSta):.*?Width x(\d+)")
LSPCI_DEVICE_RE = re.compile(rb"^([0-9a-fA-F]{2,4}:[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2})?\.\d) (.*)")


class PcieWidth(NodeTest):
    """`lspci -vvv`: a device whose link status has fewer lanes than its capability (LnkSta < LnkCap).
    Speed is not compared: idle GPUs lower their link speed on purpose, never their width."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.device = b""
        self.capable: int | None = None
        self.found: list[Hit] = []

    def feed(self, path: str, number: int, line: bytes) -> None:
        device = LSPCI_DEVICE_RE.match(line)
        if device:
            self.device, self.capable = device.group(1), None
            return
        link = LNK_WIDTH_RE.match(line)
        if not link:
            return
        width = int(link.group(2))
        if link.group(1) == b"LnkCap":
            self.capable = width
        elif self.capable is not None and width < self.capable:
            self.found.append(self.hit(None, path, number, self.device + b": " + line.strip()))

    def finish(self) -> list[Hit]:
        if not self.found:
            return []
        first = self.found[0]
        first.count = len(self.found)
        first.evidence = [hit.evidence[0] for hit in self.found[:3]]
        return [first]


EFA_SAMPLE_RE = re.compile(rb"^== sample (\d+)")
EFA_COUNTER_RE = re.compile(rb"^\./([^/]+)/ports/(\d+)/hw_counters/([^:]+):(\d+)\s*$")


class EfaCounterDelta(NodeTest):
    """Two samples of every EFA hw_counter, a few seconds apart: an error counter that grew is live
    trouble, a large total alone may be months old. Sample-2 totals also go to --against."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.watched = {name.encode() for name in rule.params.get("counters", [])}
        self.sample = 0
        self.first: dict[tuple[bytes, ...], int] = {}
        self.found: dict[str, Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        header = EFA_SAMPLE_RE.match(line)
        if header:
            self.sample = int(header.group(1))
            return
        counter = EFA_COUNTER_RE.match(line)
        if not counter or self.sample not in (1, 2):
            return
        device, port, name, value = counter.groups()
        if self.sample == 1:
            self.first[device, port, name] = int(value)
            return
        label = f"efa.{decode(name)}"
        self.counters[label] = self.counters.get(label, 0) + int(value)
        before = self.first.get((device, port, name))
        if name in self.watched and before is not None and int(value) > before:
            text = line.strip() + f" (was {before} in sample 1)".encode()
            key = decode(name)
            if key in self.found:
                self.found[key].count += 1
            else:
                self.found[key] = self.hit(key, path, number, text)

    def finish(self) -> list[Hit]:
        return list(self.found.values())


SINFO_REASON_RE = re.compile(rb"^(.*?)\s+\S+\s+(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|Unknown)\s+([\w.\-\[\],]+)\s*$")
SCONTROL_NODE_RE = re.compile(rb"^NodeName=(\S+)")
SCONTROL_STATE_RE = re.compile(rb"\bState=(\S+)")
SCONTROL_REASON_RE = re.compile(rb"^\s*Reason=(.*?)(?: \[[^\]]*@[^\]]*\])?\s*$")


class SlurmReasons(NodeTest):
    """Drain and down reasons from `sinfo -R` (every node) and `scontrol show node` (this node, in
    full). Every bundle holds the reasons of the whole cluster, so each hit names its node
    (`subject`), which also reports reasons for nodes that could not be collected at all."""

    truncated_keys = True  # sinfo -R cuts long reasons: the same reason may come shorter from it

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.table = [(entry["match"].lower(), entry) for entry in rule.params.get("reasons", [])]
        self.node: str | None = None
        self.state = ""
        self.found: dict[tuple[str, str], Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        if path.endswith("sinfo_R.txt"):
            self.feed_sinfo(path, number, line)
        else:
            self.feed_scontrol(path, number, line)

    def feed_sinfo(self, path: str, number: int, line: bytes) -> None:
        # REASON may hold blanks; USER, TIMESTAMP and NODELIST never do. A line without a timestamp
        # is the header or a note (an item that could not run), not a reason.
        row = SINFO_REASON_RE.match(line)
        if row:
            reason = decode(row.group(1)).strip()
            for host in nodeset.expand(decode(row.group(2))):
                self.add(host, reason, path, number, line)

    def feed_scontrol(self, path: str, number: int, line: bytes) -> None:
        node = SCONTROL_NODE_RE.match(line)
        if node:
            self.node, self.state = decode(node.group(1)), ""
        state = SCONTROL_STATE_RE.search(line)
        if state:
            self.state = decode(state.group(1))
        reason = SCONTROL_REASON_RE.match(line)
        if reason and self.node and reason.group(1).strip() not in (b"", b"(null)", b"none"):
            self.add(self.node, decode(reason.group(1)).strip(), path, number, line)

    def add(self, host: str, reason: str, path: str, number: int, line: bytes) -> None:
        if (host, reason) in self.found:
            return
        entry = self.classify(reason)
        self.found[host, reason] = self.hit(reason, path, number, line, subject=host, case="",
                                            override={name: entry[name] for name in ("severity", "meaning", "action")
                                                      if name in entry})

    def classify(self, reason: str) -> dict[str, str]:
        lowered = reason.lower()
        for match, entry in self.table:
            if lowered.startswith(match):
                return entry
        return {}

    def finish(self) -> list[Hit]:
        return list(self.found.values())


SINFO_ROW_RE = re.compile(rb"^\S+\s+\S+\s+\S+\s+\d+\s+(\S+)\s+(\S+)\s*$")


class SlurmNotResponding(NodeTest):
    """`sinfo`: a state with a `*` suffix means slurmctld has not heard from the node's slurmd."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.found: dict[str, Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        row = SINFO_ROW_RE.match(line)
        if not row or not row.group(1).endswith(b"*"):
            return
        state = decode(row.group(1))
        for host in nodeset.expand(decode(row.group(2))):
            self.found.setdefault(host, self.hit(state, path, number, line, subject=host))

    def finish(self) -> list[Hit]:
        return list(self.found.values())


NODE_TESTS: dict[str, type[NodeTest]] = {
    "pcie_width": PcieWidth,
    "efa_counter_delta": EfaCounterDelta,
    "slurm_reasons": SlurmReasons,
    "slurm_not_responding": SlurmNotResponding,
}


# -- state tests -------------------------------------------------------------------------------------

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


# -- Kubernetes tests --------------------------------------------------------------------------------

def kube_subject(name: str) -> str:
    """HyperPod EKS nodes are named hyperpod-<instance-id>."""
    return name[len(EKS_NODE_PREFIX):] if name.startswith(EKS_NODE_PREFIX + "i-") else name


def kube_hit(rule: Any, source: str, name: str, key: str, text: str, case: str | None = None) -> Hit:
    return Hit(rule=rule.id, key=key, count=1, subject=kube_subject(name), case=case,
               evidence=[Evidence(source, None, text)])


def hyperpod_labels(rule: Any, view: RunView) -> list[Hit]:
    if view.kube is None:
        return []
    hits = []
    for node in view.kube.nodes:
        name = node.get("metadata", {}).get("name", "?")
        labels = node.get("metadata", {}).get("labels") or {}
        faults = "".join(f", {label.rsplit('/', 1)[1]}={labels[label]}" for label in FAULT_LABELS if label in labels)
        for label, healthy in ((HEALTH_LABEL, ("Schedulable",)), (DEEP_HEALTH_LABEL, ("Passed",))):
            value = labels.get(label)
            if value and value not in healthy:
                short = label.rsplit("/", 1)[1]
                hits.append(kube_hit(rule, view.kube.sources.get("Node", "kubectl"), name, f"{short}={value}",
                                     f"node {name}: {label}={value}{faults}", case=value))
    return hits


PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")


def node_conditions(rule: Any, view: RunView) -> list[Hit]:
    """Ready must be True, pressures False; node agents add `...Ready` conditions of their own."""
    if view.kube is None:
        return []
    hits = []
    for node in view.kube.nodes:
        name = node.get("metadata", {}).get("name", "?")
        for condition in node.get("status", {}).get("conditions") or []:
            kind, status = condition.get("type", ""), condition.get("status", "")
            bad = (status == "True") if kind in PRESSURE_CONDITIONS else (kind.endswith("Ready") and status != "True")
            if bad:
                detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
                hits.append(kube_hit(rule, view.kube.sources.get("Node", "kubectl"), name, f"{kind}={status}",
                                     f"node {name}: {kind}={status}" + (f" ({detail})" if detail else "")))
    return hits


WAITING_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")


def pod_states(rule: Any, view: RunView) -> list[Hit]:
    if view.kube is None:
        return []
    hits = []
    stuck_after = float(rule.params.get("stuck_terminating_minutes", 30)) * 60
    for pod in view.kube.pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            continue
        meta = pod.get("metadata", {})
        where = f"pod {meta.get('namespace', '?')}/{meta.get('name', '?')} on {node}"
        for state, detail in pod_problems(pod, view.kube.collected_at, stuck_after):
            hits.append(kube_hit(rule, view.kube.sources.get("Pod", "kubectl"), node, state, f"{where}: {detail}"))
    return hits


def pod_problems(pod: dict[str, Any], collected_at: float | None, stuck_after: float) -> Iterator[tuple[str, str]]:
    status = pod.get("status", {})
    if status.get("reason") == "Evicted":
        yield "Evicted", status.get("message") or "evicted"
    for container in status.get("containerStatuses") or []:
        restarts = container.get("restartCount", 0)
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            yield waiting["reason"], f"container {container.get('name')} {waiting['reason']}, {restarts} restarts"
        for moment in ("state", "lastState"):
            terminated = (container.get(moment) or {}).get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                yield "OOMKilled", f"container {container.get('name')} OOMKilled (exit {terminated.get('exitCode')})"
                break
    deleted = pod.get("metadata", {}).get("deletionTimestamp")
    if deleted and collected_at is not None:
        age = collected_at - parse_time(deleted)
        if age > stuck_after:
            yield "Terminating", f"terminating for {int(age // 60)} minutes"


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- fleet tests -------------------------------------------------------------------------------------

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


# Tests by source; node tests are classes fed lines, the others functions of (rule, RunView).
TESTS: dict[str, dict[str, Any]] = {
    "node": NODE_TESTS,
    "state": {"hyperpod_status": hyperpod_status, "collection_status": collection_status,
              "bundle_missing": bundle_missing},
    "kubectl": {"hyperpod_labels": hyperpod_labels, "node_conditions": node_conditions, "pod_states": pod_states},
    "fleet": {"majority": majority, "expected_count": expected_count},
}
