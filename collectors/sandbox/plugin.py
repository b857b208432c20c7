"""Stand-in `session-manager-plugin`: opens an SSM-like root shell inside a sandbox node.

The AWS CLI calls StartSession, runs `session-manager-plugin --version`, then
`session-manager-plugin <response-json | AWS_SSM_START_SESSION_RESPONSE> <region> StartSession
<profile> <request-json> <endpoint-url>`. Like the real plugin, this one prints the session banners,
ignores Ctrl-C/Ctrl-\\/Ctrl-Z itself (they reach the remote foreground job through the pty), and gives
the remote shell its own pseudo-terminal. The remote end is `nsenter` into the node named by the
request's Target; no network is involved.

Faults (docs/scenarios.md, read from ROOT/faults.json when the session starts) act here, where the
real service would act on the session: `session_drop_after` closes the session after N seconds, as
when the agent's side goes away (only the next `session_drops` sessions, when that is set), and so do
`session_drop_rate` (early in a session) and `mid_session_drop_rate` (any time in its window);
`idle_timeout` closes it after N seconds without input from the client, with the real service's
message; `line_limit` truncates typed lines as a terminal in canonical mode does (the first limit-1
bytes and the end of line are kept).

The account's Session Manager preferences act here too, as SSM Agent applies them
(aws/amazon-ssm-agent, agent/session/shell/shell_unix.go): the shell is `sh` (dash on Ubuntu nodes,
bash on Amazon Linux 2023); with `run_as` it runs as that user (its uid, gid and groups, HOME=/home/USER)
and a user the node lacks fails the session ("failed to start pty since RunAs user ... does not
exist"); a `shell_profile` is typed into the new shell, followed by a newline, before anything the
client sends.

An `AWS-StartSSHSession` session (ssh's ProxyCommand) carries a TCP stream instead: to the port the
request names on the node's own address, where the node's sshd listens; drops and idle timeouts end
it too.

Run through ROOT/bin/session-manager-plugin, a wrapper that passes `--root ROOT` first.
"""

import contextlib
import errno
import fcntl
import json
import os
import pty
import random
import select
import signal
import socket
import sys
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from collectors.sandbox.entry import node_shell_env, nsenter_command, read_init_pid
from collectors.sandbox.faults import NODE_FAULT_DEFAULTS, SCENARIO_FAULT_DEFAULTS

PLUGIN_VERSION = "1.2.707.0"
SETPRIV = "/usr/bin/setpriv"
RESPONSE_ENV_VAR = "AWS_SSM_START_SESSION_RESPONSE"
USER_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)
SHELLS = {
    "sh": ["/bin/sh"],  # dash, as on Ubuntu HyperPod nodes
    # bash started as `sh`, as on AL2023 nodes: POSIX mode, no rc files, prompt `sh-5.2#`.
    "bash": ["/bin/bash", "-c", "exec -a sh /bin/bash"],
}
SHELL_DOCUMENTS = (None, "SSM-SessionManagerRunShell")
# Sessions that carry a TCP stream (ssh's ProxyCommand) to a port of the node, on stdin and stdout.
PORT_DOCUMENTS = ("AWS-StartSSHSession",)
PORT_CONNECT_TIMEOUT_S = 10.0
IDLE_MESSAGE = "Your session timed out due to inactivity and has been terminated."
# What a terminal in canonical mode does with input bytes: these end (or throw away) the line.
LINE_ENDS = frozenset(b"\n\r\x04\x03\x15")
ERASE = frozenset(b"\x7f\x08")
HANGUP_GRACE_S = 5.0
CHUNK = 65536


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


EARLY_DROP_WINDOW_S = (0.2, 2.0)  # `session_drop_rate`: a random moment of a session's first seconds


@dataclass(frozen=True)
class SessionFaults:
    drop_after_s: float | None
    idle_timeout_s: float | None
    line_limit: int | None


@dataclass(frozen=True)
class Preferences:
    """The account's Session Manager preferences, as sessions started now get them."""

    run_as: str | None
    shell_profile: str | None


