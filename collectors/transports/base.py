"""What every transport takes and gives back, so the runner never knows SSM from SSH."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Protocol

# Session outcome kinds (more detailed than the node status they map to).
SESSION_OK = "ok"                      # attached: the node script ran to its end in the session
SESSION_LAUNCHED = "launched"          # detached: the node script is running on its own
SESSION_UNREACHABLE = "unreachable"
SESSION_THROTTLED = "throttled"
SESSION_TIMEOUT = "timeout"
SESSION_DROPPED = "session_dropped"
SESSION_START_FAILED = "session_start_failed"
SESSION_FETCH_FAILED = "script_fetch_failed"
SESSION_EXITED_EARLY = "script_exited_early"
SESSION_INTERRUPTED = "interrupted"

PRESIGNED_QUERY_RE = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId|x-amz-security-token)"
    r"=[^&\s'\"]+")


@dataclass
class NodeJob:
    """One node's launch: where, with which environment, and which values must never be logged.

    `env` and `secrets` both reach the node script as environment variables; secrets are never
    typed where they could be echoed, and are redacted from every transcript.
    """

    instance_id: str
    target: str
    env: dict[str, str]
    secrets: dict[str, str]
    transcript: Path
    detached: bool = True


@dataclass
class SessionResult:
    kind: str
    rc: int | None = None
    output: str = ""
    error: str = ""
    step: str = ""
    session_id: str | None = None
    pid: int | None = None
    result: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    def run(self, job: NodeJob, cancel: Any) -> SessionResult: ...

    def close(self) -> None: ...


@dataclass
class TransportNeeds:
    """What a transport may use of the run: its settings and AWS clients, the cluster and its nodes,
    the node script, and where a tarball pulled back from a node goes (store: instance id, path)."""

    settings: Any
    aws: Any
    cluster: dict[str, Any]
    nodes: list[dict[str, Any]]
    script: Path
    results_dir: Path
    store_tarball: Callable[[str, Path], None]


class RedactingLog:
    """A transcript file that never receives a secret: lines are redacted before they are written.

    Redaction works on whole lines because a secret may arrive split across two reads.
    """

    def __init__(self, path: Path, secrets: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8", errors="replace")
        self._secrets = [s for s in secrets if s]
        self._pending = ""

    def write(self, data: str) -> None:
        self._pending += data
        lines = self._pending.split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._file.write(redact(line, self._secrets) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._pending:
            self._file.write(redact(self._pending, self._secrets) + "\n")
            self._pending = ""
        self._file.close()


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return PRESIGNED_QUERY_RE.sub(lambda m: f"{m.group(1)}=<redacted>", text)
