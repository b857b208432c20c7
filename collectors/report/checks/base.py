"""What every node test is: fed the lines of its rule's files in one bundle, then asked what it found."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from collectors.report.model import Evidence, Hit


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


def gathered(hits: list[Hit]) -> Hit:
    """Many hits of one key as one: counted, the first evidence lines, every GPU named."""
    first = hits[0]
    first.count = len(hits)
    first.evidence = [hit.evidence[0] for hit in hits[:3]]
    first.gpus = sorted({gpu for hit in hits for gpu in hit.gpus})
    return first
