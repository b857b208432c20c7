"""Emulated HyperPod nodes: one set of Linux namespaces (mount, UTS, PID) per node.

Each node is one long-lived `unshare` whose child is the node's PID 1. Inside, the node has its own
hostname and its own /var/log (with its journal), /opt, /tmp, /home, /usr/local/sbin and
/etc/machine-id (ROOT/nodes/<instance-id>/), plus the sandbox's shared, read-only stand-ins
(nvidia-smi, systemctl, dmesg, df) as /usr/local/bin, its /etc/hosts, and its distribution's
/etc/os-release, /etc/passwd, /etc/group, /etc/shadow and /etc/sudoers.d (ROOT/shared/). The network is the
host's: nodes only use loopback addresses. As root the namespaces are created directly; as a normal
user inside a user namespace that maps the user to root (`unshare --user --map-root-user`), entered
with `nsenter --user --preserve-credentials`.

A node's journal is a real journal file, which the real journalctl reads: logs.py writes each
node's entries in journal export format and systemd-journal-remote (Debian's systemd-journal-remote)
turns them into /var/log/journal/<machine-id>/system.journal while the nodes start, a few at a time. Without it, nodes
have no journal (`journalctl` finds no files), as a node whose journald keeps nothing.

A node is stopped by SIGKILL to its PID 1: the kernel then kills the whole PID namespace.
`unshare --fork` itself ignores SIGTERM, so signalling it would do nothing.

What the nodes' files say is content.py's business (logs.py's for their logs, packs.py's for GPUs and
fixture packs).

Node faults that live on the node (docs/scenarios.md): `slow` and `hang` put shims in the node's
/usr/local/sbin, which is first on its PATH; `tmp_free_mb` mounts a small, nearly full tmpfs on its
/tmp. apply_node_faults() (re)applies them; the sandbox server calls it whenever they change.
"""

import ctypes
import json
import mmap
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from collectors.sandbox.content import ClusterFacts, Node, User, prepare_shared, stand_in_kind
from collectors.sandbox.entry import (
    NODE_PATH,
    in_user_namespace,
    is_same_process,
    nsenter_command,
    process_start_ticks,
    read_node_records,
)
from collectors.sandbox.logs import LogSources, node_logs

