"""SSM transport: one interactive `aws ssm start-session` per node, driven by pexpect.

HyperPod nodes are reachable only through StartSession on a `sagemaker-cluster:` target, and
such sessions are interactive root shells. We never scrape prompts: we type lines whose
completion markers are split in two shell variables (`S=__hpc_; T=done…; echo "$S$T"`), so the
marker appears only when the shell has run the line, never in the echo of what we typed.
Secrets (presigned URLs) are typed only after `stty -echo` and never reach the transcript.
"""

from __future__ import annotations

import re
import secrets as random_tokens
import shlex
import time
from typing import Any, Callable

import pexpect

from collectors.settings import Timeouts
from collectors.transports.base import (
    SESSION_DROPPED, SESSION_INTERRUPTED, SESSION_OK, SESSION_START_FAILED, SESSION_THROTTLED,
    SESSION_TIMEOUT, SESSION_UNREACHABLE, NodeJob, RedactingLog, SessionResult, redact)

# A PTY's canonical line buffer (MAX_CANON, 4096) silently truncates longer typed lines.
MAX_TYPED_LINE = 3500
SESSION_STARTED_RE = re.compile(r"Starting session with SessionId: (\S+)")
RESULT_LINE_RE = re.compile(r"^HPC_RESULT (.*)$", re.MULTILINE)
CR_RE = re.compile(r"\r+\n?")
# Prompts printed after each typed line (echo is off, so they run into the next output).
LEADING_PROMPTS_RE = re.compile(r"^(?:\S*[#$] )+")
OUTPUT_TAIL_LINES = 200
EXIT_WAIT = 10
POLL = 0.5
GIVEN_UP = (SESSION_TIMEOUT, SESSION_INTERRUPTED, SESSION_DROPPED)


class Cancelled(Exception):
    """The operator pressed Ctrl-C: end this session now."""


class SsmCliTransport:
    """Sessions through the AWS CLI, exactly as an engineer would open them by hand."""

    def __init__(self, region: str, profile: str | None, timeouts: Timeouts, env: dict[str, str],
                 terminate: Callable[[str], None]):
        self.region = region
        self.profile = profile
        self.timeouts = timeouts
        self.env = env
        # Ends a session on the SSM side; killing our local client alone would leave it open.
        self.terminate = terminate

    def argv(self, target: str) -> list[str]:
        argv = ["aws", "ssm", "start-session", "--target", target, "--region", self.region]
        if self.profile:
            argv += ["--profile", self.profile]
        return argv

    def run(self, job: NodeJob, cancel: Any) -> SessionResult:
        argv = self.argv(job.target)
        log = RedactingLog(job.transcript, list(job.secrets.values()))
        try:
            child = pexpect.spawn(argv[0], argv[1:], env=self.env, encoding="utf-8", codec_errors="replace",
                                  dimensions=(50, 1000), timeout=None)
        except pexpect.ExceptionPexpect as exc:
            log.close()
            return SessionResult(SESSION_START_FAILED, error=f"cannot start {argv[0]}: {exc}", step="spawn")
        child.logfile_read = log
        try:
            result = Session(child, job, self.timeouts, cancel).drive()
        finally:
            _close(child)
            log.close()
        if result.session_id and result.kind in GIVEN_UP:
            self.terminate(result.session_id)
        return result


