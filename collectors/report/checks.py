"""The catalog's `test:` rules: checks a regex alone cannot express.

Node tests read the lines of their files in one bundle (`feed`, then `finish`). The other tests
look at the whole run (`RunView`): the state file, every bundle's facts, the Kubernetes objects.
Each returns Hits; the engine turns them into findings exactly as it does pattern matches.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

from collectors.report import nodeset
from collectors.report.cluster_api import CLUSTER_API_TESTS
from collectors.report.model import CsvRows, Evidence, Hit, RunView, csv_number, decode, gpu_id
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

    def literal(self, path: str) -> bytes | None:
        """A string every line this test needs from `path` holds, or None to be fed every line."""
        return None

    def hit(self, key: str | None, path: str, number: int | None, line: bytes | str, **extra: Any) -> Hit:
        proof = Evidence.of_line(path, number, line if isinstance(line, bytes) else line.encode())
        return Hit(rule=self.rule.id, key=key, count=1, evidence=[proof], **extra)


# -- node tests ------------------------------------------------------------------------------------

LNK_RE = re.compile(rb"^\s*(LnkCap|LnkSta):.*?Speed ([\d.]+)GT/s.*?Width x(\d+)")
LSPCI_DEVICE_RE = re.compile(rb"^([0-9a-fA-F]{2,4}:[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2})?\.\d) (.*)")


class PcieWidth(NodeTest):
    """`lspci -vvv`: a device whose link status is narrower than its capability (LnkSta < LnkCap),
    or, for other devices than NVIDIA's, slower. NVIDIA GPUs lower their link speed when idle on
    purpose (nvidia-smi --help-query-gpu, pcie.link.gen.current: "may be reduced when the GPU is not
    in use"); their speed is judged from nvidia-smi -q under load instead (gpu.pcie_smi)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.device = b""
        self.nvidia = False
        self.capable: tuple[float, int] | None = None
        self.found: list[Hit] = []

    def feed(self, path: str, number: int, line: bytes) -> None:
        device = LSPCI_DEVICE_RE.match(line)
        if device:
            self.device, self.capable = device.group(1), None
            self.nvidia = b"NVIDIA" in device.group(2)
            return
        link = LNK_RE.match(line)
        if not link:
            return
        speed, width = float(link.group(2)), int(link.group(3))
        if link.group(1) == b"LnkCap":
            self.capable = (speed, width)
        elif self.capable is not None and (width < self.capable[1] or (speed < self.capable[0] and not self.nvidia)):
            hit = self.hit(None, path, number, self.device + b": " + line.strip())
            hit.gpus = [gpu_id(decode(self.device))] if self.nvidia else []
            self.found.append(hit)

    def finish(self) -> list[Hit]:
        return [gathered(self.found)] if self.found else []


def gathered(hits: list[Hit]) -> Hit:
    """Many hits of one key as one: counted, the first evidence lines, every GPU named."""
    first = hits[0]
    first.count = len(hits)
    first.evidence = [hit.evidence[0] for hit in hits[:3]]
    first.gpus = sorted({gpu for hit in hits for gpu in hit.gpus})
    return first


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


# -- nvidia-smi -q ----------------------------------------------------------------------------------

SMI_GPU_RE = re.compile(rb"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\s*$")
SMI_FIELD_RE = re.compile(rb"^( *)(\S.*?)(?:\s+:\s*(.*?))?\s*$")
# Names that changed between drivers: R535 renamed "Clocks Throttle Reasons" to "Clocks Event Reasons"
# (tests/fixtures/realworld: 470 and 525 say Throttle, 535 and later Event), and older drivers say
# "Pending Page Blacklist" where newer ones say "Pending Page Retirement".
SMI_ALIASES = {"Clocks Throttle Reasons": "Clocks Event Reasons",
               "Clocks Throttle Reasons Counters": "Clocks Event Reasons Counters",
               "Pending Page Retirement": "Pending Page Blacklist"}


@dataclass
class SmiField:
    value: str
    number: int
    line: bytes


@dataclass
class SmiGpu:
    """One GPU's section of `nvidia-smi -q`: fields by their path of section names."""

    address: str
    fields: dict[tuple[str, ...], SmiField] = field(default_factory=dict)

    @property
    def gpu(self) -> str:
        return gpu_id(self.address) or self.address

    def get(self, *path: str) -> SmiField | None:
        return self.fields.get(path)

    def number(self, *path: str) -> float | None:
        found = self.get(*path)
        if found is None:
            return None
        digits = re.match(r"^-?\d+(?:\.\d+)?", found.value)
        return float(digits.group()) if digits else None


class SmiQuery(NodeTest):
    """Reads `nvidia-smi -q` into one record per GPU, whatever the driver's layout: sections are
    told by indentation, not by column (the value column moved from 36 to 42 characters in R450),
    a section may be a single `Name : N/A` line (Remapped Rows on GPUs without them), and renamed
    fields are read under one name (SMI_ALIASES). Subclasses judge each GPU (`judge`)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.gpus: list[SmiGpu] = []
        self.sections: list[tuple[int, str]] = []
        self.path = ""

    def feed(self, path: str, number: int, line: bytes) -> None:
        self.path = path
        gpu = SMI_GPU_RE.match(line)
        if gpu:
            self.gpus.append(SmiGpu(decode(gpu.group(1))))
            self.sections = []
            return
        parsed = SMI_FIELD_RE.match(line)
        if not self.gpus or not parsed:
            return
        indent, name, value = len(parsed.group(1)), decode(parsed.group(2)), parsed.group(3)
        name = SMI_ALIASES.get(name, name)
        while self.sections and self.sections[-1][0] >= indent:
            self.sections.pop()
        if value is None:
            self.sections.append((indent, name))
            return
        key = tuple(section for _, section in self.sections) + (name,)
        self.gpus[-1].fields[key] = SmiField(decode(value), number, line)

    def finish(self) -> list[Hit]:
        found: dict[str | None, list[Hit]] = defaultdict(list)
        for gpu in self.gpus:
            for key, evidence in self.judge(gpu):
                hit = self.hit(key, self.path, evidence.number, evidence.line, gpus=[gpu.gpu])
                hit.evidence[0].text = f"GPU {gpu.address}: {hit.evidence[0].text.strip()}"
                found[key].append(hit)
        return [gathered(hits) for hits in found.values()]

    @abstractmethod
    def judge(self, gpu: SmiGpu) -> Iterator[tuple[str | None, SmiField]]:
        """(key, the field that shows it) for each fault this GPU's record shows."""


def is_set(field_: SmiField | None) -> bool:
    """Yes, Active or a count above zero; never No, N/A, 0 or Not Active."""
    if field_ is None:
        return False
    number = csv_number(field_.value.encode())
    return number is not None and number > 0


class SmiFlag(SmiQuery):
    """A GPU where any of `params.fields` (paths of section names) is set (Yes, or a count > 0)."""

    def judge(self, gpu: SmiGpu) -> Iterator[tuple[str | None, SmiField]]:
        for path in self.rule.params.get("fields", []):
            found = gpu.get(*path)
            if is_set(found):
                yield None, found
                return


# Which throttle reason is which cause; the HW Slowdown flag is set with either of its two children
# (nvml.h: nvmlClocksThrottleReasonHwSlowdown is HW thermal or power brake or another HW signal).
THROTTLE_CAUSES = (("HW Thermal Slowdown", "HW Thermal Slowdown", "HW thermal slowdown"),
                   ("HW Power Brake Slowdown", "HW Power Braking", "HW power brake"),
                   ("SW Thermal Slowdown", "SW Thermal Slowdown", "SW thermal slowdown"))
THROTTLE_BITS = {0x40: "HW thermal slowdown", 0x80: "HW power brake", 0x20: "SW thermal slowdown", 0x08: "HW slowdown"}
THROTTLE_COLUMNS = ("clocks_throttle_reasons.active", "clocks_event_reasons.active")


class SmiThrottle(SmiQuery):
    """Thermal and power slowdown, one hit per cause with the GPUs it is on: active now (the flags of
    `nvidia-smi -q`, or the bitmask of nvidia_smi_gpus.csv) or, where the driver keeps the counters
    (Clocks Event Reasons Counters, R535 and later), `params.past_seconds` or more of it since the
    driver loaded. HW Slowdown alone is its own cause only when neither of its children is set."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.csv = CsvRows()
        self.csv_active: dict[str, tuple[set[str], int, bytes, str]] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        if not path.endswith(".csv"):
            super().feed(path, number, line)
            return
        row = self.csv.feed(line)
        column = next((c for c in THROTTLE_COLUMNS if row and c in row), None)
        mask = csv_number(row[column]) if column else None
        gpu = gpu_id(decode(row.get("pci.bus_id", b""))) if row else None
        if mask is not None and gpu:
            self.csv_active[gpu] = (bitmask_causes(int(mask)), number, line, path)

    def judge(self, gpu: SmiGpu) -> Iterator[tuple[str | None, SmiField]]:
        past = float(self.rule.params.get("past_seconds", 60))
        active = [(cause, gpu.get("Clocks Event Reasons", flag)) for flag, _, cause in THROTTLE_CAUSES
                  if gpu.get("Clocks Event Reasons", flag) and gpu.get("Clocks Event Reasons", flag).value == "Active"]
        slowdown = gpu.get("Clocks Event Reasons", "HW Slowdown")
        if not any(cause.startswith("HW") for cause, _ in active) and slowdown and slowdown.value == "Active":
            active.append(("HW slowdown", slowdown))
        for cause, evidence in active:
            yield f"{cause}, active", evidence
        for _, counter, cause in THROTTLE_CAUSES:
            seconds = (gpu.number("Clocks Event Reasons Counters", counter) or 0) / 1e6
            if cause not in dict(active) and seconds >= past:
                yield f"{cause}, earlier", gpu.get("Clocks Event Reasons Counters", counter)

    def finish(self) -> list[Hit]:
        hits = super().finish()
        seen = {(gpu, hit.key) for hit in hits for gpu in hit.gpus}
        for gpu, (causes, number, line, path) in sorted(self.csv_active.items()):
            for cause in sorted(causes):
                if (gpu, f"{cause}, active") not in seen:  # nvidia-smi -q said it already
                    hits.append(self.hit(f"{cause}, active", path, number, line, gpus=[gpu]))
        return merged_by_key(hits)


def bitmask_causes(mask: int) -> set[str]:
    causes = {cause for bit, cause in THROTTLE_BITS.items() if mask & bit}
    if causes & {"HW thermal slowdown", "HW power brake"}:
        causes.discard("HW slowdown")
    return causes


def merged_by_key(hits: list[Hit]) -> list[Hit]:
    by_key: dict[str | None, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_key[hit.key].append(hit)
    merged = []
    for group in by_key.values():
        evidence = [item for hit in group for item in hit.evidence]
        count = sum(max(hit.count, 1) for hit in group)
        first = gathered(group)
        first.count, first.evidence = count, evidence[:3]
        merged.append(first)
    return merged


class SmiPcie(SmiQuery):
    """A GPU under load (utilization of at least `params.busy_percent`) whose PCIe link runs below
    its maximum generation or width. Idle GPUs lower both on purpose (nvidia-smi --help-query-gpu:
    "These may be reduced when the GPU is not in use"), so an idle GPU is never judged."""

    def judge(self, gpu: SmiGpu) -> Iterator[tuple[str | None, SmiField]]:
        load = gpu.number("Utilization", "Gpu")
        if load is None or load < float(self.rule.params.get("busy_percent", 50)):
            return
        for part in ("PCIe Generation", "Link Width"):
            current = gpu.number("PCI", "GPU Link Info", part, "Current")
            best = gpu.number("PCI", "GPU Link Info", part, "Max")
            if current is not None and best is not None and current < best:
                yield None, gpu.get("PCI", "GPU Link Info", part, "Current")
                return


# -- services -----------------------------------------------------------------------------------------

UNIT_NAME = rb"(?P<unit>[\w@:.\\-]+\.(?:service|socket|mount|timer|path|scope|target))"
# A unit line may start with systemd's bullet (one character, several bytes: ●, ×, or * in plain ASCII).
FAILED_LISTED_RE = re.compile(rb"^\s*(?:\S+\s+)?" + UNIT_NAME + rb"\s+\S+\s+failed\s+\S+")
STATUS_HEADER_RE = re.compile(rb"^\s*(?:\S+\s+)?" + UNIT_NAME + rb"(?: - |$)")
# Failed, or in a restart loop after a failure (systemctl status: "activating (auto-restart) (Result: exit-code)").
STATUS_FAILED_RE = re.compile(rb"^\s*Active: (?:failed\b|activating \(auto-restart\) \(Result: (?!success))")
RESTART_COUNTER_RE = re.compile(rb"systemd\[1\]: " + UNIT_NAME + rb": Scheduled restart job, restart counter is at (\d+)")
# What systemd writes when a unit fails (journal lines of systemd[1]); the older wording is
# systemd 219's (CentOS 7, tests/fixtures/realworld).
JOURNAL_FAILED_RE = re.compile(
    rb"systemd\[1\]: (?:" + UNIT_NAME + rb": (?:Failed with result '|Main process exited, code=(?:dumped|exited, "
    rb"status=[1-9]|killed, status=\d+/(?:SEGV|ABRT|BUS|ILL|FPE))|Control process exited, code=exited,? status=[1-9])"
    rb"|Unit (?P<old>[\w@:.\\-]+\.service) entered failed state)")


class FailedUnits(NodeTest):
    """Units that failed: listed by `systemctl list-units --failed`, `Active: failed` in a status
    file, or systemd's own journal lines ("Failed with result", "Main process exited"). A unit
    failed now (listed, its status says so, or systemd restarted it `params.restart_loop` times
    or more: a crash loop) is judged by `params.units`; one that failed and is
    no longer failed ran again since, a warning. A unit whose entry `needs` a bundle file counts
    only where that file is (the Fabric Manager runs only on NVSwitch nodes: elsewhere it fails by
    design, NV_WARN_NOTHING_TO_DO)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.now: dict[str, Hit] = {}
        self.earlier: dict[str, Hit] = {}
        self.files: set[str] = set()
        self.status_unit: bytes | None = None

    def feed(self, path: str, number: int, line: bytes) -> None:
        self.files.add(path.rsplit("/", 1)[-1].removesuffix(".gz"))
        listed = FAILED_LISTED_RE.match(line) if path.endswith("systemd_failed.txt") else None
        header = STATUS_HEADER_RE.match(line) if path.endswith("_status.txt") or path == "fabricmanager.txt" else None
        if header:
            self.status_unit = header.group("unit")
        if listed:
            self.note(self.now, listed.group("unit"), path, number, line)
        elif self.status_unit and STATUS_FAILED_RE.match(line):
            self.note(self.now, self.status_unit, path, number, line)
        else:
            journal = JOURNAL_FAILED_RE.search(line)
            if journal:
                self.note(self.earlier, journal.group("unit") or journal.group("old"), path, number, line)
            restarts = RESTART_COUNTER_RE.search(line)
            if restarts and int(restarts.group(2)) >= int(self.rule.params.get("restart_loop", 3)):
                self.note(self.now, restarts.group("unit"), path, number, line)

    def literal(self, path: str) -> bytes | None:
        """In logs only systemd's own lines matter; the unit lists and status files are read whole."""
        return None if path.endswith(("systemd_failed.txt", "_status.txt")) or path == "fabricmanager.txt" \
            else b"systemd[1]: "

    def note(self, table: dict[str, Hit], unit: bytes, path: str, number: int, line: bytes) -> None:
        name = unit_key(decode(unit))
        if name in table:
            table[name].count += 1
            if len(table[name].evidence) < 3:
                table[name].evidence.append(Evidence.of_line(path, number, line))
        else:
            table[name] = self.hit(name, path, number, line)

    def finish(self) -> list[Hit]:
        hits = []
        for name, hit in self.now.items():
            entry = self.entry(name)
            if entry is not None:
                if name in self.earlier:
                    hit.evidence += self.earlier[name].evidence[:3 - len(hit.evidence)]
                hits.append(self.judged(hit, entry, entry.get("severity", self.rule.severity)))
        for name, hit in self.earlier.items():
            entry = self.entry(name)
            if name not in self.now and entry is not None:
                hit.key = f"{name} (restarted since)"
                hits.append(self.judged(hit, entry, "warning"))
        return hits

    def entry(self, name: str) -> dict[str, Any] | None:
        """The unit's entry of params.units, {} for units not listed; None when its `needs` file is absent."""
        for entry in self.rule.params.get("units", []):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in entry["match"]):
                return entry if entry.get("needs", "") in self.files | {""} else None
        return {}

    def judged(self, hit: Hit, entry: dict[str, Any], severity: str) -> Hit:
        hit.case = ""
        hit.override = {"severity": severity if entry else "info",
                        **{name: entry[name] for name in ("meaning", "action") if name in entry}}
        return hit