def read_faults(root: Path) -> dict:
    try:
        return json.loads((root / "faults.json").read_text())
    except (OSError, ValueError):
        return {"faults": SCENARIO_FAULT_DEFAULTS, "nodes": {}}


def session_faults(root: Path, instance_id: str) -> SessionFaults:
    faults = read_faults(root)
    scenario = faults["faults"]
    node = faults["nodes"].get(instance_id, NODE_FAULT_DEFAULTS)
    drop_after = node["session_drop_after"]
    if drop_after is not None and node.get("session_drops") and not claim_drop(root, instance_id, node):
        drop_after = None
    # Any session may drop: a share of them early, another share at any moment of their window.
    if drop_after is None and random.random() < scenario.get("session_drop_rate", 0):
        drop_after = random.uniform(*EARLY_DROP_WINDOW_S)
    if drop_after is None and random.random() < scenario.get("mid_session_drop_rate", 0):
        drop_after = random.uniform(*scenario["mid_session_drop_window"])
    return SessionFaults(drop_after, scenario["idle_timeout"], scenario["line_limit"])


def claim_drop(root: Path, instance_id: str, node_faults: dict) -> bool:
    """Whether this session is one of the next `session_drops` to drop on the node. Counted in
    ROOT/nodes/<id>/session-drops.json under a lock (sessions start in parallel); a change of the
    node's faults starts the count afresh."""
    path = root / "nodes" / instance_id / "session-drops.json"
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            count = json.loads(path.read_text())
        except (OSError, ValueError):
            count = {}
        dropped = count.get("dropped", 0) if count.get("faults") == node_faults else 0
        if dropped >= node_faults["session_drops"]:
            return False
        path.write_text(json.dumps({"faults": node_faults, "dropped": dropped + 1}))
        return True


def session_preferences(root: Path) -> Preferences:
    scenario = read_faults(root)["faults"]
    return Preferences(scenario.get("run_as"), scenario.get("shell_profile"))


def node_record(root: Path, instance_id: str) -> dict:
    nodes = json.loads((root / "sandbox.json").read_text())["nodes"]
    return next(node for node in nodes if node["instance_id"] == instance_id)


def run_as_account(init_pid: int, user: str) -> tuple[int, int]:
    """(uid, gid) of `user` in the node's own /etc/passwd; SessionError as the agent fails the session."""
    try:
        lines = Path(f"/proc/{init_pid}/root/etc/passwd").read_text().splitlines()
    except OSError as error:
        raise SessionError(f"cannot read the node's /etc/passwd: {error.strerror}") from None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == user and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    raise SessionError(f"Unable to start command: failed to start pty since RunAs user {user} does not exist")


def running_init_pid(root: Path, instance_id: str) -> int:
    init_pid = read_init_pid(root, instance_id)
    if init_pid is None:
        raise SessionError(f"sandbox node {instance_id} is not running")
    return init_pid


def node_shell_command(root: Path, instance_id: str, init_pid: int, preferences: Preferences) -> list[str]:
    shell = SHELLS[node_record(root, instance_id)["scenario"]["shell"]]
    env = node_shell_env(os.environ.get("TERM") or "xterm")
    as_user: list[str] = []
    if preferences.run_as:
        uid, gid = run_as_account(init_pid, preferences.run_as)
        # The agent sets the user's credentials and HOME=/home/USER; its own environment has no USER.
        env = [item for item in env if not item.startswith(("HOME=", "USER=", "LOGNAME="))]
        env.append(f"HOME=/home/{preferences.run_as}")
        as_user = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
    return nsenter_command(init_pid) + ["/usr/bin/setsid", "--ctty"] + env + as_user + shell


def copy_window_size(source_fd: int, target_fd: int) -> None:
    size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
    fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def read_available(fd: int) -> bytes:
    """One read; b"" once the other side of a pty is closed (Linux reports that as EIO)."""
    try:
        return os.read(fd, CHUNK)
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


