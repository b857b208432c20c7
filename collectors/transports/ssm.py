"""SSM transport: one interactive session per node, driven by pexpect.

HyperPod nodes are reachable only through StartSession on a `sagemaker-cluster:` target, and
such sessions are interactive root shells. Two ways to open one: the AWS CLI
(`aws ssm start-session`, what engineers use by hand) or direct (boto3 StartSession, then the
session-manager-plugin with the response handed over as the CLI does, with no Python process
per node).

The conversation never scrapes prompts. Every line we wait for ends in a marker split over two
shell variables (`S=__hpc_; T=ready…; echo "$S$T"`), so it appears only once the shell has run
the line, never in the echo of what we typed. After the first line echo is off; the node's
environment (presigned URLs included) is written into a 0600 file with `printf`, a shell
builtin, so no secret is ever echoed, shown in `ps`, or longer than the terminal's line limit.
"""

from __future__ import annotations

import json
import re
import secrets as random_tokens
import shlex
import shutil
import subprocess
import time
from typing import Any, Callable

import pexpect

from collectors import console
from collectors.aws import describe_aws_error
from collectors.errors import UsageError
from collectors.layout import NODE_SCRIPT_RAN
from collectors.settings import Timeouts
from collectors.transports.base import (
    SESSION_DROPPED, SESSION_EXITED_EARLY, SESSION_FETCH_FAILED, SESSION_INTERRUPTED, SESSION_LAUNCHED, SESSION_OK,
    SESSION_START_FAILED, SESSION_TIMEOUT, NodeJob, RedactingLog, SessionResult, TransportNeeds, redact)
from collectors.transports.protocol import (
    FETCH, RC_FETCH_FAILED, RUN_ATTACHED, RUN_DETACHED, classify_start_error, last_line, parse_result_line)

# A PTY's canonical line buffer (MAX_CANON, 4096) silently truncates longer typed lines.
MAX_TYPED_LINE = 3500
SESSION_STARTED_RE = re.compile(r"Starting session with SessionId: (\S+)")
CR_RE = re.compile(r"\r+\n?")
# Prompts printed after each typed line (echo is off, so they run into the next output).
LEADING_PROMPTS_RE = re.compile(r"^(?:\S*[#$] )+")
OUTPUT_TAIL_LINES = 200
EXIT_WAIT = 10
EXIT_FIRST_WAIT = 2
POLL = 0.5
RETYPE_AFTER = 5.0
# Seconds between keep-alive keystrokes in attached sessions: under the shortest idle timeout
# Session Manager allows (1 minute).
DEFAULT_KEEPALIVE = 30.0
# Sessions that ended with our `exit`; any other ending leaves a session SSM must be told to end.
CLEAN_END = (SESSION_OK, SESSION_LAUNCHED, SESSION_EXITED_EARLY, SESSION_FETCH_FAILED)
PLUGIN = "session-manager-plugin"
# The AWS CLI hands the StartSession response over in this variable (not argv) for newer plugins.
RESPONSE_ENV = "AWS_SSM_START_SESSION_RESPONSE"
PLUGIN_ENV_HANDOFF_AFTER = (1, 2, 497, 0)

# Sessions are root shells unless the account's Session Manager preferences set Run-As: then the
# script runs through `sudo -n` (never a password prompt), and a user without passwordless sudo is
# told so instead of a half collection (as the SSH transport's node_command does for its users).
AS_ROOT = ('r=; [ "$(id -u)" -eq 0 ] || r="sudo -n"; '
           'if [ -n "$r" ] && ! sudo -n true 2>/dev/null; then rm -rf "$d"; n="noroot_$(id -un)"; ')
NO_ROOT_RE = re.compile(r"^noroot_(.*)$")


# The task flags this transport adds (settings paths).
FLAGS = ("session.client",)


