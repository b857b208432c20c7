"""Node tests of the GPUs: `nvidia-smi -q` read into one record per GPU (flags, throttling, PCIe link
under load), and DCGM's health watches."""

from __future__ import annotations

import re
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

from collectors.report.checks.base import NodeTest, gathered
from collectors.report.model import CsvRows, Evidence, Hit, csv_number, decode, gpu_id

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
