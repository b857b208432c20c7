"""Node tests of the node's devices: PCIe links as `lspci -vvv` shows them, EFA adapters' hardware counters."""

from __future__ import annotations

import re
from typing import Any

from collectors.report.checks.base import NodeTest, gathered
from collectors.report.model import Hit, decode, gpu_id

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
