"""Emulated HyperPod nodes: one set of Linux namespaces (mount, UTS, PID) per node.

Each node is one long-lived `unshare` whose child is the node's PID 1. Inside, the node has its own
hostname and its own /var/log, /opt, /tmp, /etc/hosts and /usr/local/sbin (stand-ins for nvidia-smi
and systemctl), bind-mounted from ROOT/nodes/<instance-id>/. The network is the host's: nodes only
use loopback addresses.

A node is stopped by SIGKILL to its PID 1 (host PID in init.pid): the kernel then kills the whole PID
namespace. `unshare --fork` itself ignores SIGTERM, so signalling it would do nothing.
"""

import json
import os
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

FIXTURES = Path(__file__).with_name("fixtures")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GPU_TABLES = {
    "ml.p5.48xlarge": "h100-80gb-hbm3.txt",
    "ml.p4d.24xlarge": "a100-sxm4-40gb.txt",
}
ORCHESTRATOR_UNITS = {"eks": "Kubernetes Kubelet", "slurm": "Slurm node daemon"}
NODE_INIT_SCRIPT = f"""
set -e
hostname "$NODE_HOSTNAME"
mount --bind "$NODE_DIR/varlog" /var/log
mount --bind "$NODE_DIR/opt" /opt
mount --bind "$NODE_DIR/bin" /usr/local/sbin
mount --bind "$NODE_DIR/hosts" /etc/hosts
# /tmp last: it may hide $NODE_DIR itself.
mount --bind "$NODE_DIR/tmp" /tmp
echo ready
# A PID 1 that reaps orphans, so daemons started in the node do not stay zombies; with a
# clean environment, as a node's own init would have (nothing of the host's).
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash -c 'while :; do sleep 3600 & wait $!; done' </dev/null >/dev/null 2>&1
"""
UNSHARE_COMMAND = [
    "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", NODE_INIT_SCRIPT,
]
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Node:
    instance_id: str
    group: str
    instance_type: str
    ip: str
    fqdn: str

    @property
    def hostname(self) -> str:
        return self.fqdn.split(".", 1)[0]


@dataclass(frozen=True)
class ClusterFacts:
    """What a node's fixture files say about the cluster it belongs to."""

    name: str
    arn: str
    region: str
    type: str
    nodes: list[Node]


def node_dir(root: Path, instance_id: str) -> Path:
    return root / "nodes" / instance_id


def read_init_pid(root: Path, instance_id: str) -> int | None:
    """The node's PID 1 as a host PID, or None when the node is not running."""
    init = (read_process_record(node_dir(root, instance_id)) or {}).get("init")
    if not init or not is_same_process(*init):
        return None
    return init[0]


def nsenter_command(init_pid: int) -> list[str]:
    """Enter a node's mount, UTS and PID namespaces, at its root folder."""
    return ["nsenter", "-t", str(init_pid), "-m", "-u", "-p", "--wd=/", "--"]


def node_shell_env(term: str) -> list[str]:
    """`env -i ...` for a node shell: what an SSM root shell gets, nothing from the caller."""
    return [
        "env", "-i", f"PATH={NODE_PATH}", "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh",
        f"TERM={term}", "LANG=C.UTF-8", "AWS_EC2_METADATA_DISABLED=true",
    ]


# ---------------------------------------------------------------------------------------------
# Processes recorded by PID and start time, so a reused PID is never signalled


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = stat.rpartition(")")[2].split()
    state, start_ticks = fields_after_name[0], fields_after_name[19]
    return None if state in ("Z", "X") else int(start_ticks)


def is_same_process(pid: int, start_ticks: int) -> bool:
    return process_start_ticks(pid) == start_ticks


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
        time.sleep(0.02)
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


# ---------------------------------------------------------------------------------------------
# Fixture files for one node


def time_variables(started_at: datetime) -> dict[str, str]:
    """Log timestamps: the node "booted" an hour before the sandbox started."""
    boot = started_at - timedelta(hours=1)
    offsets_s = [0, 12, 40, 95, 160]
    variables = {"since": boot.strftime("%a %Y-%m-%d %H:%M:%S UTC")}
    for index, offset in enumerate(offsets_s):
        moment = boot + timedelta(seconds=offset)
        variables[f"syslog_t{index}"] = moment.strftime("%b %e %H:%M:%S")
        variables[f"iso_t{index}"] = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return variables


