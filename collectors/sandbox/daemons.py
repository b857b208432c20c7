"""Daemons the sandbox runs for its nodes (munged, slurmctld, slurmd, sshd): where their state lives,
how they are started, recorded by host PID and stopped.

Where state lives, and why. Nodes hide the host's /tmp, /opt and /var/log, and ROOT is under /tmp by
default, so nothing a node-side daemon or a node-side client needs can live in ROOT. It lives in
the *node-visible* folder /run/hyperpod-collect-sandbox-<hash of ROOT>/ instead (/run is shared by
the host and every node; the hash keeps two sandboxes apart), reachable from ROOT through the
symlink ROOT/run. What only the host needs (process records, the SSH client key, known_hosts, logs
of the daemons' stderr) stays in ROOT. Nothing is written to /etc.

PIDs. A daemon started inside a node is started as `nsenter ... -- <daemon> -D`: with `-p` nsenter
forks, and its child is the daemon (the shell in between execs). So the daemon's host PID is the one
child of the nsenter process, known without reading any pidfile (pidfiles written inside a node
hold the node's own PIDs, which mean something else on the host). Each daemon is recorded as
[pid, start ticks] (see nodes.py) and stopped by that PID only.
"""

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from collectors.errors import SandboxError
from collectors.sandbox.entry import NODE_PATH, is_same_process, nsenter_command
from collectors.sandbox.nodes import kill_if_same, process_identity, wait_until_gone

STATE_PARENT = Path("/run")
STATE_LINK = "run"  # ROOT/run -> the node-visible state folder
CHILD_TIMEOUT_S = 10.0
PORT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# A daemon's environment: nothing of the caller's (no proxies, no AWS variables, no pyenv).
DAEMON_ENV = ["env", "-i", f"PATH={NODE_PATH}", "LANG=C.UTF-8", "HOME=/root"]


# ---------------------------------------------------------------------------------------------
# The node-visible state folder


def state_dir(root: Path) -> Path:
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return STATE_PARENT / f"hyperpod-collect-sandbox-{digest}"


def create_state_dir(root: Path) -> Path:
    """Create (afresh) the node-visible state folder and the ROOT/run link to it."""
    state = state_dir(root)
    if not (Path(root) / STATE_LINK).exists():
        shutil.rmtree(state, ignore_errors=True)  # left by a sandbox whose ROOT is gone: nothing runs there
    state.mkdir(mode=0o755, exist_ok=True)
    state.chmod(0o755)  # munged refuses a socket below a folder others cannot enter
    link = Path(root) / STATE_LINK
    if not link.is_symlink():
        link.symlink_to(state)
    return state


def remove_state_dir(root: Path) -> None:
    shutil.rmtree(state_dir(root), ignore_errors=True)
    (Path(root) / STATE_LINK).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Process records: one JSON object per line, appended as each daemon starts, so a start that fails
# part-way still leaves a record of everything it started.


def append_record(records_file: Path, record: dict) -> None:
    records_file.parent.mkdir(parents=True, exist_ok=True)
    with open(records_file, "a") as records:
        records.write(json.dumps(record) + "\n")


def read_records(records_file: Path) -> list[dict]:
    try:
        lines = records_file.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def stop_recorded(records: list[dict], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM each recorded daemon (SIGKILL if it lingers); return the PIDs still alive afterwards.

    A record is {"daemon": [pid, ticks], "parent": [pid, ticks] or None, ...}. The parent (nsenter)
    exits by itself once its daemon has; it is waited for (and reaped) too.
    """
    daemons = [record["daemon"] for record in records]
    for daemon in daemons:
        kill_if_same(daemon, signal.SIGTERM)
    for pid in wait_until_gone(daemons, timeout_s):
        kill_if_same(next(daemon for daemon in daemons if daemon[0] == pid), signal.SIGKILL)
    parents = [record["parent"] for record in records if record.get("parent")]
    return wait_until_gone(daemons + parents, timeout_s)


# ---------------------------------------------------------------------------------------------
# Starting daemons


def start_on_host(argv: list[str], log_file: Path) -> subprocess.Popen:
    """Start a host daemon in its own session (it outlives `invoke sandbox.up`), with a clean env."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            DAEMON_ENV + argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
            start_new_session=True,
        )


def launch_in_node(init_pid: int, script: str, log_file: Path) -> subprocess.Popen:
    """Run `sh -c script` in a node's namespaces; the script ends by exec-ing the daemon."""
    command = nsenter_command(init_pid) + DAEMON_ENV + ["sh", "-c", script]
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def await_child(parent: subprocess.Popen, log_file: Path, timeout_s: float = CHILD_TIMEOUT_S) -> list[int]:
    """The identity of nsenter's child (the daemon inside the node), once it exists."""
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + timeout_s
    while True:
        children = children_file.read_text().split() if parent.poll() is None else []
        if children:
            return process_identity(int(children[0]))
        if parent.poll() is not None or time.monotonic() > deadline:
            raise SandboxError(f"a sandbox daemon did not start: {log_tail(log_file)}")
        time.sleep(0.005)


def log_tail(log_file: Path, size: int = 2000) -> str:
    try:
        return log_file.read_text(errors="replace")[-size:].strip() or "no output"
    except OSError:
        return "no log"


def is_alive(identity: list[int] | None) -> bool:
    return bool(identity) and is_same_process(*identity)


# ---------------------------------------------------------------------------------------------
# Ports


def port_is_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def free_port(addresses: Iterable[str], taken: Iterable[int] = (), attempts: int = 50) -> int:
    """A TCP port free on every one of `addresses` (and on 0.0.0.0), so that one port serves all nodes.

    Sandboxes started side by side give their nodes the same 127.10.x.y addresses, so a fixed port
    (22, 6818) would collide; a port picked per sandbox does not. `taken`: ports already picked
    for other daemons of this sandbox that are not listening yet.
    """
    addresses, taken = list(addresses), set(taken)
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in taken and all(port_is_free(address, port) for address in ["0.0.0.0", *addresses]):
            return port
    raise SandboxError("found no TCP port free on every sandbox node address")


def accepts_connections(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def await_ports(endpoints: dict[str, tuple[str, int]], daemons: dict[str, list[int]],
                timeout_s: float = PORT_TIMEOUT_S) -> None:
    """Wait until every endpoint (name -> (address, port)) accepts TCP connections.

    Fails early, naming the daemon, when the daemon that should listen there has exited.
    """
    waiting = dict(endpoints)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for name, (address, port) in list(waiting.items()):
            if accepts_connections(address, port):
                del waiting[name]
            elif not is_alive(daemons.get(name)):
                raise SandboxError(f"sandbox daemon for {name} exited before listening on {address}:{port}")
        if waiting and time.monotonic() > deadline:
            raise SandboxError(f"sandbox daemons not listening after {timeout_s:.0f} s: {sorted(waiting)[:5]}")
        if waiting:
            time.sleep(0.02)
