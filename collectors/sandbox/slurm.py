"""Real Slurm (Debian slurm-wlm and munge) for the sandbox's Slurm clusters.

One munged on the host; slurmctld inside the scenario's controller node (the node whose role is
"controller"), or on the host when the scenario has none; one slurmd inside each worker node. Nodes
share the host's network, so every daemon listens on its own node's 127.10.x.y address, on ports
picked for this sandbox (two sandboxes side by side give their nodes the same addresses).

Inside every node, Slurm's configuration is in /opt/slurm/etc, as on HyperPod (slurm.conf, gres.conf
and a slurmdbd.conf whose StoragePass collectors must redact), and that folder is also bind-mounted
at /etc/slurm in the node's own mount namespace, where Debian's sinfo, scontrol and slurmd look for
it; the host's /etc/slurm is not touched. Slurm's logs are in the node's /var/log/slurm/.

Nodes that the scenario drains or downs (`slurm: {state: drain, reason: ...}`) are set so with
`scontrol update` once every slurmd has registered, so `sinfo -R` inside a node shows the reason.

State (see daemons.py for why it is in /run): STATE/munge (key, socket), STATE/slurm/etc (the
master configuration, also SLURM_CONF for the host's own sinfo), STATE/slurm/slurmctld (slurmctld's
saved state), STATE/slurm/slurmd/<node> (spools, pidfiles). Host-only: ROOT/slurm/processes.jsonl
(every daemon by host PID) and ROOT/slurm/logs/.
"""

import os
import pwd
import shutil
import socket
import stat
import string
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from collectors.errors import SandboxError
from collectors.sandbox import FIXTURES
from collectors.sandbox.daemons import (
    append_record,
    await_child,
    create_state_dir,
    free_port,
    is_alive,
    launch_in_node,
    log_tail,
    process_identity,
    read_records,
    start_on_host,
    state_dir,
    stop_recorded,
)
from collectors.sandbox.nodes import node_dir

SLURM_FIXTURES = FIXTURES / "slurm"
NODE_CONF_DIR = "/opt/slurm/etc"  # where HyperPod keeps Slurm's configuration
STANDARD_CONF_DIR = Path("/etc/slurm")  # where Debian's Slurm looks for it (compiled in)
CONF_FILES = ("slurm.conf", "gres.conf", "slurmdbd.conf")
REQUIRED_TOOLS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "scontrol": "slurm-client",
                  "setpriv": "util-linux"}
# The sandbox's fake accounting database password: collectors must never copy it into a report.
SLURMDBD_STORAGE_PASS = "sandbox-StoragePass-9c41e7d2"
NVIDIA_MAJOR = 195
SCENARIO_STATES = ("idle", "drain", "down")
MUNGE_TIMEOUT_S = 10.0
REGISTER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class InstanceSpec:
    """What slurm.conf declares for a node; HyperPod starts instances with one thread per core."""

    sockets: int
    cores_per_socket: int
    memory_gib: int
    gpus: int = 0


INSTANCE_SPECS = {
    "ml.p5.48xlarge": InstanceSpec(2, 48, 2048, 8),
    "ml.p4d.24xlarge": InstanceSpec(2, 24, 1152, 8),
    "ml.p4de.24xlarge": InstanceSpec(2, 24, 1152, 8),
    "ml.g5.xlarge": InstanceSpec(1, 2, 16, 1),
    "ml.g5.2xlarge": InstanceSpec(1, 4, 32, 1),
    "ml.g5.4xlarge": InstanceSpec(1, 8, 64, 1),
    "ml.g5.8xlarge": InstanceSpec(1, 16, 128, 1),
    "ml.g5.12xlarge": InstanceSpec(1, 24, 192, 4),
    "ml.g5.24xlarge": InstanceSpec(1, 48, 384, 4),
    "ml.g5.48xlarge": InstanceSpec(2, 48, 768, 8),
    "ml.c5.xlarge": InstanceSpec(1, 2, 8),
    "ml.m5.xlarge": InstanceSpec(1, 2, 16),
    "ml.m5.2xlarge": InstanceSpec(1, 4, 32),
    "ml.t3.medium": InstanceSpec(1, 1, 4),
}
DEFAULT_SPEC = InstanceSpec(1, 2, 16)