def node_variables(node: Node, cluster: ClusterFacts, started_at: datetime) -> dict[str, str]:
    orchestrator = "EKS" if cluster.type == "eks" else "Slurm"
    return {
        "instance_id": node.instance_id,
        "instance_type": node.instance_type,
        "instance_type_ec2": node.instance_type.removeprefix("ml."),
        "group": node.group,
        "cluster_name": cluster.name,
        "cluster_arn": cluster.arn,
        "orchestrator": orchestrator,
        "orchestrator_unit_description": ORCHESTRATOR_UNITS[cluster.type],
        "ip": node.ip,
        "hostname": node.hostname,
        "hostname_fqdn": node.fqdn,
        **time_variables(started_at),
    }


def render(template_path: Path, variables: dict[str, str]) -> str:
    return string.Template(template_path.read_text()).safe_substitute(variables)


def write_var_log(directory: Path, variables: dict[str, str]) -> None:
    source_root = FIXTURES / "varlog"
    for source in source_root.rglob("*"):
        if source.is_file():
            target = directory / "varlog" / source.relative_to(source_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(source, variables))


def resource_config(cluster: ClusterFacts) -> dict:
    """/opt/ml/config/resource_config.json as HyperPod writes it on every node: the whole cluster."""
    groups: dict[str, dict] = {}
    for node in cluster.nodes:
        group = groups.setdefault(
            node.group, {"InstanceGroupName": node.group, "InstanceType": node.instance_type, "Instances": []}
        )
        position = len(group["Instances"]) + 1
        group["Instances"].append(
            {
                "InstanceName": f"{node.group}-{position}",
                "AgentIpAddress": node.ip.replace("127.10.", "127.11.", 1),
                "CustomerIpAddress": node.ip,
                "InstanceId": node.instance_id,
            }
        )
    return {
        "ClusterConfig": {"ClusterArn": cluster.arn, "ClusterName": cluster.name},
        "InstanceGroups": list(groups.values()),
    }


def write_opt(directory: Path, resource_config_text: str) -> None:
    config = directory / "opt" / "ml" / "config"
    config.mkdir(parents=True)
    (config / "resource_config.json").write_text(resource_config_text)


