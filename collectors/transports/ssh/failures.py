"""Why reaching a node (or the jump host) failed, as an outcome; and the steps' own exceptions."""

from __future__ import annotations

import errno
import socket

import paramiko
from fabric import Connection
from paramiko.ssh_exception import NoValidConnectionsError

from collectors.transports.base import (
    SESSION_START_FAILED, SESSION_TIMEOUT, SESSION_UNREACHABLE, SessionResult)
from collectors.transports.protocol import classify_start_error
from collectors.transports.ssh.hostkeys import UnknownHostKey


CONNECT_ERRORS = (paramiko.SSHException, OSError, EOFError)


class Cancelled(Exception):
    """The operator pressed Ctrl-C: end this node's connection now."""


class StepTimeout(Exception):
    def __init__(self, step: str, timeout: float, output: str):
        super().__init__(step)
        self.step, self.timeout, self.output = step, timeout, output


class StepFailed(Exception):
    """Reaching the node (or the jump host), or preparing it, failed; `result` is the outcome."""

    def __init__(self, result: SessionResult):
        super().__init__(result.error)
        self.result = result


class PullFailed(Exception):
    """The kept tarball could not be pulled back intact; collecting the node again makes a new one."""


def close_connection(connection: Connection) -> None:
    """Fabric closes only an open connection; a failed open can leave paramiko's transport thread behind."""
    connection.close()
    connection.client.close()


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def connect_failure(exc: BaseException, where: str, step: str, timeout: float) -> SessionResult:
    """What reaching `where` failed on, as an outcome: unreachable says which of refused, no route,
    refused host key, or failed login."""
    def unreachable(error: str) -> SessionResult:
        return SessionResult(SESSION_UNREACHABLE, step=step, error=error)

    if isinstance(exc, NoValidConnectionsError):
        codes = {error.errno for error in exc.errors.values()}
        if errno.ECONNREFUSED in codes:
            return unreachable(f"{where}: connection refused (is sshd running and listening on that port?)")
        return unreachable(f"{where}: no route to host")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return unreachable(f"{where}: no route to host")
    if isinstance(exc, socket.gaierror):
        return unreachable(f"{where}: cannot resolve the host name ({exc.strerror})")
    if isinstance(exc, paramiko.BadHostKeyException):
        return unreachable(f"{where}: host key refused: the host offered {exc.key.fingerprint} but known_hosts has "
                           f"{exc.expected_key.fingerprint} for it (a changed key, or someone in between); "
                           "fix known_hosts, or skip checking with --ssh-known-hosts off")
    if isinstance(exc, UnknownHostKey):
        return unreachable(f"{where}: host key {exc.key.fingerprint} is not in known_hosts and the policy is strict; "
                           "add it, or trust new keys on first use with --ssh-known-hosts accept-new")
    if isinstance(exc, paramiko.AuthenticationException):
        return unreachable(f"{where}: authentication failed ({describe(exc)}); check the user and key "
                           "(--ssh-user, --ssh-key)")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SessionResult(SESSION_TIMEOUT, step=step, error=f"{where}: no answer within {timeout:.0f}s")
    return SessionResult(SESSION_START_FAILED, step=step, error=f"{where}: {describe(exc)}")


def proxy_failure(proxy: paramiko.ProxyCommand, exc: BaseException, where: str) -> SessionResult:
    """An SSM session used as a proxy failed: what the AWS CLI said decides the outcome (TargetNotConnected
    is unreachable, throttling is throttled), as for the SSM transport."""
    if proxy.process.poll() is None:
        proxy.process.kill()
    said = proxy.process.communicate()[1].decode(errors="replace").strip()
    said = "\n".join(line for line in said.splitlines() if line.strip())
    if not said:
        return connect_failure(exc, where, "gateway", 0)
    result = classify_start_error(said)  # the kind: unreachable, throttled or a failed start
    result.step = "gateway"
    # The AWS CLI says what went wrong first, then repeats the plugin's command line.
    result.error = f"{where} through SSM: {said.splitlines()[0].strip()}"
    return result
