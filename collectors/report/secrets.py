"""The second net: a maintained secret scanner over the downloaded bundles, after the node's redaction.

Nodes redact with our own catalogue (bash/redact.sh) before anything is packaged; this looks again
on the orchestrator with Kingfisher (MongoDB's scanner, `kingfisher-secret-scanner` on PyPI): its
rules include Betterleaks' (the gitleaks author's successor rule set) and Google's Veles detectors,
matched natively with Vectorscan, also inside base64, offline (the SDK's validation and revocation,
which do call providers, are never used here). README's "second net" section says why it was picked
over detect-secrets and the others.

Every file of every node bundle is read (the catalog's scan skips the files no rule names), and so
are the run's other bundles (kubectl_resources.tar.gz, which is not redacted on a node). A suspected
secret becomes evidence of a finding: bundle, file, line and the scanner's rule. Never the value: the
scanner redacts what it returns, and no matched text is kept.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Callable, Iterator

from kingfisher_sdk import Rules, Scanner

from collectors.report.bundles import BUNDLE_NAME_RE, READ_ERRORS, blocks, member_text, members
from collectors.report.findings import EVIDENCE_PER_NODE, Finding, NodeFinding
from collectors.report.model import Evidence

FINDING_RULE = "secret.unredacted"
SEVERITY = "high"


@dataclass(frozen=True)
class Suspect:
    """One suspected secret: where it is and what the scanner took it for."""

    ref: str  # the node's instance id, or the bundle's file name (kubectl_resources.tar.gz)
    file: str  # the path inside the bundle's top folder
    line: int
    kind: str  # the scanner's rule id
    name: str  # the scanner's description of the rule


def another_commands_option(block: bytes, start: int) -> bool:
    """Betterleaks' curl rule lets `.*` run from `curl` to any later `-u`: past a `;`, `|` or `&`
    it is another command's option (`curl -u $USER: …; ps -u root:wheel` is no password)."""
    before = block[block.rfind(b"\n", 0, start) + 1:start]
    curl = before.rfind(b"curl")
    return curl < 0 or re.search(rb"[;|&]", before[curl:]) is not None


# Rules that fire on look-alikes that our own fixtures keep (tests/fixtures/redaction): rule id -> a
# test on the scanned block and the match's start that says "look-alike".
LOOK_ALIKES: dict[str, Callable[[bytes, int], bool]] = {
    "betterleaks.curl-auth-user": another_commands_option,
}


@lru_cache(maxsize=1)
def scanner() -> Scanner:
    """One per process: compiling the rules costs seconds the first time (then the SDK's own cache
    in the user's cache folder serves them); scanning releases the GIL, so threads share it."""
    return Scanner(Rules(), redact=True)


def secret_findings(run_dir: Path, node_bundles: list[Path], workers: int) -> list[Finding]:
    """The report's findings for the secrets suspected in the run's bundles, one per scanner rule."""
    return findings_of(suspects(node_bundles + sorted(run_dir.glob("*.tar.gz")), workers))


def suspects(bundles: list[Path], workers: int) -> list[Suspect]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [suspect for found in pool.map(bundle_suspects, bundles) for suspect in found]


def bundle_suspects(path: Path) -> list[Suspect]:
    """A damaged bundle yields what was read before the damage; the catalog's scan reports the damage."""
    named = BUNDLE_NAME_RE.match(path.name)
    ref = named["instance_id"] if named else path.name
    found: list[Suspect] = []
    try:
        for member, content in members(path):
            if content is not None and "/" in member.name:
                found += file_suspects(ref, member.name.split("/", 1)[1], member_text(content))
    except READ_ERRORS:
        pass
    return found


def file_suspects(ref: str, name: str, source: IO[bytes]) -> list[Suspect]:
    found: list[Suspect] = []
    line_base = 0
    try:
        for block in blocks(source):
            found += [Suspect(ref, name, line_base + line, kind, title)
                      for line, kind, title in sorted(block_suspects(block))]
            line_base += block.count(b"\n")
    except (OSError, EOFError, zlib.error):
        pass  # a truncated compressed log: what was inflated was scanned
    return found


def block_suspects(block: bytes) -> Iterator[tuple[int, str, str]]:
    """(line in the block, rule id, rule name) of each suspected secret."""
    for finding in scanner().scan(block):
        if not finding.visible:
            continue  # a helper match that only completes another rule (an AWS key id's secret)
        look_alike = LOOK_ALIKES.get(finding.rule_id)
        if look_alike is not None and look_alike(block, finding.location["start_offset"]):
            continue
        yield finding.location["line"], finding.rule_id, finding.rule_name


def findings_of(found: list[Suspect]) -> list[Finding]:
    by_kind: dict[str, list[Suspect]] = defaultdict(list)
    for suspect in found:
        by_kind[suspect.kind].append(suspect)
    return [finding_of(kind, suspects_of_kind) for kind, suspects_of_kind in sorted(by_kind.items())]


def finding_of(kind: str, found: list[Suspect]) -> Finding:
    name = found[0].name
    finding = Finding(
        rule=FINDING_RULE, key=kind, severity=SEVERITY, title=f"Secret left in a bundle: {kind}",
        meaning=f"Kingfisher's rule {kind} ({name.rstrip('.')}) matched text that the node's redaction "
                f"(bash/redact.sh) left in place. Only where it is is shown, never the value.",
        action="Do not share these bundles until it is gone: rotate the credential if it is real, add its shape "
               "to bash/redact.sh (README, Redaction) so that nodes redact it, and collect again.")
    for suspect in found:
        node = finding.nodes.setdefault(suspect.ref, NodeFinding(suspect.ref, 0, []))
        node.count += 1
        if len(node.evidence) < EVIDENCE_PER_NODE:
            node.evidence.append(Evidence(file=suspect.file, line=suspect.line, text=f"[value withheld] {name}"))
    return finding