class Session:
    """The conversation with one node's shell, step by step."""

    def __init__(self, child: pexpect.spawn, job: NodeJob, timeouts: Timeouts, cancel: Any):
        self.child = child
        self.job = job
        self.timeouts = timeouts
        self.cancel = cancel
        self.nonce = random_tokens.token_hex(4)
        self.session_id: str | None = None

    def drive(self) -> SessionResult:
        try:
            return self._steps()
        except Cancelled:
            return SessionResult(SESSION_INTERRUPTED, error="interrupted by the operator",
                                 session_id=self.session_id)

    def _steps(self) -> SessionResult:
        failure = self._wait([SESSION_STARTED_RE], self.timeouts.session_prompt)
        if failure is not None:
            return failure
        self.session_id = self.child.match.group(1)
        self.child.sendline(f'stty -echo 2>/dev/null; S=__hpc_; T=ready_{self.nonce}__; echo "$S$T"')
        failure = self._wait([re.compile(f"__hpc_ready_{self.nonce}__")], self.timeouts.session_prompt, "shell")
        if failure is not None:
            return failure
        for line in self._typed_lines():
            self.child.sendline(line)
        failure = self._wait([re.compile(rf"__hpc_done_{self.nonce}__:(\d+)")], self.timeouts.node_script, "script")
        if failure is not None:
            return failure
        rc = int(self.child.match.group(1))
        output = clean_output(self.child.before, list(self.job.secrets.values()))
        self._exit_shell()
        return SessionResult(SESSION_OK, rc=rc, output=output, session_id=self.session_id,
                             result=parse_result_line(output))

    def _typed_lines(self) -> list[str]:
        """Secrets first (one export each, echo is off), then one short line that runs the script."""
        lines = [f"export {name}={shlex.quote(value)}" for name, value in self.job.secrets.items()]
        assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in self.job.env.items())
        lines.append(
            f"S=__hpc_; T=done_{self.nonce}__; d=$(mktemp -d /tmp/hpc-run.XXXXXX) && "
            # The URL goes to curl on stdin, never in its argv where `ps` on the node would show it.
            f'printf \'url = "%s"\\n\' "$HPC_SCRIPT_URL" | curl -fsS --retry 3 -o "$d/collector_script.sh" -K - && '
            f'{assignments} bash "$d/collector_script.sh"; rc=$?; rm -rf "$d"; echo "$S$T:$rc"')
        too_long = [line.split("=", 1)[0] for line in lines if len(line.encode()) > MAX_TYPED_LINE]
        if too_long:
            raise ValueError(f"typed line over {MAX_TYPED_LINE} bytes: {too_long}")
        return lines

    def _wait(self, patterns: list[re.Pattern], timeout: float, step: str = "session_start") -> SessionResult | None:
        """Wait for the first pattern; return a failure result, or None when it matched."""
        deadline = time.monotonic() + timeout
        while True:
            if self.cancel.is_set():
                raise Cancelled()
            index = self.child.expect(patterns + [pexpect.EOF, pexpect.TIMEOUT], timeout=POLL)
            if index == 0:
                return None
            if index == len(patterns):
                return self._ended_early(step)
            if time.monotonic() >= deadline:
                return SessionResult(SESSION_TIMEOUT, step=step, session_id=self.session_id,
                                     error=f"no answer from the node within {timeout:.0f}s ({step})",
                                     output=clean_output(self.child.before, list(self.job.secrets.values())))

    def _ended_early(self, step: str) -> SessionResult:
        text = clean_output(self.child.before, list(self.job.secrets.values()))
        if self.session_id is None:
            return classify_start_error(text)
        return SessionResult(SESSION_DROPPED, step=step, session_id=self.session_id, output=text,
                             error=f"the session ended unexpectedly during {step}: {last_line(text)}")

    def _exit_shell(self) -> None:
        self.child.sendline("exit")
        try:
            self.child.expect(pexpect.EOF, timeout=EXIT_WAIT)
        except pexpect.TIMEOUT:
            pass  # _close() ends it; the collection itself is already complete


def classify_start_error(text: str) -> SessionResult:
    """What `aws ssm start-session` printed before it gave up, as an outcome kind."""
    line = last_line(text) or "the session ended before it started"
    if "TargetNotConnected" in text:
        return SessionResult(SESSION_UNREACHABLE, step="session_start", output=text,
                             error=f"SSM agent not connected (TargetNotConnected): {line}")
    if re.search(r"Throttling|Rate exceeded|TooManyRequests", text):
        return SessionResult(SESSION_THROTTLED, step="session_start", output=text, error=line)
    return SessionResult(SESSION_START_FAILED, step="session_start", output=text, error=line)


def clean_output(text: str, secrets: list[str]) -> str:
    """Normalise CRs, drop shell prompts and blank lines, redact, keep the tail."""
    lines = [LEADING_PROMPTS_RE.sub("", line).rstrip() for line in CR_RE.sub("\n", text or "").split("\n")]
    kept = [line for line in lines if line.strip() and line.strip() not in ("#", "$")]
    return redact("\n".join(kept[-OUTPUT_TAIL_LINES:]), secrets)


def parse_result_line(output: str) -> dict[str, str]:
    matches = RESULT_LINE_RE.findall(output)
    if not matches:
        return {}
    return dict(pair.split("=", 1) for pair in matches[-1].split() if "=" in pair)


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _close(child: pexpect.spawn) -> None:
    if child.isalive():
        child.terminate(force=True)
    child.close(force=True)