def make(needs: TransportNeeds) -> "SsmCliTransport | SsmDirectTransport":
    settings, aws = needs.settings, needs.aws
    terminate = session_terminator(aws.client("ssm"))
    if settings.session.client == "cli":
        return SsmCliTransport(aws.region, settings.profile, settings.timeouts, aws.cli_env(), terminate,
                               settings.session.keepalive)
    # Throttling must reach our pacing at once, not after botocore's own retries.
    return SsmDirectTransport(aws.client("ssm", retries=1), aws.region, settings.profile, settings.timeouts,
                              aws.cli_env(), terminate, settings.session.keepalive)


def session_terminator(ssm: Any) -> Callable[[str], None]:
    """Ends a session on the SSM side: killing our local client alone would leave it open there."""
    def terminate(session_id: str) -> None:
        try:
            ssm.terminate_session(SessionId=session_id)
        except Exception as exc:  # noqa: BLE001 - best effort; SSM ends idle sessions by itself
            console.log(f"warning: could not terminate SSM session {session_id}: {describe_aws_error(exc)}")
    return terminate


class Cancelled(Exception):
    """The operator pressed Ctrl-C: end this session now."""


class SsmCliTransport:
    """Sessions through the AWS CLI, exactly as an engineer would open them by hand."""

    def __init__(self, region: str, profile: str | None, timeouts: Timeouts, env: dict[str, str],
                 terminate: Callable[[str], None], keepalive: float = DEFAULT_KEEPALIVE):
        self.region = region
        self.profile = profile
        self.timeouts = timeouts
        self.keepalive = keepalive
        # The CLI must not retry throttling itself: our pacing has to see every ThrottlingException.
        self.env = dict(env, AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="1")
        # Ends a session on the SSM side; killing our local client alone would leave it open.
        self.terminate = terminate

    def argv(self, target: str) -> list[str]:
        argv = ["aws", "ssm", "start-session", "--target", target, "--region", self.region]
        if self.profile:
            argv += ["--profile", self.profile]
        return argv

    def close(self) -> None:
        """Nothing to close: each session is a process of its own, ended with its node."""

    def run(self, job: NodeJob, cancel: Any) -> SessionResult:
        argv = self.argv(job.target)
        result = converse(lambda: spawn(argv, self.env), job, self.timeouts, cancel, self.keepalive)
        if result.session_id and result.kind not in CLEAN_END:
            self.terminate(result.session_id)
        return result


class SsmDirectTransport:
    """boto3 StartSession, then the session-manager-plugin spawned the way the AWS CLI spawns it."""

    def __init__(self, ssm: Any, region: str, profile: str | None, timeouts: Timeouts, env: dict[str, str],
                 terminate: Callable[[str], None], keepalive: float = DEFAULT_KEEPALIVE):
        self.ssm = ssm
        self.region = region
        self.profile = profile
        self.timeouts = timeouts
        self.keepalive = keepalive
        self.env = env
        self.terminate = terminate
        self.env_handoff = plugin_takes_env_handoff()

    def close(self) -> None:
        """Nothing to close: each session is a process of its own, ended with its node."""

    def run(self, job: NodeJob, cancel: Any) -> SessionResult:
        request = {"Target": job.target}
        try:
            response = self.ssm.start_session(**request)
        except Exception as exc:  # noqa: BLE001 - every StartSession failure is an outcome for this node
            return classify_start_error(describe_start_error(exc))
        handoff = json.dumps({key: response[key] for key in ("SessionId", "TokenValue", "StreamUrl")})
        env = dict(self.env)
        first = handoff
        if self.env_handoff:  # keeps the session token out of `ps`
            env[RESPONSE_ENV] = handoff
            first = RESPONSE_ENV
        argv = [PLUGIN, first, self.region, "StartSession", self.profile or "", json.dumps(request),
                self.ssm.meta.endpoint_url]
        result = converse(lambda: spawn(argv, env), job, self.timeouts, cancel, self.keepalive,
                          secrets=[response["TokenValue"]])
        if result.kind not in CLEAN_END:
            self.terminate(response["SessionId"])
        return result