def hosts_file(cluster: ClusterFacts) -> str:
    """Every node resolves every node locally, so nothing asks a DNS server for sandbox names."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{node.ip} {node.fqdn} {node.hostname}" for node in cluster.nodes]
    return "\n".join(lines) + "\n"


def gpu_table(instance_type: str) -> Path | None:
    if instance_type.startswith("ml.g5."):
        return FIXTURES / "nvidia-smi" / "a10g.txt"
    name = GPU_TABLES.get(instance_type)
    return FIXTURES / "nvidia-smi" / name if name else None


def read_units(*kinds: str) -> list[list[str]]:
    rows = []
    for kind in kinds:
        text = (FIXTURES / "systemctl" / f"units-{kind}.tsv").read_text()
        rows += [line.split("\t") for line in text.splitlines() if line]
    return sorted(rows)


def unit_list_table(units: list[list[str]]) -> str:
    """`systemctl list-units --type=service --all --no-pager`, column widths as systemd computes them."""
    header = ["UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]
    widths = [max(len(row[column]) for row in [header, *units]) for column in range(4)]
    lines = [
        "  " + " ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " " + row[4]
        for row in [header, *units]
    ]
    footer = [
        "",
        "LOAD   = Reflects whether the unit definition was properly loaded.",
        "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.",
        "SUB    = The low-level unit activation state, values depend on unit type.",
        f"{len(units)} loaded units listed.",
        "To show all installed unit files use 'systemctl list-unit-files'.",
    ]
    return "\n".join(lines + footer) + "\n"


def unit_status(unit: list[str], variables: dict[str, str]) -> str:
    name, _, active, sub, description = unit
    template = FIXTURES / "systemctl" / "status" / name
    if not template.exists():
        template = FIXTURES / "systemctl" / "status" / "_default"
    if active == "active":
        active_line = f"active ({sub}) since {variables['since']}; 1h ago"
    else:
        active_line = f"{active} ({sub})"
    return render(template, {**variables, "unit": name, "description": description, "active_line": active_line})


def write_stand_ins(directory: Path, node: Node, cluster: ClusterFacts, variables: dict[str, str]) -> None:
    bin_dir = directory / "bin"
    (bin_dir / "systemctl.d" / "status").mkdir(parents=True)
    table = gpu_table(node.instance_type)
    unit_kinds = ["common", cluster.type] + (["gpu"] if table else [])
    units = read_units(*unit_kinds)
    (bin_dir / "systemctl.d" / "list-units.txt").write_text(unit_list_table(units))
    for unit in units:
        (bin_dir / "systemctl.d" / "status" / unit[0]).write_text(unit_status(unit, variables))
    shutil.copy(FIXTURES / "bin" / "systemctl", bin_dir / "systemctl")
    if table:
        (bin_dir / "nvidia-smi.d").mkdir()
        shutil.copy(table, bin_dir / "nvidia-smi.d" / "table.txt")
        shutil.copy(FIXTURES / "bin" / "nvidia-smi", bin_dir / "nvidia-smi")


def prepare_node_dir(
    root: Path, node: Node, cluster: ClusterFacts, shared: dict[str, str], started_at: datetime
) -> Path:
    directory = node_dir(root, node.instance_id)
    (directory / "tmp").mkdir(parents=True)
    (directory / "tmp").chmod(0o1777)
    variables = node_variables(node, cluster, started_at)
    write_var_log(directory, variables)
    write_opt(directory, shared["resource_config"])
    (directory / "hosts").write_text(shared["hosts"])
    write_stand_ins(directory, node, cluster, variables)
    return directory


# ---------------------------------------------------------------------------------------------
# Starting and stopping


def launch_node(directory: Path, node: Node) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", NODE_PATH), "NODE_HOSTNAME": node.hostname, "NODE_DIR": str(directory)}
    with open(directory / "init.log", "wb") as log:
        # Own session: the node outlives the process that started it (`invoke sandbox.up`).
        return subprocess.Popen(
            UNSHARE_COMMAND, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=log, start_new_session=True,
        )


def await_node_init(directory: Path, unshare: subprocess.Popen) -> int:
    """Wait until the node's mounts are in place; return the host PID of its PID 1."""
    ready = unshare.stdout.readline()
    unshare.stdout.close()
    if ready.strip() != b"ready":
        unshare.wait()
        log = (directory / "init.log").read_text().strip()
        raise RuntimeError(f"node in {directory} did not start: {log or 'no output'}")
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    return int(children[0])


def start_nodes(root: Path, cluster: ClusterFacts) -> dict[str, subprocess.Popen]:
    """Start every node of `cluster`; return instance id -> the node's `unshare` process.

    Each node records itself in ROOT/nodes/<iid>/process.json and init.pid as soon as it is up, so
    stop_nodes() finds even the nodes of a start that failed part-way.
    """
    started_at = datetime.now(timezone.utc)
    shared = {
        "resource_config": json.dumps(resource_config(cluster), indent=4) + "\n",
        "hosts": hosts_file(cluster),
    }
    launched = {}
    for node in cluster.nodes:
        directory = prepare_node_dir(root, node, cluster, shared, started_at)
        unshare = launch_node(directory, node)
        launched[node.instance_id] = unshare
        record_process(directory, {"unshare": process_identity(unshare.pid)})
    for instance_id, unshare in launched.items():
        directory = node_dir(root, instance_id)
        init_pid = await_node_init(directory, unshare)
        record = read_process_record(directory)
        record_process(directory, {**record, "init": process_identity(init_pid)})
        (directory / "init.pid").write_text(f"{init_pid}\n")
    return launched


def record_process(directory: Path, record: dict) -> None:
    temporary = directory / "process.json.tmp"
    temporary.write_text(json.dumps(record))
    os.replace(temporary, directory / "process.json")


def stop_nodes(root: Path) -> list[int]:
    """Kill every recorded node; return PIDs still alive afterwards (empty when all are gone)."""
    records = [record for record in map(read_process_record, (root / "nodes").glob("*")) if record]
    for record in records:
        # Killing PID 1 kills the node's whole PID namespace, and its unshare then exits. A node that
        # never got a PID 1 (a failed start) is stopped through its unshare (--kill-child).
        kill_if_same(record.get("init") or record["unshare"], signal.SIGKILL)
    identities = [
        identity for record in records for identity in (record["unshare"], record.get("init")) if identity
    ]
    return wait_until_gone(identities)
