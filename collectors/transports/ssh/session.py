"""One node's session, step by step: connect, prepare (folder and env file), run or launch, pull back."""

from __future__ import annotations

import codecs
import os
import re
import shlex
import socket
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import paramiko
from fabric import Connection

from collectors.hashing import sha256_of
from collectors.layout import NODE_SCRIPT_RAN, SCRIPT_NAME
from collectors.transports.base import (
    SESSION_DROPPED, SESSION_EXITED_EARLY, SESSION_FETCH_FAILED, SESSION_INTERRUPTED, SESSION_LAUNCHED, SESSION_OK,
    SESSION_START_FAILED, SESSION_TIMEOUT, SESSION_UNREACHABLE, NodeJob, RedactingLog, SessionResult, redact)
from collectors.transports.protocol import (
    FETCH, RC_FETCH_FAILED, RUN_ATTACHED, RUN_DETACHED, last_line, parse_result_line)
from collectors.transports.ssh.failures import (
    CONNECT_ERRORS, Cancelled, PullFailed, StepFailed, StepTimeout, close_connection, connect_failure, describe)

if TYPE_CHECKING:
    from collectors.transports.ssh import SshTransport


POLL = 0.5


CHUNK = 65536


OUTPUT_KEEP_CHARS = 256 * 1024


OUTPUT_TAIL_LINES = 200


CLEANUP_TIMEOUT = 30


WORK_DIR_RE = re.compile(r"^HPC_DIR (/tmp/hpc-run\.[A-Za-z0-9]+)$", re.MULTILINE)


LAUNCH_RE = re.compile(r"^HPC_LAUNCH (pid=\d+|exited=\d+|fetch_failed)$", re.MULTILINE)


CR_RE = re.compile(r"\r+\n?")


# Run by the login user: a private folder whose `env` file is the channel's stdin.
PREPARE = 'umask 077; d=$(mktemp -d /tmp/hpc-run.XXXXXX) && cat >"$d/env" && printf "HPC_DIR %s\\n" "$d"'


# The bodies below run under `sh -c BODY hpc-collector DIR` (as root: through `sudo -n` for
# another user). The S3 ones are the SSM transport's steps: fetch by presigned URL, then run.
ATTACHED_S3 = f'd=$1; if {FETCH}; then {RUN_ATTACHED}; else rm -rf "$d"; exit {RC_FETCH_FAILED}; fi'


# `setsid -w` keeps a waiting parent that `kill -0` can see (a script that dies at once, e.g. on bad
# input, is caught within the short sleep), while the script runs in a session of its own that
# outlives this channel (as in ssm.py).
DETACHED_S3 = (f'd=$1; if {FETCH}; then '
               f'setsid -w nohup sh -c {shlex.quote(RUN_DETACHED)} hpc-collector "$d" >/dev/null 2>&1 </dev/null & '
               'p=$!; sleep 0.3; if kill -0 "$p" 2>/dev/null; then echo "HPC_LAUNCH pid=$p"; '
               'else wait "$p"; r=$?; tail -n 5 "$d.log" 2>/dev/null; echo "HPC_LAUNCH exited=$r"; fi; '
               'else rm -rf "$d"; echo "HPC_LAUNCH fetch_failed"; fi')


# Pushed script, kept tarball. The folder stays until the tarball is pulled; it is handed back to
# the login user so that SFTP can read it.
ATTACHED_SFTP = ('d=$1; . "$d/env"; rm -f "$d/env"; export HPC_KEEP_DIR="$d/keep"; '
                 f'bash "$d/{SCRIPT_NAME}"; rc=$?; '
                 '[ -z "${SUDO_UID:-}" ] || chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$d"; exit $rc')