def plugin_takes_env_handoff() -> bool:
    """The same version test as the AWS CLI; also fails early, with one line, when the plugin is missing."""
    if shutil.which(PLUGIN) is None:
        raise UsageError(f"{PLUGIN} not found on PATH: install the Session Manager plugin "
                         "(or use `session_client: cli`, which needs it too)")
    version = subprocess.run([PLUGIN, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        return tuple(int(part) for part in version.split(".")) > PLUGIN_ENV_HANDOFF_AFTER
    except ValueError:
        return False


def spawn(argv: list[str], env: dict[str, str]) -> pexpect.spawn:
    return pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", codec_errors="replace",
                         dimensions=(50, 1000), timeout=None)


def converse(start: Callable[[], pexpect.spawn], job: NodeJob, timeouts: Timeouts, cancel: Any,
             keepalive: float, secrets: list[str] | None = None) -> SessionResult:
    """Open the session, run the conversation, and always close our end of it."""
    hidden = list(job.secrets.values()) + (secrets or [])
    log = RedactingLog(job.transcript, hidden)
    try:
        child = start()
    except pexpect.ExceptionPexpect as exc:
        log.close()
        return SessionResult(SESSION_START_FAILED, error=f"cannot start the session client: {exc}", step="spawn")
    child.logfile_read = log
    try:
        return Conversation(child, job, timeouts, cancel, hidden, keepalive).drive()
    finally:
        close(child)
        log.close()


class Conversation:
    """One node's shell, step by step: ready, write the environment, launch (or run), exit."""

    def __init__(self, child: pexpect.spawn, job: NodeJob, timeouts: Timeouts, cancel: Any, hidden: list[str],
                 keepalive: float):
        self.child = child
        self.job = job
        self.timeouts = timeouts
        self.keepalive = keepalive
        self.cancel = cancel
        self.hidden = hidden
        self.nonce = random_tokens.token_hex(4)
        self.session_id: str | None = None

    def drive(self) -> SessionResult:
        try:
            return self._steps()
        except Cancelled:
            return SessionResult(SESSION_INTERRUPTED, error="interrupted by the operator",
                                 session_id=self.session_id)

    def _steps(self) -> SessionResult:
        failure = self._wait(SESSION_STARTED_RE, self.timeouts.session_prompt, "session_start")
        if failure:
            return failure
        self.session_id = self.child.match.group(1)
        # Safe to type twice: a second copy reuses the first one's folder. The guard variable is this
        # session's own (nonce): a `d` the node's shell already had must never become our folder.
        mine = f"hpc_dir_{self.nonce}"
        ready = (f'stty -echo 2>/dev/null; umask 077; '
                 f'[ -n "${{{mine}:-}}" ] || {mine}=$(mktemp -d /tmp/hpc-run.XXXXXX); d=${mine}; '
                 f'S=__hpc_; T=ready_{self.nonce}__; echo "$S$T:$d"')
        self.child.sendline(ready)
        failure = self._wait(self._marker("ready", r"(\S*)"), self.timeouts.session_prompt, "shell", again=ready)
        if failure:
            return failure
        if not self.child.match.group(1):
            return self._result(SESSION_START_FAILED, "shell", "mktemp -d in /tmp failed on the node (is /tmp full?)")
        for line in env_file_lines({**self.job.env, **self.job.secrets}):
            self.child.sendline(line)
        return self._launch_detached() if self.job.detached else self._run_attached()

    def _run_attached(self) -> SessionResult:
        self.child.sendline(f"S=__hpc_; T=done_{self.nonce}__; {AS_ROOT}elif {FETCH}; then "
                            f"$r sh -c {shlex.quote(RUN_ATTACHED)} hpc-collector \"$d\"; n=$?; "
                            f"else rm -rf \"$d\"; n={RC_FETCH_FAILED}; fi; "
                            f'echo "$S$T:$n"')
        failure = self._wait(self._marker("done", r"(\d+|noroot_\S*)"), self.timeouts.node_script, "script",
                             keepalive=self.keepalive)
        if failure:
            return failure
        answer = self.child.match.group(1)
        output = clean_output(self.child.before, self.hidden)
        self._exit_shell()
        if NO_ROOT_RE.match(answer):
            return self._no_root(NO_ROOT_RE.match(answer).group(1), "script", output)
        rc = int(answer)
        if rc == RC_FETCH_FAILED:
            return self._result(SESSION_FETCH_FAILED, "script", "the node could not fetch the script from S3", output)
        return SessionResult(SESSION_OK, rc=rc, output=output, session_id=self.session_id,
                             result=parse_result_line(output))

    def _launch_detached(self) -> SessionResult:
        # `setsid -w` keeps a waiting parent in our job table (so `kill -0`/`wait` see the script,
        # and a script that dies at once, e.g. on bad input, is caught within the short sleep)
        # while the script itself runs in a new session that outlives this one.
        self.child.sendline(
            f"S=__hpc_; T=launched_{self.nonce}__; {AS_ROOT}echo \"$S$T:$n\"; elif {FETCH}; then "
            f"setsid -w nohup $r sh -c {shlex.quote(RUN_DETACHED)} hpc-collector \"$d\" >/dev/null 2>&1 </dev/null & "
            f'p=$!; sleep 0.3; if kill -0 "$p" 2>/dev/null; then echo "$S$T:$p"; '
            f'else wait "$p"; r=$?; tail -n 5 "$d.log" 2>/dev/null; echo "$S$T:exited$r"; fi; '
            f'else rm -rf "$d"; echo "$S$T:fetch"; fi')
        failure = self._wait(self._marker("launched", r"(\d+|exited\d+|fetch|noroot_\S*)"),
                             self.timeouts.session_prompt, "launch")
        if failure:
            return failure
        answer = self.child.match.group(1)
        output = clean_output(self.child.before, self.hidden)
        self._exit_shell()
        if NO_ROOT_RE.match(answer):
            return self._no_root(NO_ROOT_RE.match(answer).group(1), "launch", output)
        if answer == "fetch":
            return self._result(SESSION_FETCH_FAILED, "launch", "the node could not fetch the script from S3", output)
        if answer.startswith("exited"):
            rc = int(answer[len("exited"):])
            if rc not in NODE_SCRIPT_RAN:
                return self._result(SESSION_EXITED_EARLY, "launch",
                                    f"the node script exited at once with {rc}: {last_line(output)}", output)
            return SessionResult(SESSION_LAUNCHED, rc=rc, output=output, session_id=self.session_id)
        return SessionResult(SESSION_LAUNCHED, pid=int(answer), output=output, session_id=self.session_id)

    def _no_root(self, user: str, step: str, output: str) -> SessionResult:
        return self._result(SESSION_EXITED_EARLY, step,
                            f"the session runs as {user} (Session Manager Run-As), not root, and `sudo -n` cannot make "
                            f"it root: give {user} passwordless sudo, or turn Run-As off", output)

    def _marker(self, name: str, value: str) -> re.Pattern:
        return re.compile(rf"__hpc_{name}_{self.nonce}__:{value}")

    def _result(self, kind: str, step: str, error: str, output: str = "") -> SessionResult:
        return SessionResult(kind, step=step, error=error, output=output, session_id=self.session_id)

    def _wait(self, pattern: re.Pattern, timeout: float, step: str, again: str | None = None,
              keepalive: float | None = None) -> SessionResult | None:
        """Wait for `pattern`; return a failure result, or None when it matched. `again` is typed
        once more every RETYPE_AFTER seconds without an answer: a line typed while the remote shell
        was still starting can be lost, and waiting out the whole timeout would cost a session.
        `keepalive`: an empty line every so many seconds, because Session Manager ends a session that
        gets no input for its idle timeout (1 to 60 minutes, 20 by default), whatever the node prints."""
        deadline = time.monotonic() + timeout
        retype_at = time.monotonic() + RETYPE_AFTER
        alive_at = time.monotonic() + keepalive if keepalive else None
        while True:
            if self.cancel.is_set():
                raise Cancelled()
            index = self.child.expect([pattern, pexpect.EOF, pexpect.TIMEOUT], timeout=POLL)
            if index == 0:
                return None
            if index == 1:
                return self._ended_early(step)
            if again and time.monotonic() >= retype_at:
                self.child.sendline(again)
                retype_at = time.monotonic() + RETYPE_AFTER
            if alive_at and time.monotonic() >= alive_at:
                # Read by the node's shell once the script has ended (the script reads no terminal
                # input): an empty command line, which does nothing.
                self.child.sendline("")
                alive_at = time.monotonic() + keepalive
            if time.monotonic() >= deadline:
                return self._result(SESSION_TIMEOUT, step, f"no answer from the node within {timeout:.0f}s ({step})",
                                    clean_output(self.child.before, self.hidden))

    def _ended_early(self, step: str) -> SessionResult:
        text = clean_output(self.child.before, self.hidden)
        if self.session_id is None:
            return classify_start_error(text)
        # The node's last words, not the echo of a line we typed (the shell echoes until `stty -echo`).
        said = "\n".join(line for line in text.splitlines() if "__hpc_" not in line)
        return self._result(SESSION_DROPPED, step, f"the session ended unexpectedly during {step}: {last_line(said)}",
                            text)

    def _exit_shell(self) -> None:
        # A second `exit` for a shell profile that started another shell inside the session's one
        # (`exec bash` in a `bash -c`, or a plain `bash`): one exit only leaves the inner shell.
        for wait in (EXIT_FIRST_WAIT, EXIT_WAIT):
            self.child.sendline("exit")
            try:
                self.child.expect(pexpect.EOF, timeout=wait)
                return
            except pexpect.TIMEOUT:
                continue  # close() ends it at last; the node's work is already launched or done


def env_file_lines(variables: dict[str, str]) -> list[str]:
    """`printf` lines that append `export NAME='value'` lines to "$d/env", each under the line limit."""
    entries = [shlex.quote(f"export {name}={shlex.quote(value)}") for name, value in variables.items()]
    lines, current = [], []
    for entry in entries:
        candidate = current + [entry]
        if current and len(printf_line(candidate).encode()) > MAX_TYPED_LINE:
            lines.append(printf_line(current))
            candidate = [entry]
        current = candidate
    if current:
        lines.append(printf_line(current))
    too_long = [line[:40] for line in lines if len(line.encode()) > MAX_TYPED_LINE]
    if too_long:
        raise ValueError(f"a node input does not fit in one {MAX_TYPED_LINE}-byte terminal line")
    return lines


def printf_line(entries: list[str]) -> str:
    return f"printf '%s\\n' {' '.join(entries)} >>\"$d/env\""


def describe_start_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    if error:
        return f"An error occurred ({error.get('Code')}) when calling the StartSession operation: {error.get('Message')}"
    return str(exc)


def clean_output(text: str, secrets: list[str]) -> str:
    """Normalise CRs, drop shell prompts and blank lines, redact, keep the tail."""
    lines = [LEADING_PROMPTS_RE.sub("", line).rstrip() for line in CR_RE.sub("\n", text or "").split("\n")]
    kept = [line for line in lines if line.strip() and line.strip() not in ("#", "$")]
    return redact("\n".join(kept[-OUTPUT_TAIL_LINES:]), secrets)


def close(child: pexpect.spawn) -> None:
    if child.isalive():
        child.terminate(force=True)
    child.close(force=True)