class LineLimit:
    """Drops typed bytes past `limit - 1` in a line, as the kernel's canonical mode does (MAX_CANON)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.length = 0

    def filter(self, data: bytes) -> bytes:
        if not self.limit:
            return data
        kept = bytearray()
        for byte in data:
            if byte in LINE_ENDS:
                self.length = 0
            elif byte in ERASE:
                self.length = max(0, self.length - 1)
            elif self.length >= self.limit - 1:
                continue
            else:
                self.length += 1
            kept.append(byte)
        return bytes(kept)


class Deadlines:
    """When the session ends on its own: N s after it started, or N s after the client's last input."""

    def __init__(self, faults: SessionFaults) -> None:
        self.started = self.last_input = time.monotonic()
        self.faults = faults

    def input_seen(self) -> None:
        self.last_input = time.monotonic()

    def next_end(self) -> tuple[float | None, str | None]:
        """(seconds until the session is ended, why) or (None, None) when nothing will end it."""
        ends = []
        if self.faults.drop_after_s:
            ends.append((self.started + self.faults.drop_after_s, "drop"))
        if self.faults.idle_timeout_s:
            ends.append((self.last_input + self.faults.idle_timeout_s, "idle"))
        if not ends:
            return None, None
        at, why = min(ends)
        return max(0.0, at - time.monotonic()), why


def relay(child_pid: int, master_fd: int, stdin_is_tty: bool, faults: SessionFaults) -> str | None:
    """Copy bytes both ways until the remote shell exits (None) or a fault ends the session ("drop", "idle").

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
    line_limit, deadlines = LineLimit(faults.line_limit), Deadlines(faults)
    while True:
        wait_s, why = deadlines.next_end()
        readable = select.select(watched, [], [], wait_s)[0]
        if not readable and why:
            return why
        if wake_read in readable:
            os.read(wake_read, 64)
            if stdin_is_tty:
                copy_window_size(stdin_fd, master_fd)
            if os.waitpid(child_pid, os.WNOHANG)[0]:
                drain(master_fd)
                return None
        if master_fd in readable:
            data = read_available(master_fd)
            if not data:
                os.waitpid(child_pid, 0)
                return None
            write_all(stdout_fd, data)
        if stdin_fd in readable:
            data = os.read(stdin_fd, CHUNK)
            deadlines.input_seen()
            if data:
                write_all(master_fd, line_limit.filter(data))
            else:
                # Our input ended: end the remote shell's input the way a terminal does.
                watched.remove(stdin_fd)
                write_all(master_fd, b"\x04")


def hang_up(child_pid: int, master_fd: int) -> None:
    """End a session from our side: closing the pty hangs up the remote shell (SIGHUP), as the
    agent's closing does; work it started with nohup or setsid carries on, as on a real node."""
    os.close(master_fd)
    deadline = time.monotonic() + HANGUP_GRACE_S
    while not os.waitpid(child_pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(child_pid, signal.SIGKILL)
            os.waitpid(child_pid, 0)
            return
        time.sleep(0.02)


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


@contextlib.contextmanager
def raw_terminal():
    """The client's terminal in raw mode while the session lasts: keys go to the remote end, which
    echoes them, and nothing is echoed here (even when the agent fails the session at once)."""
    stdin_is_tty = os.isatty(sys.stdin.fileno())
    saved_mode = termios.tcgetattr(sys.stdin.fileno()) if stdin_is_tty else None
    try:
        if stdin_is_tty:
            tty.setraw(sys.stdin.fileno())
        yield stdin_is_tty
    finally:
        if saved_mode is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved_mode)


def run_session(command: list[str], faults: SessionFaults, shell_profile: str | None, stdin_is_tty: bool) -> str | None:
    """Run the remote shell on a pty until it exits (None) or a fault ends the session (why)."""
    child_pid, master_fd = spawn_on_new_pty(command)
    if shell_profile and shell_profile.strip():  # as the agent does: typed first, with its newline
        write_all(master_fd, (shell_profile + "\n").encode())
    why = None
    try:
        why = relay(child_pid, master_fd, stdin_is_tty, faults)
    finally:
        if why:
            hang_up(child_pid, master_fd)
        else:
            os.close(master_fd)
    return why