@dataclass(frozen=True)
class SlurmPaths:
    root: Path
    state: Path  # node-visible

    @property
    def etc(self) -> Path:
        return self.state / "slurm" / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def munge(self) -> Path:
        return self.state / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.sock"

    @property
    def host_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def records(self) -> Path:
        return self.host_dir / "processes.jsonl"

    def output(self, name: str) -> Path:
        """What a daemon (or the shell that starts it) prints; Slurm's own logs are elsewhere."""
        return self.host_dir / "logs" / f"{name}.out"


@dataclass(frozen=True)
class SlurmPlan:
    """Who runs what: the controller (a node, or the host when the scenario has no controller node)."""

    cluster: str
    region: str
    controller_node: dict | None
    workers: list[dict]
    others: list[dict]  # nodes with neither daemon (login nodes): configuration only
    slurmctld_port: int
    slurmd_port: int

    @property
    def controller_name(self) -> str:
        if self.controller_node:
            return self.controller_node["hostname"]
        return socket.gethostname().split(".", 1)[0]  # slurmctld insists on running on this host name

    @property
    def controller_address(self) -> str:
        return self.controller_node["ip"] if self.controller_node else "127.0.0.1"


def missing_requirement() -> str | None:
    """Why real Slurm cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "real Slurm in the sandbox needs root (munged runs as the munge user)"
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            return f"real Slurm in the sandbox needs `{tool}` (Debian package {package}; see .ci/run)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "real Slurm in the sandbox needs the munge user (Debian package munge)"
    if not STANDARD_CONF_DIR.is_dir():
        return f"real Slurm in the sandbox needs {STANDARD_CONF_DIR} as a mount point (Debian package slurm-client)"
    return None


# ---------------------------------------------------------------------------------------------
# Configuration


def role(node: dict) -> str:
    return node.get("role") or "worker"


def plan_cluster(status: dict) -> SlurmPlan:
    nodes = status["nodes"]
    controllers = [node for node in nodes if role(node) == "controller"]
    workers = [node for node in nodes if role(node) == "worker"]
    others = [node for node in nodes if node not in workers and node not in controllers[:1]]
    addresses = [node["ip"] for node in nodes]
    slurmctld_port = free_port(addresses)
    return SlurmPlan(
        cluster=status["cluster"].lower(),  # Slurm wants a lower-case ClusterName
        region=status.get("region", "us-west-2"),
        controller_node=controllers[0] if controllers else None,
        workers=workers,
        others=others,
        slurmctld_port=slurmctld_port,
        slurmd_port=free_port(addresses, taken=[slurmctld_port]),
    )


def instance_spec(instance_type: str) -> InstanceSpec:
    return INSTANCE_SPECS.get(instance_type, DEFAULT_SPEC)


def node_line(node: dict) -> str:
    spec = instance_spec(node["instance_type"])
    memory_mb = spec.memory_gib * 1024 * 95 // 100  # what HyperPod leaves to jobs, below the physical size
    line = (
        f"NodeName={node['hostname']} NodeHostname={node['hostname']} NodeAddr={node['ip']} "
        f"CPUs={spec.sockets * spec.cores_per_socket} Boards=1 SocketsPerBoard={spec.sockets} "
        f"CoresPerSocket={spec.cores_per_socket} ThreadsPerCore=1 RealMemory={memory_mb}"
    )
    return line + (f" Gres=gpu:{spec.gpus}" if spec.gpus else "") + " State=UNKNOWN"


def partition_lines(workers: list[dict]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for node in workers:
        groups.setdefault(node["group"], []).append(node["hostname"])
    return [
        f"PartitionName={group} Nodes={','.join(names)} Default={'YES' if index == 0 else 'NO'} "
        "MaxTime=INFINITE State=UP"
        for index, (group, names) in enumerate(groups.items())
    ]


def gpu_files(count: int) -> str:
    return "/opt/slurm/dev/nvidia0" if count == 1 else f"/opt/slurm/dev/nvidia[0-{count - 1}]"


def gres_lines(workers: list[dict]) -> list[str]:
    lines = []
    for node in workers:
        gpus = instance_spec(node["instance_type"]).gpus
        if gpus:
            lines.append(f"NodeName={node['hostname']} Name=gpu File={gpu_files(gpus)}")
    return lines


def render_fixture(name: str, variables: dict[str, str]) -> str:
    return string.Template((SLURM_FIXTURES / name).read_text()).substitute(variables)


def write_configuration(paths: SlurmPaths, plan: SlurmPlan) -> None:
    if plan.controller_node:
        slurmctld_log = "/var/log/slurm/slurmctld.log"  # the controller node's own /var/log
    else:
        slurmctld_log = str(paths.host_dir / "logs" / "slurmctld.log")
    variables = {
        "cluster": plan.cluster,
        "region": plan.region,
        "controller_name": plan.controller_name,
        "controller_address": plan.controller_address,
        "slurmctld_port": str(plan.slurmctld_port),
        "slurmd_port": str(plan.slurmd_port),
        "munge_socket": str(paths.munge_socket),
        "state": str(paths.state / "slurm"),
        "slurmctld_log": slurmctld_log,
        "node_lines": "\n".join(node_line(node) for node in plan.workers),
        "partition_lines": "\n".join(partition_lines(plan.workers)),
        "storage_pass": SLURMDBD_STORAGE_PASS,
    }
    paths.etc.mkdir(parents=True)
    (paths.state / "slurm" / "slurmd").mkdir()
    paths.conf.write_text(render_fixture("slurm.conf", variables))
    (paths.etc / "gres.conf").write_text("".join(line + "\n" for line in gres_lines(plan.workers)))
    slurmdbd = paths.etc / "slurmdbd.conf"
    slurmdbd.write_text(render_fixture("slurmdbd.conf", variables))
    slurmdbd.chmod(0o600)  # as slurmdbd demands of the real file: it holds a password


def write_node_files(paths: SlurmPaths, node: dict, is_worker: bool) -> None:
    """The node's own copy of Slurm's configuration (its /opt/slurm/etc), log folder and GPU devices.

    Written from the host into the folders nodes.py mounts at the node's /opt and /var/log.
    """
    directory = node_dir(paths.root, node["instance_id"])
    etc = directory / "opt" / NODE_CONF_DIR.removeprefix("/opt/")
    etc.mkdir(parents=True, exist_ok=True)
    for name in CONF_FILES:
        shutil.copy2(paths.etc / name, etc / name)
    (directory / "varlog" / "slurm").mkdir(parents=True, exist_ok=True)
    if is_worker:
        # slurmd wants its spool folder before it would create it (for its socket).
        (paths.state / "slurm" / "slurmd" / node["hostname"]).mkdir(exist_ok=True)
        make_gpu_devices(directory / "opt" / "slurm" / "dev", instance_spec(node["instance_type"]).gpus)


def make_gpu_devices(folder: Path, count: int) -> None:
    """Character devices with NVIDIA's major number, as gres.conf's File= must name: slurmd drops
    GPUs without one. Nothing opens them (no driver), slurmd only checks what they are."""
    if not count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        device = folder / f"nvidia{index}"
        if not device.exists():  # kept from an earlier start of Slurm on this node
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, index))


def node_script(daemon_argv: list[str] | None) -> str:
    """Shell run inside a node: show /opt/slurm/etc at /etc/slurm, then exec the daemon, if any."""
    script = (
        "set -e\n"
        f"[ -f {NODE_CONF_DIR}/slurm.conf ] || {{ echo 'no {NODE_CONF_DIR}/slurm.conf in this node' >&2; exit 1; }}\n"
        f"mount --bind {NODE_CONF_DIR} {STANDARD_CONF_DIR}\n"
    )
    return script + ("exec " + " ".join(daemon_argv) + "\n" if daemon_argv else "")


# ---------------------------------------------------------------------------------------------
# Daemons


def record(paths: SlurmPaths, name: str, daemon: list[int], parent: list[int] | None) -> None:
    append_record(paths.records, {"name": name, "daemon": daemon, "parent": parent})


def start_munged(paths: SlurmPaths) -> None:
    munge_user = pwd.getpwnam("munge")
    paths.munge.mkdir(mode=0o755)
    os.chown(paths.munge, munge_user.pw_uid, munge_user.pw_gid)
    key = paths.munge / "munge.key"
    key.write_bytes(os.urandom(128))  # what `mungekey` makes: 1024 random bits, this sandbox's own
    key.chmod(0o400)
    os.chown(key, munge_user.pw_uid, munge_user.pw_gid)
    munged = start_on_host(
        [
            "setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "--",
            "munged", "--foreground", f"--socket={paths.munge_socket}", f"--key-file={key}",
            f"--log-file={paths.munge / 'munged.log'}", f"--pid-file={paths.munge / 'munged.pid'}",
            f"--seed-file={paths.munge / 'munged.seed'}",
        ],
        paths.output("munged"),
    )
    identity = process_identity(munged.pid)
    record(paths, "munged", identity, None)
    await_munge(paths, identity)


def await_munge(paths: SlurmPaths, munged: list[int]) -> None:
    deadline = time.monotonic() + MUNGE_TIMEOUT_S
    while not paths.munge_socket.exists():
        if not is_alive(munged) or time.monotonic() > deadline:
            raise SandboxError(f"munged did not start: {log_tail(paths.output('munged'))}")
        time.sleep(0.01)


def launch_node_script(paths: SlurmPaths, node: dict, name: str, daemon_argv: list[str] | None):
    """Set Slurm's configuration up for a node and start its script there; (launcher, output file)."""
    write_node_files(paths, node, is_worker=name == "slurmd")
    output = paths.output(f"{name}-{node['hostname']}")
    return launch_in_node(node["init_pid"], node_script(daemon_argv), output), output


