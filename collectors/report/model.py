"""The report's data: evidence lines, hits (one rule on one node), and what a bundle yielded."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collectors.report.cluster_api import ClusterRecord

EVIDENCE_CHARS = 400
# A PCI address as the tools print a GPU's: nvidia-smi 00000000:53:00.0, NVRM's Xid lines 0000:53:00,
# lspci 53:00.0 (no domain), DCGM and the kernel 0000:53:00.0.
PCI_ADDRESS_RE = re.compile(r"^(?:(?P<domain>[0-9A-Fa-f]{4,8}):)?(?P<bus>[0-9A-Fa-f]{2}):(?P<device>[0-9A-Fa-f]{2})"
                            r"(?:\.[0-7])?$")


def decode(raw: bytes) -> str:
    """Bundle text as str: logs may hold any bytes, and a bad byte must not lose the line."""
    return raw.decode("utf-8", errors="replace")


# nvidia-smi writes some flags as words where others are counts ("Pending : Yes" in -q, 0/1 in the
# remapped-rows CSV of the drivers we have seen); a word is read as the count it stands for.
CSV_WORDS = {b"yes": 1.0, b"no": 0.0, b"active": 1.0, b"not active": 0.0}


def csv_number(cell: bytes) -> float | None:
    """A CSV cell as a number: decimal, hexadecimal bitmask (0x...), or a yes/no word; None otherwise."""
    text = cell.strip().lower()
    if text in CSV_WORDS:
        return CSV_WORDS[text]
    try:
        return float(int(text, 16)) if text.startswith(b"0x") else float(text)
    except ValueError:
        return None


class CsvRows:
    """`nvidia-smi --format=csv` rows by column name; the header names carry units (`power.draw [W]`)."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def feed(self, line: bytes) -> dict[str, bytes] | None:
        cells = [cell.strip() for cell in line.split(b",")]
        if self.columns is None:
            self.columns = [decode(cell).split(" [", 1)[0] for cell in cells]
            return None
        if len(cells) != len(self.columns):
            return None  # an error message instead of a row
        return dict(zip(self.columns, cells))


def gpu_id(address: str | None) -> str | None:
    """One spelling for a GPU's PCI address (domain:bus:device, lower case), so that what nvidia-smi,
    the driver's Xid lines and lspci say of one GPU can be matched; None for anything else."""
    match = PCI_ADDRESS_RE.match((address or "").strip())
    if not match:
        return None
    domain = (match["domain"] or "0")[-4:].rjust(4, "0")
    return f"{domain}:{match['bus']}:{match['device']}".lower()


@dataclass
class Evidence:
    """One line that made a rule fire: `line` is None for sources without lines (state, Kubernetes JSON)."""

    file: str
    line: int | None
    text: str
    # The host whose bundle holds the line, when that is not the node the finding is about
    # (every node's sinfo -R names the reasons of all nodes).
    bundle: str | None = None

    @classmethod
    def of_line(cls, path: str, number: int | None, line: bytes) -> "Evidence":
        return cls(file=path, line=number, text=decode(line.rstrip(b"\r"))[:EVIDENCE_CHARS])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)



@dataclass
class Hit:
    """A rule that fired on one node, with how often and the first few evidence lines.

    `subject` names the node the hit is about when that is not the bundle's own node: every
    node's `sinfo -R` lists the reasons of all nodes. It is an instance id or a host/node name.
    `case` picks the rule's case when it differs from the key; `override` carries text a test
    chose itself (the Slurm reason table).
    """

    rule: str
    key: str | None = None
    count: int = 0
    evidence: list[Evidence] = field(default_factory=list)
    subject: str | None = None
    case: str | None = None
    override: dict[str, str] | None = None
    # Rules with first_per_gpu: the GPUs where this key came first (the root cause), and for the
    # others, the key that came before it there.
    first_on: list[str] = field(default_factory=list)
    after: dict[str, str] = field(default_factory=dict)
    # The GPUs (gpu_id) the hit is about, where its source names them: one fault folds another
    # only on the same GPU.
    gpus: list[str] = field(default_factory=list)

    def identity(self) -> tuple[str, str | None, str | None]:
        return self.rule, self.key, self.subject


@dataclass
class NodeScan:
    """What one bundle says: hits of node rules, facts for the fleet checks, counters for --against."""

    bundle: str
    instance_id: str | None
    group: str | None
    hits: list[Hit] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    fact_evidence: dict[str, Evidence] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    files: int = 0
    bytes_read: int = 0


@dataclass
class KubeState:
    """The Kubernetes objects the report reads from the run's kubectl bundle."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # kind -> bundle member, for evidence
    collected_at: float | None = None  # epoch seconds, to age stuck pods
    problems: list[str] = field(default_factory=list)


@dataclass
class RunView:
    """Everything non-node rules look at: the state's node records, every bundle's scan, Kubernetes."""

    nodes: dict[str, dict[str, Any]]
    scans: dict[str, NodeScan]
    kube: KubeState | None = None
    cluster: "ClusterRecord | None" = None  # HyperPod's record: events, lifecycle and agent logs
