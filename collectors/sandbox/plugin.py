"""Stand-in `session-manager-plugin`: opens an SSM-like root shell inside a sandbox node.

The AWS CLI calls StartSession, runs `session-manager-plugin --version`, then
`session-manager-plugin <response-json | AWS_SSM_START_SESSION_RESPONSE> <region> StartSession
<profile> <request-json> <endpoint-url>`. Like the real plugin, this one prints the session banners,
ignores Ctrl-C/Ctrl-\\/Ctrl-Z itself (they reach the remote foreground job through the pty), and gives
the remote shell its own pseudo-terminal. The remote end is `nsenter` into the node named by the
request's Target; no network is involved.

Run through ROOT/bin/session-manager-plugin, a wrapper that passes `--root ROOT` first.
"""

import errno
import fcntl
import json
import os
import pty
import select
import signal
import sys
import termios
import tty
from pathlib import Path

from collectors.sandbox.nodes import node_shell_env, nsenter_command, read_init_pid

PLUGIN_VERSION = "1.2.707.0"
RESPONSE_ENV_VAR = "AWS_SSM_START_SESSION_RESPONSE"
USER_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)
SHELLS = {
    "sh": ["sh"],  # dash, as on Ubuntu HyperPod nodes
    # bash started as `sh`, as on AL2023 nodes: POSIX mode, no rc files, prompt `sh-5.2#`.
    "bash": ["bash", "-c", "exec -a sh bash"],
}
SUPPORTED_DOCUMENTS = (None, "SSM-SessionManagerRunShell")


class SessionError(Exception):
    """The session cannot start; the message is printed and the plugin exits non-zero."""


def session_response(first_argument: str) -> dict:
    if first_argument.startswith(RESPONSE_ENV_VAR):
        # Read and unset it, as the real plugin does, so the remote side never sees the token.
        return json.loads(os.environ.pop(first_argument))
    return json.loads(first_argument)


def instance_id_from_target(target: str) -> str:
    """`sagemaker-cluster:{cluster-id}_{group}-{instance-id}` -> instance id (group names have no `_`)."""
    _, separator, tail = target.rpartition("-i-")
    if not target.startswith("sagemaker-cluster:") or not separator:
        raise SessionError(f"Target {target} is not a HyperPod node")
    return "i-" + tail


def node_shell_command(root: Path, request: dict) -> list[str]:
    if request.get("DocumentName") not in SUPPORTED_DOCUMENTS:
        raise SessionError(f"the sandbox plugin does not emulate document {request['DocumentName']}")
    instance_id = instance_id_from_target(request.get("Target", ""))
    init_pid = read_init_pid(root, instance_id)
    if init_pid is None:
        raise SessionError(f"sandbox node {instance_id} is not running")
    sandbox = json.loads((root / "sandbox.json").read_text())
    term = os.environ.get("TERM") or "xterm"
    return nsenter_command(init_pid) + ["setsid", "--ctty"] + node_shell_env(term) + SHELLS[sandbox["shell"]]


def copy_window_size(source_fd: int, target_fd: int) -> None:
    size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
    fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def read_available(fd: int) -> bytes:
    """One read; b"" once the other side of a pty is closed (Linux reports that as EIO)."""
    try:
        return os.read(fd, 65536)
    except OSError as error:
        if error.errno == errno.EIO:
            return b""
        raise


def drain(master_fd: int) -> None:
    while select.select([master_fd], [], [], 0)[0]:
        data = read_available(master_fd)
        if not data:
            return
        write_all(sys.stdout.fileno(), data)


def relay(child_pid: int, master_fd: int, stdin_is_tty: bool) -> None:
    """Copy bytes both ways until the remote shell exits.

    SIGCHLD and SIGWINCH wake select() through a pipe, so the end of the shell is noticed even when
    a background job still holds the pty open.
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGCHLD, signal.SIGWINCH):
        signal.signal(sig, lambda *_: None)
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    watched = [stdin_fd, master_fd, wake_read]
    while True:
        readable = select.select(watched, [], [])[0]
        if wake_read in readable:
            os.read(wake_read, 64)
            if stdin_is_tty:
                copy_window_size(stdin_fd, master_fd)
            if os.waitpid(child_pid, os.WNOHANG)[0]:
                drain(master_fd)
                return
        if master_fd in readable:
            data = read_available(master_fd)
            if not data:
                os.waitpid(child_pid, 0)
                return
            write_all(stdout_fd, data)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 65536)
            if data:
                write_all(master_fd, data)
            else:
                # Our input ended: end the remote shell's input the way a terminal does.
                watched.remove(stdin_fd)
                write_all(master_fd, b"\x04")


def spawn_on_new_pty(command: list[str]) -> tuple[int, int]:
    """Start `command` on a fresh pty; return (pid, master fd).

    Unlike pty.fork(), the pty does not become the controlling terminal here: `setsid --ctty` inside
    the node makes the remote shell the session leader, as the SSM agent's shell is, so job control
    (and restoring the foreground group at exit) stays within the node's PID namespace.
    """
    master_fd, slave_fd = pty.openpty()
    if os.isatty(sys.stdin.fileno()):
        copy_window_size(sys.stdin.fileno(), master_fd)
    pid = os.fork()
    if pid == 0:
        os.close(master_fd)
        os.setsid()  # out of the caller's session: the caller's Ctrl-C travels as bytes, not signals
        for fd in (0, 1, 2):
            os.dup2(slave_fd, fd)
        os.close(slave_fd)
        for sig in USER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    os.close(slave_fd)
    return pid, master_fd


def run_session(command: list[str]) -> None:
    stdin_is_tty = os.isatty(sys.stdin.fileno())
    child_pid, master_fd = spawn_on_new_pty(command)
    saved_mode = termios.tcgetattr(sys.stdin.fileno()) if stdin_is_tty else None
    try:
        if stdin_is_tty:
            tty.setraw(sys.stdin.fileno())
        relay(child_pid, master_fd, stdin_is_tty)
    finally:
        if saved_mode is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved_mode)
        os.close(master_fd)


def start_session(root: Path, arguments: list[str]) -> int:
    response_argument, _region, _operation, _profile, request_json, _endpoint = arguments
    session_id = session_response(response_argument)["SessionId"]
    command = node_shell_command(root, json.loads(request_json))
    print(f"\nStarting session with SessionId: {session_id}\n", flush=True)
    run_session(command)
    print(f"\n\nExiting session with sessionId: {session_id}.\n\n", flush=True)
    return 0


def main(argv: list[str]) -> int:
    for sig in USER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if len(argv) < 2 or argv[0] != "--root":
        print("usage: python -m collectors.sandbox.plugin --root ROOT [plugin arguments]", file=sys.stderr)
        return 2
    root, arguments = Path(argv[1]), argv[2:]
    if arguments == ["--version"]:
        print(PLUGIN_VERSION)
        return 0
    if not arguments:
        print("\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n")
        return 0
    if len(arguments) != 6 or arguments[2] != "StartSession":
        print(f"sandbox session-manager-plugin: unsupported arguments {arguments}", file=sys.stderr)
        return 1
    try:
        return start_session(root, arguments)
    except SessionError as error:
        print(f"\nsandbox session-manager-plugin: {error}\n", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