FAULT_BIN = "/usr/local/sbin"  # in the node: its own folder, first on PATH, empty unless a fault fills it
NODE_INIT_SCRIPT = f"""
set -e
# The node's hostname without starting `hostname` where the kernel lets root write it (not in a
# user namespace): a process less per node.
{{ echo "$NODE_HOSTNAME" > /proc/sys/kernel/hostname; }} 2>/dev/null || hostname "$NODE_HOSTNAME"
# All the node's mounts in one command (node_fstab() lists them), which costs one process, not six.
mount --all --fstab "$NODE_DIR/fstab"
echo "ready $NODE_ID"
# This shell stays on as the node's PID 1 and reaps orphans (dash's `wait` reaps any child), so
# daemons started in the node do not stay zombies; what it starts gets a clean environment, as
# from a node's own init (nothing of the host's).
exec </dev/null >/dev/null 2>&1
unset NODE_ID NODE_HOSTNAME NODE_DIR NODES
PATH={NODE_PATH}
while :; do sleep 3600 & wait; done
"""
NAMESPACE_FLAGS = ["--mount", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child"]
STOP_TIMEOUT_S = 10.0
# /tmp of a node with `tmp_free_mb`: a tmpfs this much fuller than what is left free (bounded).
TMP_FILL_FACTOR, TMP_FILL_MIN_MB, TMP_FILL_MAX_MB = 4, 4, 64


def node_dir(root: Path, instance_id: str) -> Path:
    return root / "nodes" / instance_id


# ---------------------------------------------------------------------------------------------
# Entering nodes: directly as root, through a user namespace otherwise


def unshare_command() -> list[str]:
    user = ["--user", "--map-root-user"] if in_user_namespace() else []
    return ["unshare", *user, *NAMESPACE_FLAGS, "sh", "-c", NODE_INIT_SCRIPT]


def namespaces_problem() -> str | None:
    """Why nodes cannot be created here, or None when they can."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "the sandbox needs util-linux `unshare` and `nsenter`, which are not installed"
    probe = unshare_command()[:-3] + ["true"]
    result = subprocess.run(probe, capture_output=True, text=True)
    if result.returncode == 0:
        return None
    if in_user_namespace():
        return ("the sandbox needs unprivileged user namespaces to run as a normal user, and this system does not "
                "allow them (see sysctl user.max_user_namespaces and kernel.unprivileged_userns_clone); run it as root")
    return f"the sandbox cannot create mount, UTS and PID namespaces here: {result.stderr.strip()}"


# ---------------------------------------------------------------------------------------------
# Processes recorded by PID and start time (entry.py reads them), so a reused PID is never signalled


def process_identity(pid: int) -> list[int]:
    return [pid, process_start_ticks(pid)]


def reap_if_child(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not ours to reap; the host's init does it


def wait_until_gone(identities: Iterable[list[int]], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """Wait for processes to exit; return the PIDs still alive after the timeout."""
    deadline = time.monotonic() + timeout_s
    remaining = list(identities)
    while remaining:
        for pid, _ in remaining:
            reap_if_child(pid)
        remaining = [identity for identity in remaining if is_same_process(*identity)]
        if not remaining or time.monotonic() > deadline:
            break
        # Each round reads /proc once per process: thousands of nodes are polled less often.
        time.sleep(min(0.25, 0.02 + len(remaining) / 10000))
    return [pid for pid, _ in remaining]


def kill_if_same(identity: list[int], sig: signal.Signals) -> None:
    if is_same_process(*identity):
        try:
            os.kill(identity[0], sig)
        except ProcessLookupError:
            pass


def read_process_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "process.json").read_text())
    except (OSError, ValueError):
        return None


def record_process(directory: Path, record: dict) -> None:
    write_json_atomically(directory / "process.json", record)


def write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# Each node's own folders: its logs, /opt, /tmp and fault folder


def node_folders(sources: LogSources, node: Node) -> list[str]:
    """A node's folders, parents first: its own /tmp, /usr/local/sbin, /opt/ml/config, /home and
    /var/log with its journal folder."""
    log_folders = {str(parent) for relative in sources.templates for parent in Path("varlog", relative).parents}
    log_folders |= {"varlog", "varlog/journal", f"varlog/journal/{node.machine_id}"}
    return ["", "tmp", "sbin", "opt", "opt/ml", "opt/ml/config", "home", *sorted(log_folders - {"."})]


def prepare_node_dir(root: Path, node: Node, sources: LogSources, users: list[User]) -> Path:
    directory = node_dir(root, node.instance_id)
    for folder in node_folders(sources, node):  # one mkdir each: a 1000-node sandbox makes 10000
        os.mkdir(directory / folder)
    (directory / "tmp").chmod(0o1777)
    logs = node_logs(node, sources)
    for relative, text in logs.files.items():
        (directory / "varlog" / relative).write_text(text)
    for rotated in logs.rotated:
        (directory / "varlog" / rotated.name).write_bytes(rotated.data)
        os.utime(directory / "varlog" / rotated.name, (rotated.mtime, rotated.mtime))
    (directory / JOURNAL_EXPORT).write_text(logs.journal_export)
    (root / "shared" / stand_in_kind(node) / ".sandbox" / "kmsg" / node.hostname).write_text(logs.kmsg)
    (directory / "machine-id").write_text(node.machine_id + "\n")
    for user in users:  # as useradd -m leaves them (a normal user's sandbox maps only root: no owners)
        home = directory / "home" / user.name
        home.mkdir(mode=0o750)
        if not in_user_namespace():
            os.chown(home, user.uid, user.uid)
    # The same file for every node, as HyperPod writes it: linked, not copied 1000 times.
    os.link(root / "shared" / "resource_config.json", directory / "opt" / "ml" / "config" / "resource_config.json")
    (directory / "fstab").write_text(node_fstab(root, node))
    return directory


def node_fstab(root: Path, node: Node) -> str:
    """The node's own folders over the host's, and the shared ones (stand-ins read-only, /etc/hosts,
    its distribution's files). Files the host lacks (/etc/sudoers.d without sudo) are left alone."""
    directory = node_dir(root, node.instance_id)
    distribution = root / "shared" / "os" / node.os
    mounts = [
        (directory / "varlog", "/var/log", "bind"),
        (directory / "opt", "/opt", "bind"),
        (directory / "home", "/home", "bind"),
        (root / "shared" / stand_in_kind(node), "/usr/local/bin", "bind,ro"),
        (directory / "sbin", FAULT_BIN, "bind"),
        (root / "shared" / "hosts", "/etc/hosts", "bind"),
        (distribution / "os-release", "/etc/os-release", "bind,ro"),
        (distribution / "passwd", "/etc/passwd", "bind,ro"),
        (distribution / "group", "/etc/group", "bind,ro"),
        (distribution / "shadow", "/etc/shadow", "bind,ro"),
        (distribution / "sudoers.d", "/etc/sudoers.d", "bind,ro"),
        (directory / "machine-id", "/etc/machine-id", "bind,ro"),
        (directory / "tmp", "/tmp", "bind"),  # last: it may hide ROOT itself
    ]
    return "".join(f"{fstab_escape(str(source))} {target} none {options} 0 0\n" for source, target, options in mounts
                   if os.path.exists(target))


def fstab_escape(path: str) -> str:
    """fstab fields are separated by blanks: write those in a path as octal escapes."""
    return "".join(f"\\{ord(char):03o}" if char in " \t\n\\" else char for char in path)


# ---------------------------------------------------------------------------------------------
# Starting and stopping


# Starts nodes from lines "<instance id> <hostname>" on its input (a file, so that no pipe can fill
# up both ways), each in the background, and says "launched <instance id> <pid>"; each node says
# "ready <instance id>" once its mounts are in place. A shell forks far faster than Python, and the
# nodes start in parallel.
LAUNCHER_SCRIPT = """
while read -r NODE_ID NODE_HOSTNAME; do
  NODE_DIR="$NODES/$NODE_ID"
  export NODE_ID NODE_HOSTNAME NODE_DIR
  "$@" &
  echo "launched $NODE_ID $!"
done
"""
NODE_START_TIMEOUT_S = 60.0


def launch_nodes(root: Path, nodes: list[Node], log) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", NODE_PATH), "NODES": str(root / "nodes")}
    node_list = root / "nodes" / "launch.txt"
    node_list.write_text("".join(f"{node.instance_id} {node.hostname}\n" for node in nodes))
    with open(node_list, "rb") as listed:
        # Own session: the nodes outlive the process that started them (`invoke sandbox.up`).
        return subprocess.Popen(
            ["sh", "-c", LAUNCHER_SCRIPT, "sh", *unshare_command()], env=env, cwd="/", stdin=listed,
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )


def init_of(unshare: list[int]) -> list[int]:
    """The identity of the node's PID 1: the one child of its `unshare --fork`."""
    pid = unshare[0]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return process_identity(int(children[0]))


def await_nodes(root: Path, launcher: subprocess.Popen, count: int, records) -> dict[str, dict]:
    """Read the launcher's news until every node is ready; record each `unshare` the moment it starts.

    Returns instance id -> {"unshare", "init"}; RuntimeError when a node's start fails or stalls.
    """
    unshares: dict[str, list[int]] = {}
    ready: set[str] = set()
    inits: dict[str, dict] = {}
    deadline = time.monotonic() + NODE_START_TIMEOUT_S + 0.05 * count
    pending = b""
    while len(inits) < count:
        if not select.select([launcher.stdout], [], [], 0.5)[0]:
            check_nodes_alive(root, unshares, inits, deadline)
            continue
        # Raw reads: a buffered reader could hold lines that select() would then never announce.
        pending += os.read(launcher.stdout.fileno(), 65536)
        *lines, pending = pending.split(b"\n")
        for word, instance_id, *pid in (line.decode().split() for line in lines):
            if word == "launched":
                unshares[instance_id] = process_identity(int(pid[0]))
                records.write(json.dumps({"instance_id": instance_id, "unshare": unshares[instance_id]}) + "\n")
                records.flush()
            else:
                ready.add(instance_id)
        # A node can say it is ready before the launcher has said it started it.
        for instance_id in ready & unshares.keys() - inits.keys():
            inits[instance_id] = {"unshare": unshares[instance_id], "init": init_of(unshares[instance_id])}
    launcher.stdout.close()
    return inits


def check_nodes_alive(root: Path, unshares: dict[str, list[int]], inits: dict, deadline: float) -> None:
    starting = [instance_id for instance_id in unshares if instance_id not in inits]
    failed = [instance_id for instance_id in starting if not is_same_process(*unshares[instance_id])]
    if failed or time.monotonic() > deadline:
        log = (root / "nodes" / "init.log").read_text(errors="replace").strip()
        what = f"node {failed[0]} did not start" if failed else f"{len(starting)} nodes did not start in time"
        raise RuntimeError(f"{what}: {log[-2000:] or 'no output'}")


def start_nodes(root: Path, cluster: ClusterFacts) -> None:
    """Start every node of `cluster`, recording each as it starts (see read_node_records)."""
    (root / "nodes").mkdir()
    users = prepare_shared(root, cluster)
    sources = LogSources(cluster)
    for node in cluster.nodes:
        prepare_node_dir(root, node, sources, users[node.os])
    with open(root / "nodes" / "launched.jsonl", "a") as records, open(root / "nodes" / "init.log", "ab") as log, \
            ThreadPoolExecutor(max_workers=JOURNAL_WRITERS) as pool:
        journals = build_journals(root, cluster.nodes, pool)  # while the nodes start: they see them appear
        launcher = launch_nodes(root, cluster.nodes, log)
        try:
            inits = await_nodes(root, launcher, len(cluster.nodes), records)
            await_journals(journals)
        except BaseException:
            # The launcher may be starting more nodes, not all of them recorded yet: they are all in
            # its process group (its PID: it leads its own session), which outlives none of them.
            os.killpg(launcher.pid, signal.SIGKILL)
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            launcher.wait()  # it has exited once every node said it started, or was just killed
    for node in cluster.nodes:
        inits[node.instance_id]["stand_ins"] = stand_in_kind(node)
    write_json_atomically(root / "nodes" / "inits.json", inits)


def stop_nodes(root: Path) -> list[int]:
    """Kill every recorded node; return PIDs still alive afterwards (empty when all are gone)."""
    records = list(read_node_records(root).values())
    for record in records:
        # Killing PID 1 kills the node's whole PID namespace, and its unshare then exits. A node that
        # never got a PID 1 (a failed start) is stopped through its unshare (--kill-child).
        kill_if_same(record.get("init") or record["unshare"], signal.SIGKILL)
    identities = [identity for record in records for identity in (record["unshare"], record.get("init")) if identity]
    return wait_until_gone(identities)


# ---------------------------------------------------------------------------------------------
# Journals: export format -> journal file, with systemd-journal-remote


JOURNAL_EXPORT = "journal.export"  # in the node's folder, read (and removed) when its journal is written
JOURNAL_REMOTE_PATHS = ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
JOURNAL_BUILD_TIMEOUT_S = 120.0
JOURNAL_WRITERS = 4  # journal-remote waits on fsync much of the time: more than the 2 cores' worth
PAGE = 4096
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def journal_remote() -> str | None:
    return next((path for path in JOURNAL_REMOTE_PATHS if os.access(path, os.X_OK)), None)


def build_journals(root: Path, nodes: list[Node], pool: ThreadPoolExecutor) -> list[Future]:
    """Start writing every node's journal from its export file (a few at a time, while the nodes
    start); none, and no journals, without systemd-journal-remote."""
    tool = journal_remote()
    exports = [(node_dir(root, node.instance_id) / JOURNAL_EXPORT,
                node_dir(root, node.instance_id) / "varlog" / "journal" / node.machine_id / "system.journal")
               for node in nodes]
    if tool is None:
        for export, _ in exports:
            os.unlink(export)
        return []
    return [pool.submit(write_journal, tool, export, journal) for export, journal in exports]


def write_journal(tool: str, export: Path, journal: Path) -> None:
    result = subprocess.run([tool, f"--output={journal}", "--split-mode=none", "--compress=no", "--seal=no",
                             str(export)], capture_output=True, text=True, timeout=JOURNAL_BUILD_TIMEOUT_S)
    if result.returncode:
        raise RuntimeError(f"cannot write {journal}: {result.stderr.strip()[-500:]}")
    punch_zero_pages(journal)
    os.unlink(export)


def punch_zero_pages(path: Path) -> None:
    """What `fallocate --dig-holes` does: journal-remote allocates its file in 8 MiB steps, mostly
    zeros (a sparse hash table, the unused tail); as holes, a node's journal takes ~400 KB of disk."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    zero = bytes(PAGE)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as content:
            runs, start = [], None
            for offset in range(0, size, PAGE):
                if content[offset:offset + PAGE] == zero:
                    start = offset if start is None else start
                elif start is not None:
                    runs.append((start, offset - start))
                    start = None
            runs += [(start, size - start)] if start is not None else []
        for offset, length in runs:
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length):
                raise OSError(ctypes.get_errno(), f"cannot punch holes in {path}")
    finally:
        os.close(fd)


def await_journals(builders: list[Future]) -> None:
    deadline = time.monotonic() + JOURNAL_BUILD_TIMEOUT_S
    for builder in builders:
        builder.result(timeout=max(0.1, deadline - time.monotonic()))


# ---------------------------------------------------------------------------------------------
# Faults that live on the node


# bash, not sh: dash drops the BASH_FUNC_* variables that carry bash's exported functions, so
# a slowed `timeout` would otherwise hand the node script's items an environment without them.
SLOW_SHIM = """#!/bin/bash
# Sandbox fault `slow` (docs/scenarios.md): every command on this node starts @seconds@ s late.
/bin/sleep @seconds@
name=${0##*/}
IFS=:
for dir in $PATH; do
  [ "$dir" = @fault_bin@ ] && continue
  [ -x "$dir/$name" ] && exec "$dir/$name" "$@"
done
echo "$name: not found" >&2
exit 127
"""
# Like a command stuck in the kernel, a hung one shrugs off TERM, INT and HUP; KILL still ends it.
HANG_SHIM = """#!/bin/sh
# Sandbox fault `hang` (docs/scenarios.md): this command never returns on this node.
trap '' TERM INT HUP
exec /bin/sleep infinity
"""


def command_names(stand_ins: Path) -> set[str]:
    """Every command a node's PATH can find, except the fault folder's own."""
    names: set[str] = set()
    for directory in [stand_ins, *map(Path, NODE_PATH.split(":")[2:])]:
        try:
            names.update(entry.name for entry in os.scandir(directory) if not entry.name.startswith("."))
        except OSError:
            continue
    return names


def write_command_shims(root: Path, instance_id: str, stand_ins: str, slow_s: float, hang: list[str]) -> None:
    """Fill (or empty) the node's fault folder: a shim per slowed or hung command."""
    fault_bin = node_dir(root, instance_id) / "sbin"
    for entry in os.scandir(fault_bin):
        os.unlink(entry.path)
    shims = {}
    if slow_s:
        (fault_bin / ".slow").write_text(SLOW_SHIM.replace("@seconds@", str(slow_s)).replace("@fault_bin@", FAULT_BIN))
        shims.update(dict.fromkeys(command_names(root / "shared" / stand_ins), ".slow"))
    if hang:
        (fault_bin / ".hang").write_text(HANG_SHIM)
        shims.update(dict.fromkeys(hang, ".hang"))
    for shim in (".slow", ".hang"):
        if (fault_bin / shim).exists():
            (fault_bin / shim).chmod(0o755)
    for name, shim in shims.items():
        os.symlink(shim, fault_bin / name)


def tmp_fault_script(free_mb: int | None) -> str:
    """Shell run inside the node: take down the fault's tmpfs, and mount a new one when asked to."""
    script = "if awk '$1 == \"sandbox-tmp\" && $2 == \"/tmp\" { found = 1 } END { exit !found }' /proc/self/mounts; " \
             "then umount -l /tmp; fi\n"
    if free_mb is None:
        return script
    fill_mb = min(TMP_FILL_MAX_MB, max(TMP_FILL_MIN_MB, TMP_FILL_FACTOR * free_mb))
    return script + (
        f"mount -t tmpfs -o size={fill_mb + free_mb}m,mode=1777 sandbox-tmp /tmp\n"
        f"dd if=/dev/zero of=/tmp/.sandbox-fill bs=1M count={fill_mb} status=none\n"
    )


def apply_node_faults(root: Path, instance_id: str, faults: dict) -> None:
    """Make the node's own faults (slow, hang, tmp_free_mb) what `faults` says; the node must be up."""
    record = read_node_records(root).get(instance_id) or {}
    if not record.get("init") or not is_same_process(*record["init"]):
        raise RuntimeError(f"node {instance_id} is not running")
    write_command_shims(root, instance_id, record["stand_ins"], faults["slow"], faults["hang"])
    command = nsenter_command(record["init"][0]) + ["/bin/sh", "-ec", tmp_fault_script(faults["tmp_free_mb"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise RuntimeError(f"cannot set /tmp on {instance_id}: {result.stderr.strip()}")