def await_node_daemon(paths: SlurmPaths, node: dict, name: str, launched) -> list[int]:
    launcher, output = launched
    daemon = await_child(launcher, output)
    record(paths, f"{name}@{node['hostname']}", daemon, process_identity(launcher.pid))
    return daemon


def set_up_without_daemon(paths: SlurmPaths, node: dict) -> None:
    """A node with neither daemon (a login node): Slurm's configuration only, so sinfo works."""
    launcher, output = launch_node_script(paths, node, "setup", None)
    if launcher.wait() != 0:
        raise SandboxError(f"Slurm setup failed on {node['hostname']}: {log_tail(output)}")


def start_slurmctld(paths: SlurmPaths, plan: SlurmPlan) -> list[int]:
    argv = ["slurmctld", "-D", "-i"]  # -i: a fresh StateSaveLocation has no state files to read
    if plan.controller_node:
        launched = launch_node_script(paths, plan.controller_node, "slurmctld", argv)
        return await_node_daemon(paths, plan.controller_node, "slurmctld", launched)
    host = start_on_host([f"SLURM_CONF={paths.conf}", *argv], paths.output("slurmctld"))
    daemon = process_identity(host.pid)
    record(paths, "slurmctld", daemon, None)
    return daemon


def start_slurmds(paths: SlurmPaths, plan: SlurmPlan) -> dict[str, list[int]]:
    """Start every worker's slurmd at once; return node name -> the slurmd's host identity."""
    argv = ["slurmd", "-D"]
    launched = {node["hostname"]: launch_node_script(paths, node, "slurmd", argv) for node in plan.workers}
    return {
        node["hostname"]: await_node_daemon(paths, node, "slurmd", launched[node["hostname"]])
        for node in plan.workers
    }