class NodeSession:
    """One node, step by step: connect, prepare (folder and env file), run or launch, pull back."""

    def __init__(self, transport: SshTransport, job: NodeJob, address: str, cancel: Any, log: RedactingLog):
        self.transport = transport
        self.options = transport.options
        self.timeouts = transport.timeouts
        self.job = job
        self.address = address
        self.cancel = cancel
        self.log = log
        self.hidden = list(job.secrets.values())
        self.connection: Connection | None = None
        self.step = "connect"

    def drive(self) -> SessionResult:
        try:
            self.connection = self.connect()
            return self.steps()
        except StepFailed as failure:
            return failure.result
        except Cancelled:
            return SessionResult(SESSION_INTERRUPTED, error="interrupted by the operator")
        except StepTimeout as timeout:
            return SessionResult(SESSION_TIMEOUT, step=timeout.step, output=self.clean(timeout.output),
                                 error=f"no answer from the node within {timeout.timeout:.0f}s ({timeout.step})")
        except PullFailed as failure:
            return SessionResult(SESSION_DROPPED, step="pull", error=str(failure))
        except CONNECT_ERRORS as exc:
            return SessionResult(SESSION_DROPPED, step=self.step, error=f"the SSH connection failed: {describe(exc)}")
        finally:
            if self.connection is not None:
                close_connection(self.connection)

    # -- connect ----------------------------------------------------------------------------
    def connect(self) -> Connection:
        connection = self.transport.connection(self.address)
        where = f"{connection.user}@{connection.host}:{connection.port}"
        via = f" through {self.transport.gateway.label}" if self.transport.gateway else ""
        self.log.write(f"# ssh {where}{via}\n")
        if self.transport.gateway:
            connection.connect_kwargs["sock"] = self.gateway_channel(connection, where)
        try:
            connection.open()
        except CONNECT_ERRORS as exc:
            close_connection(connection)
            raise StepFailed(connect_failure(exc, where, "connect", self.timeouts.session_prompt)) from None
        return connection

    def gateway_channel(self, connection: Connection, where: str) -> paramiko.Channel:
        gateway = self.transport.gateway_connection()
        try:
            return gateway.transport.open_channel("direct-tcpip", dest_addr=(connection.host, int(connection.port)),
                                                  src_addr=("", 0), timeout=self.timeouts.session_prompt)
        except paramiko.ChannelException as exc:
            raise StepFailed(SessionResult(
                SESSION_UNREACHABLE, step="connect",
                error=f"jump host {self.transport.gateway.label} could not connect to {where}: {exc.text}")) from None
        except CONNECT_ERRORS as exc:
            self.transport.forget_gateway()  # the next node in this thread opens a fresh one
            raise StepFailed(SessionResult(
                SESSION_DROPPED, step="gateway",
                error=f"the connection to jump host {self.transport.gateway.label} failed: {describe(exc)}")) from None

    # -- the node's steps -------------------------------------------------------------------
    def steps(self) -> SessionResult:
        self.step = "shell"
        directory = self.prepare()
        if self.options.data_path == "sftp":
            return self.push_run_and_pull(directory)
        if self.job.detached:
            return self.launch(directory)
        return self.run_attached(directory)

    def prepare(self) -> str:
        """A private folder on the node holding the env file, written from stdin (never a command line)."""
        rc, output = self.execute(PREPARE, "shell", self.timeouts.session_prompt, stdin=env_file(self.node_env()))
        found = WORK_DIR_RE.search(output)
        if rc != 0 or not found:
            raise StepFailed(SessionResult(SESSION_START_FAILED, step="shell", output=self.clean(output),
                                           error=f"cannot make a private folder in /tmp on the node (rc {rc}): "
                                                 f"{last_line(self.clean(output))}"))
        return found.group(1)

    def node_env(self) -> dict[str, str]:
        if self.options.data_path == "sftp":
            # The node cannot reach S3: no presigned URL is of use to it, so none is sent.
            return dict(self.job.env)
        return {**self.job.env, **self.job.secrets}

    def run_attached(self, directory: str) -> SessionResult:
        self.step = "script"
        rc, output = self.execute(self.as_root(ATTACHED_S3, directory), "script", self.timeouts.node_script, pty=True)
        output = self.clean(output)
        if rc == RC_FETCH_FAILED:
            return SessionResult(SESSION_FETCH_FAILED, rc=rc, step="script", output=output,
                                 error="the node could not fetch the script from S3")
        return SessionResult(SESSION_OK, rc=rc, output=output, result=parse_result_line(output))

    def launch(self, directory: str) -> SessionResult:
        self.step = "launch"
        rc, output = self.execute(self.as_root(DETACHED_S3, directory), "launch", self.timeouts.session_prompt)
        output = self.clean(output)
        answers = LAUNCH_RE.findall(output)
        answer = answers[-1] if answers else ""
        if answer.startswith("pid="):
            return SessionResult(SESSION_LAUNCHED, pid=int(answer[len("pid="):]), output=output)
        if answer.startswith("exited="):
            code = int(answer[len("exited="):])
            if code in NODE_SCRIPT_RAN:
                return SessionResult(SESSION_LAUNCHED, rc=code, output=output)
            return SessionResult(SESSION_EXITED_EARLY, rc=code, step="launch", output=output,
                                 error=f"the node script exited at once with {code}: {last_line(output)}")
        if answer == "fetch_failed":
            return SessionResult(SESSION_FETCH_FAILED, step="launch", output=output,
                                 error="the node could not fetch the script from S3")
        return SessionResult(SESSION_START_FAILED, rc=rc, step="launch", output=output,
                             error=f"the launch ended without an answer (rc {rc}): {last_line(output)}")

    def push_run_and_pull(self, directory: str) -> SessionResult:
        """For nodes that cannot reach S3; the node's folder is removed whatever happens."""
        try:
            self.step = "push"
            self.sftp().put(str(self.transport.script), f"{directory}/{SCRIPT_NAME}",
                            callback=self.check_cancel_transfer)
            self.step = "script"
            rc, output = self.execute(self.as_root(ATTACHED_SFTP, directory), "script", self.timeouts.node_script,
                                      pty=True)
            output = self.clean(output)
            report = parse_result_line(output)
            if report.get("kept"):
                self.step = "pull"
                self.pull(directory, report)
                report = {key: value for key, value in report.items() if key != "kept"}
            return SessionResult(SESSION_OK, rc=rc, output=output, result=report)
        finally:
            self.remove(directory)

    def pull(self, directory: str, report: dict[str, str]) -> None:
        """The kept tarball into results/, checked against what the node reported, then stored."""
        kept = urllib.parse.unquote(report["kept"])
        if not kept.startswith(f"{directory}/keep/"):
            raise PullFailed(f"the node kept its tarball outside {directory}/keep: not pulled")
        name = f"{self.job.env['INSTANCE_GROUP']}_{self.job.instance_id}.tar.gz"
        results = self.transport.results_dir
        results.mkdir(parents=True, exist_ok=True)
        partial = results / f".{name}.part"
        try:
            self.sftp().get(kept, str(partial), callback=self.check_cancel_transfer)
            size, digest = partial.stat().st_size, sha256_of(partial)
            if str(size) != report.get("bytes") or digest != report.get("sha256"):
                raise PullFailed(f"pulled {size} bytes sha256 {digest[:12]}…, but the node reported "
                                 f"{report.get('bytes')} bytes sha256 {str(report.get('sha256'))[:12]}…")
            os.replace(partial, results / name)
        finally:
            partial.unlink(missing_ok=True)
        self.log.write(f"# pulled {name} into {results}\n")
        self.transport.store(self.job.instance_id, results / name)

    def remove(self, directory: str) -> None:
        """Best effort: the folder (and a tarball that was not pulled) is in /tmp, which nodes clean."""
        if self.connection is None or not self.connection.is_connected or self.cancel.is_set():
            return
        try:
            self.execute(self.as_root('rm -rf -- "$1"', directory), "cleanup", CLEANUP_TIMEOUT)
        except (StepTimeout, *CONNECT_ERRORS):
            self.log.write(f"# could not remove {directory} from the node\n")

    # -- plumbing ---------------------------------------------------------------------------
    def as_root(self, body: str, directory: str) -> str:
        return node_command(body, directory, sudo=self.connection.user != "root")

    def execute(self, command: str, step: str, timeout: float, stdin: bytes = b"",
                pty: bool = False) -> tuple[int, str]:
        """Run one command in its own channel; return (exit status, output). A pty ties the command's
        life to the channel: closing it (Ctrl-C, timeout) hangs the command up, as an SSM session does."""
        self.log.write(f"# {step}\n")
        channel = self.connection.create_session()
        try:
            channel.set_combine_stderr(True)
            if pty:
                channel.get_pty(term="dumb", width=1000, height=50)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            output = self.read_until_exit(channel, step, timeout)
            return channel.recv_exit_status(), output
        finally:
            channel.close()

    def read_until_exit(self, channel: paramiko.Channel, step: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        output, ended = "", False
        channel.settimeout(POLL)
        while True:
            self.check_cancel()
            if time.monotonic() >= deadline:
                raise StepTimeout(step, timeout, output)
            if ended:
                if channel.status_event.wait(POLL):  # set by the exit status, or when the channel closes
                    return output
                continue
            try:
                data = channel.recv(CHUNK)
            except socket.timeout:
                continue
            ended = not data
            text = decoder.decode(data, final=ended)
            self.log.write(text)
            self.log.flush()  # a transcript can be followed while a long script runs
            output = (output + text)[-OUTPUT_KEEP_CHARS:]

    def sftp(self) -> paramiko.SFTPClient:
        sftp = self.connection.sftp()
        sftp.get_channel().settimeout(self.timeouts.session_prompt)
        return sftp

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def check_cancel_transfer(self, _done: int, _total: int) -> None:
        self.check_cancel()

    def clean(self, text: str) -> str:
        """CRs normalised (a pty's output), blank lines dropped, secrets redacted, the tail kept."""
        lines = [line.rstrip() for line in CR_RE.sub("\n", text or "").split("\n")]
        kept = [line for line in lines if line.strip()]
        return redact("\n".join(kept[-OUTPUT_TAIL_LINES:]), self.hidden)


def node_command(body: str, directory: str, sudo: bool) -> str:
    """`sh -c BODY hpc-collector DIR`, through `sudo -n` (never a password prompt) for a user other than root."""
    argv = ["sh", "-c", body, "hpc-collector", directory]
    return shlex.join(["sudo", "-n"] + argv if sudo else argv)


def env_file(variables: dict[str, str]) -> bytes:
    """`export NAME='value'` lines, sourced by sh on the node."""
    for name in variables:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not an environment variable name: {name!r}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items()).encode()