def closing_banner(session_id: str, why: str | None) -> str:
    """What the real plugin prints when the channel closes: with the agent's reason, when it gives one."""
    if why == "idle":
        return f"\n\nSessionId: {session_id} : {IDLE_MESSAGE}\n\n"
    return f"\n\nExiting session with sessionId: {session_id}.\n\n"


def start_session(root: Path, arguments: list[str]) -> int:
    response_argument, _region, _operation, _profile, request_json, _endpoint = arguments
    session_id = session_response(response_argument)["SessionId"]
    request = json.loads(request_json)
    document = request.get("DocumentName")
    instance_id = instance_id_from_target(request.get("Target", ""))
    if document in PORT_DOCUMENTS:
        return forward_port(root, instance_id, port_number(request), session_faults(root, instance_id))
    if document not in SHELL_DOCUMENTS:
        raise SessionError(f"the sandbox plugin does not emulate document {document}")
    init_pid, preferences = running_init_pid(root, instance_id), session_preferences(root)
    print(f"\nStarting session with SessionId: {session_id}\n", flush=True)
    with raw_terminal() as stdin_is_tty:
        try:
            command = node_shell_command(root, instance_id, init_pid, preferences)
        except SessionError as error:  # the agent's failure to start the shell ends the session
            write_all(sys.stdout.fileno(), f"\r\n{error}\r\n".encode())
            print(closing_banner(session_id, None), end="", flush=True)
            return 1
        why = run_session(command, session_faults(root, instance_id), preferences.shell_profile, stdin_is_tty)
    print(closing_banner(session_id, why), end="", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Port sessions (AWS-StartSSHSession): the agent connects to the port on the node and the plugin
# carries the stream on stdin/stdout, with no banners (ssh reads stdout as the connection).


def port_number(request: dict) -> int:
    """`--parameters portNumber=22` reaches the plugin as {"portNumber": ["22"]}."""
    values = (request.get("Parameters") or {}).get("portNumber") or ["22"]
    try:
        return int(values[0])
    except ValueError:
        raise SessionError(f"portNumber {values[0]!r} is not a port number") from None


def node_address(root: Path, instance_id: str) -> str:
    """The node's own loopback address, where its daemons listen (the agent would use localhost)."""
    if read_init_pid(root, instance_id) is None:
        raise SessionError(f"sandbox node {instance_id} is not running")
    nodes = json.loads((root / "sandbox.json").read_text())["nodes"]
    return next(node["ip"] for node in nodes if node["instance_id"] == instance_id)


def forward_port(root: Path, instance_id: str, port: int, faults: SessionFaults) -> int:
    address = node_address(root, instance_id)
    try:
        connection = socket.create_connection((address, port), timeout=PORT_CONNECT_TIMEOUT_S)
    except OSError as error:
        # What the agent reports when nothing listens on the port.
        reason = error.strerror or error
        raise SessionError(f"Connection to destination port {port} on {address} failed: {reason}") from None
    with connection:
        connection.setblocking(True)
        try:
            carry_stream(connection, faults)
        except (BrokenPipeError, ConnectionResetError):
            pass  # one side went away: the session ends, as the real one does
    return 0


def carry_stream(connection: socket.socket, faults: SessionFaults) -> None:
    """Copy stdin to the node's port and the port to stdout until the node closes it or a fault
    ends the session; the end of stdin is passed on as a half-close, as the agent does."""
    stdin_fd, stdout_fd, remote_fd = sys.stdin.fileno(), sys.stdout.fileno(), connection.fileno()
    watched = [stdin_fd, remote_fd]
    deadlines = Deadlines(faults)
    while True:
        wait_s, why = deadlines.next_end()
        readable = select.select(watched, [], [], wait_s)[0]
        if not readable and why:
            return
        if remote_fd in readable:
            data = connection.recv(CHUNK)
            if not data:
                return
            write_all(stdout_fd, data)
        if stdin_fd in readable:
            data = os.read(stdin_fd, CHUNK)
            deadlines.input_seen()
            if data:
                connection.sendall(data)
            else:
                watched.remove(stdin_fd)
                connection.shutdown(socket.SHUT_WR)


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