# ---------------------------------------------------------------------------------------------
# Node states


def slurm_command(paths: SlurmPaths, argv: list[str]) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_CONF": str(paths.conf), "LANG": "C.UTF-8"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    if result.returncode != 0:
        raise SandboxError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def node_states(paths: SlurmPaths) -> dict[str, str]:
    """Node name -> sinfo's long state, e.g. idle, drained, down*, unknown*."""
    output = slurm_command(paths, ["sinfo", "--noheader", "--Node", "--format=%N %T"])
    return dict(line.split(None, 1) for line in output.splitlines() if line.strip())


def await_registration(paths: SlurmPaths, plan: SlurmPlan, daemons: dict[str, list[int]]) -> None:
    """Wait until slurmctld answers and every worker's slurmd has registered with it (all idle).

    Polls sinfo rather than probing ports: a bare TCP probe makes each daemon log an error.
    """
    expected = {node["hostname"] for node in plan.workers}
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while True:
        dead = [name for name, daemon in daemons.items() if not is_alive(daemon)]
        if dead:
            raise SandboxError(f"Slurm daemon(s) exited: {dead[:5]}; see the node's /var/log/slurm/ "
                               f"and {paths.host_dir / 'logs'}")
        try:
            states = node_states(paths)
        except SandboxError:
            states = {}  # slurmctld is not answering yet
        waiting = {name: states.get(name, "no answer") for name in expected if states.get(name) != "idle"}
        if not waiting and states:
            return
        if time.monotonic() > deadline:
            sample = dict(sorted(waiting.items())[:5])
            raise SandboxError(f"slurmd did not register on {len(waiting)} node(s), e.g. {sample}")
        time.sleep(0.1)