def unit_key(unit: str) -> str:
    """kubelet.service -> kubelet; other unit types keep their suffix (fsx.mount)."""
    return unit.removesuffix(".service")


# -- Slurm node state --------------------------------------------------------------------------------

# sinfo's short state names (sinfo(1) NODE STATE CODES) and scontrol's flags, as one word each.
SINFO_STATES = {"drain": "drained", "drng": "draining", "down": "down", "fail": "fail", "failg": "failing",
                "inval": "invalid", "maint": "maintenance"}
SCONTROL_STATE_WORDS = (("INVALID_REG", "invalid"), ("FAIL", "fail"), ("DOWN", "down"), ("MAINT", "maintenance"))


class SlurmStates(NodeTest):
    """Nodes that Slurm keeps from jobs: drained, draining, down, failing, invalid registration, in a
    maintenance reservation (sinfo's STATE column; this node's `scontrol show node` State=)."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.found: dict[str, Hit] = {}
        self.node: str | None = None

    def feed(self, path: str, number: int, line: bytes) -> None:
        if path.endswith("sinfo.txt"):
            row = SINFO_ROW_RE.match(line)
            state = SINFO_STATES.get(decode(row.group(1)).rstrip("*~#!%$@^-").lower()) if row else None
            if state:
                for host in nodeset.expand(decode(row.group(2))):
                    self.found.setdefault(host, self.hit(state, path, number, line, subject=host))
            return
        node = SCONTROL_NODE_RE.match(line)
        if node:
            self.node = decode(node.group(1))
        flags = SCONTROL_STATE_RE.search(line)
        if flags and self.node:
            state = scontrol_state(decode(flags.group(1)).upper().split("+"))
            if state:
                self.found.setdefault(self.node, self.hit(state, path, number, line, subject=self.node))

    def finish(self) -> list[Hit]:
        return list(self.found.values())


def scontrol_state(words: list[str]) -> str | None:
    if "DRAIN" in words:
        return "drained" if words[0] in ("IDLE", "DOWN") else "draining"
    return next((state for word, state in SCONTROL_STATE_WORDS if word in words), None)


# -- DCGM ---------------------------------------------------------------------------------------------

DCGM_ENTITY_RE = re.compile(rb"^\|\s*->\s*(\d+)\s*\|")
DCGM_SYSTEM_RE = re.compile(rb"^\|\s*->\s*(?P<system>[A-Za-z][\w ]*?)\s*\|\s*(?P<health>Warning|Failure)\b")
DCGM_TEXT_RE = re.compile(rb"^\s*\|[^|]*\|\s*(?P<text>[^|]*?)\s*\|?\s*$")


class DcgmHealth(NodeTest):
    """`dcgmi health -c` (dcgmi/Health.cpp: a tree of entity -> system -> Healthy/Warning/Failure and
    the messages): one hit per system and health, naming the GPUs. DCGM numbers GPUs as NVML does;
    nvidia_smi_gpus.csv maps those indexes to PCI addresses."""

    def __init__(self, rule: Any):
        super().__init__(rule)
        self.csv = CsvRows()
        self.addresses: dict[str, str] = {}
        self.entity = ""
        self.current: Hit | None = None
        self.found: dict[str, Hit] = {}

    def feed(self, path: str, number: int, line: bytes) -> None:
        if path.endswith(".csv"):
            row = self.csv.feed(line)
            if row and gpu_id(decode(row.get("pci.bus_id", b""))):
                self.addresses[decode(row.get("index", b""))] = gpu_id(decode(row["pci.bus_id"]))
            return
        entity, system = DCGM_ENTITY_RE.match(line), DCGM_SYSTEM_RE.match(line)
        if entity:
            self.entity, self.current = decode(entity.group(1)), None
        elif system:
            key = f"{decode(system.group('system'))}, {decode(system.group('health')).lower()}"
            text = f"GPU {self.entity}: " + decode(line.strip())
            self.current = self.found.get(key)
            if self.current is None:
                self.current = self.found[key] = self.hit(key, path, number, text)
            else:
                self.current.count += 1
            self.current.gpus.append(self.entity)
        elif self.current is not None and b"->" not in line:
            message = DCGM_TEXT_RE.match(line)
            if message and message.group("text") and len(self.current.evidence) < 3:
                self.current.evidence.append(Evidence.of_line(path, number, message.group("text")))

    def finish(self) -> list[Hit]:
        for hit in self.found.values():
            hit.gpus = sorted({self.addresses.get(index, f"GPU {index}") for index in hit.gpus})
        return list(self.found.values())


NODE_TESTS: dict[str, type[NodeTest]] = {
    "pcie_width": PcieWidth,
    "efa_counter_delta": EfaCounterDelta,
    "slurm_reasons": SlurmReasons,
    "slurm_not_responding": SlurmNotResponding,
    "slurm_states": SlurmStates,
    "smi_flag": SmiFlag,
    "smi_throttle": SmiThrottle,
    "smi_pcie": SmiPcie,
    "failed_units": FailedUnits,
    "dcgm_health": DcgmHealth,
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
    "cluster_api": CLUSTER_API_TESTS,
}