def scenario_state(node: dict) -> tuple[str, str]:
    wanted = (node.get("scenario") or {}).get("slurm") or {}
    state = str(wanted.get("state", "idle")).lower()
    if state not in SCENARIO_STATES:
        raise SandboxError(f"node {node['hostname']}: Slurm state must be one of {SCENARIO_STATES}, not {state!r}")
    reason = str(wanted.get("reason") or f"sandbox scenario: {state}")
    return state, reason


def set_node_state(root: Path, names: list[str], state: str, reason: str) -> None:
    """Drain, down or resume (idle) Slurm nodes by name, as an operator would with scontrol."""
    if state not in SCENARIO_STATES:
        raise SandboxError(f"Slurm state must be one of {SCENARIO_STATES}, not {state!r}")
    paths = SlurmPaths(Path(root), state_dir(root))
    arguments = [f"State={'RESUME' if state == 'idle' else state.upper()}"]
    if state != "idle":
        arguments.append(f"Reason={reason}")  # one argument: scontrol takes the reason as it is
    slurm_command(paths, ["scontrol", "update", f"NodeName={','.join(names)}", *arguments])


def apply_scenario_states(root: Path, nodes: list[dict]) -> dict[str, dict]:
    """Drain or down the worker nodes the scenario names (one scontrol call per state and reason)."""
    batches: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        state, reason = scenario_state(node)
        if state != "idle" and role(node) == "worker":
            batches.setdefault((state, reason), []).append(node["hostname"])
    for (state, reason), names in batches.items():
        set_node_state(root, names, state, reason)
    return {name: {"state": state, "reason": reason} for (state, reason), names in batches.items() for name in names}


# ---------------------------------------------------------------------------------------------
# The interface for control.py


def start_slurm(root: Path, status: dict) -> dict:
    """Start munged, slurmctld and every slurmd for a Slurm sandbox; return status["slurm"]."""
    reason = missing_requirement()
    if reason:
        return {"running": False, "reason": reason}
    for node in status["nodes"]:
        scenario_state(node)  # a bad state in the scenario fails before anything starts
    paths = SlurmPaths(Path(root), create_state_dir(root))
    (paths.host_dir / "logs").mkdir(parents=True, exist_ok=True)
    plan = plan_cluster(status)
    write_configuration(paths, plan)
    start_munged(paths)
    daemons = {"slurmctld": start_slurmctld(paths, plan), **start_slurmds(paths, plan)}
    for node in plan.others:
        set_up_without_daemon(paths, node)
    await_registration(paths, plan, daemons)
    return {
        "running": True,
        "conf": str(paths.conf),  # SLURM_CONF for sinfo and scontrol on the host
        "node_conf_dir": NODE_CONF_DIR,
        "controller": plan.controller_name,
        "controller_address": plan.controller_address,
        "slurmctld_port": plan.slurmctld_port,
        "slurmd_port": plan.slurmd_port,
        "munge_socket": str(paths.munge_socket),
        "slurmdbd_storage_pass": SLURMDBD_STORAGE_PASS,
        "states": apply_scenario_states(root, plan.workers),
    }


def stop_slurm(root: Path) -> list[int]:
    """Stop every recorded Slurm daemon by host PID, slurmds first, munged last; return survivors."""
    paths = SlurmPaths(Path(root), state_dir(root))
    records = read_records(paths.records)
    order = {"slurmd": 0, "setup": 0, "slurmctld": 1, "munged": 2}
    survivors = []
    for rank in sorted(set(order.values())):
        batch = [entry for entry in records if order.get(entry["name"].split("@")[0], 0) == rank]
        survivors += stop_recorded(batch)
    return survivors
