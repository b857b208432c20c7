"""Emulated HyperPod nodes: one set of Linux namespaces (mount, UTS, PID) per node.

Each node is one long-lived `unshare` whose child is the node's PID 1. Inside, the node has its own
hostname and its own /var/log, /opt, /tmp and /usr/local/sbin (ROOT/nodes/<instance-id>/), plus the
sandbox's shared, read-only stand-ins (nvidia-smi, systemctl, dmesg, df) as /usr/local/bin and its
/etc/hosts (ROOT/shared/). The network is the host's: nodes only use loopback addresses. As root the
namespaces are created directly; as a normal user inside a user namespace that maps the user to
root (`unshare --user --map-root-user`), entered with `nsenter --user --preserve-credentials`.

A node is stopped by SIGKILL to its PID 1: the kernel then kills the whole PID namespace.
`unshare --fork` itself ignores SIGTERM, so signalling it would do nothing.

Node faults that live on the node (docs/scenarios.md): `slow` and `hang` put shims in the node's
/usr/local/sbin, which is first on its PATH; `tmp_free_mb` mounts a small, nearly full tmpfs on its
/tmp. apply_node_faults() (re)applies them; the sandbox server calls it whenever they change.
"""

import json
import os
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from collectors.sandbox import packs

FIXTURES = packs.FIXTURES
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FAULT_BIN = "/usr/local/sbin"  # in the node: its own folder, first on PATH, empty unless a fault fills it
NODE_INIT_SCRIPT = f"""
set -e
hostname "$NODE_HOSTNAME"
mount --bind "$NODE_DIR/varlog" /var/log
mount --bind "$NODE_DIR/opt" /opt
mount -o bind,ro "$NODE_STAND_INS" /usr/local/bin
mount --bind "$NODE_DIR/sbin" {FAULT_BIN}
mount --bind "$NODE_HOSTS" /etc/hosts
# /tmp last: it may hide $NODE_DIR itself.
mount --bind "$NODE_DIR/tmp" /tmp
echo ready
# This shell stays on as the node's PID 1 and reaps orphans (dash's `wait` reaps any child), so
# daemons started in the node do not stay zombies; what it starts gets a clean environment, as
# from a node's own init (nothing of the host's).
exec </dev/null >/dev/null 2>&1
unset NODE_HOSTNAME NODE_DIR NODE_STAND_INS NODE_HOSTS
PATH={NODE_PATH}
while :; do sleep 3600 & wait; done
"""
NAMESPACE_FLAGS = ["--mount", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child"]
LAUNCH_BATCH = 200  # nodes whose start is awaited together (one pipe each stays open meanwhile)
STOP_TIMEOUT_S = 10.0
# /tmp of a node with `tmp_free_mb`: a tmpfs this much fuller than what is left free (bounded).
TMP_FILL_FACTOR, TMP_FILL_MIN_MB, TMP_FILL_MAX_MB = 4, 4, 64


@dataclass(frozen=True)
class Node:
    instance_id: str
    group: str
    instance_type: str
    ip: str
    fqdn: str
    pack: str = "healthy"

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
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def node_dir(root: Path, instance_id: str) -> Path:
    return root / "nodes" / instance_id


# ---------------------------------------------------------------------------------------------
# Entering nodes: directly as root, through a user namespace otherwise


def in_user_namespace() -> bool:
    """A normal user's nodes live in a user namespace that maps the user to root."""
    return os.geteuid() != 0


def unshare_command() -> list[str]:
    user = ["--user", "--map-root-user"] if in_user_namespace() else []
    return ["unshare", *user, *NAMESPACE_FLAGS, "sh", "-c", NODE_INIT_SCRIPT]


def nsenter_command(init_pid: int) -> list[str]:
    """Enter a node's mount, UTS and PID namespaces (and its user namespace), at its root folder."""
    user = ["--user", "--preserve-credentials"] if in_user_namespace() else []
    return ["nsenter", "-t", str(init_pid), *user, "-m", "-u", "-p", "--wd=/", "--"]


def node_shell_env(term: str) -> list[str]:
    """`env -i ...` for a node shell: what an SSM root shell gets, nothing from the caller.

    Absolute paths, so the node's `slow` shims slow down what the shell runs, not its own start.
    """
    return [
        "/usr/bin/env", "-i", f"PATH={NODE_PATH}", "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh",
        f"TERM={term}", "LANG=C.UTF-8", "AWS_EC2_METADATA_DISABLED=true",
    ]


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


def record_process(directory: Path, record: dict) -> None:
    write_json_atomically(directory / "process.json", record)


def write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


# The nodes' records: ROOT/nodes/launched.jsonl gets each `unshare` the moment it starts (so a start
# that fails part-way still leaves every process findable); ROOT/nodes/inits.json maps each instance
# id to [unshare, init] identities once all are up. One file each, not one per node: 1000 nodes.


def read_node_records(root: Path) -> dict[str, dict]:
    """instance id -> {"unshare": identity, "init": identity or None}."""
    records: dict[str, dict] = {}
    try:
        lines = (root / "nodes" / "launched.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            records[entry["instance_id"]] = {"unshare": entry["unshare"], "init": None}
    try:
        inits = json.loads((root / "nodes" / "inits.json").read_text())
    except (OSError, ValueError):
        inits = {}
    for instance_id, record in inits.items():
        records[instance_id] = record
    return records


def read_init_pid(root: Path, instance_id: str) -> int | None:
    """The node's PID 1 as a host PID, or None when the node is not running."""
    return live_init_pid(read_node_records(root).get(instance_id) or {})


def read_init_pids(root: Path) -> dict[str, int | None]:
    """Every node's PID 1 (None for a node that is not running), reading the records once."""
    return {instance_id: live_init_pid(record) for instance_id, record in read_node_records(root).items()}


def live_init_pid(record: dict) -> int | None:
    init = record.get("init")
    if not init or not is_same_process(*init):
        return None
    return init[0]


# ---------------------------------------------------------------------------------------------
# Content shared by every node: stand-ins, their data, /etc/hosts, resource_config.json


def time_variables(started_at: datetime) -> dict[str, str]:
    """Log timestamps: the node "booted" an hour before the sandbox started."""
    boot = boot_time(started_at)
    offsets_s = [0, 12, 40, 95, 160]
    variables = {"since": boot.strftime("%a %Y-%m-%d %H:%M:%S UTC")}
    for index, offset in enumerate(offsets_s):
        moment = boot + timedelta(seconds=offset)
        variables[f"syslog_t{index}"] = syslog_time(moment)
        variables[f"iso_t{index}"] = iso_time(moment)
    return variables


def boot_time(started_at: datetime) -> datetime:
    return started_at - timedelta(hours=1)


def syslog_time(moment: datetime) -> str:
    return moment.strftime("%b %e %H:%M:%S")


def iso_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cluster_variables(cluster: ClusterFacts) -> dict[str, str]:
    return {
        "cluster_name": cluster.name,
        "cluster_arn": cluster.arn,
        "orchestrator": "EKS" if cluster.type == "eks" else "Slurm",
        "orchestrator_unit_description": packs.ORCHESTRATOR_UNITS[cluster.type],
        **time_variables(cluster.started_at),
    }


def node_variables(node: Node) -> dict[str, str]:
    return {
        "instance_id": node.instance_id,
        "instance_type": node.instance_type,
        "instance_type_ec2": node.instance_type.removeprefix("ml."),
        "group": node.group,
        "ip": node.ip,
        "hostname": node.hostname,
        "hostname_fqdn": node.fqdn,
    }


# Per-node values the shared stand-in data leaves as tokens, filled in at run time by render.awk.
NODE_TOKENS = {"hostname": "@hostname@", "ip": "@ip@", "instance_id": "@instance_id@"}


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


def hosts_file(cluster: ClusterFacts) -> str:
    """Every node resolves every node locally, so nothing asks a DNS server for sandbox names."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{node.ip} {node.fqdn} {node.hostname}" for node in cluster.nodes]
    return "\n".join(lines) + "\n"


def stand_in_kind(node: Node) -> str:
    """Which shared stand-in folder a node mounts: the stand-ins differ by what the node has."""
    gpu = "gpu" if packs.gpu_model(node.instance_type) else "cpu"
    return f"{gpu}-diskfull" if node.pack == "disk_full" else gpu


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
    if not units:  # systemd prints no legend when nothing matched
        return "\n".join(lines + ["0 loaded units listed."]) + "\n"
    footer = [
        "",
        "LOAD   = Reflects whether the unit definition was properly loaded.",
        "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.",
        "SUB    = The low-level unit activation state, values depend on unit type.",
        f"{len(units)} loaded units listed.",
        "To show all installed unit files use 'systemctl list-unit-files'.",
    ]
    return "\n".join(lines + footer) + "\n"


def render(template_path: Path, variables: dict[str, str]) -> str:
    return string.Template(template_path.read_text()).safe_substitute(variables)


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


def write_systemctl_data(data: Path, cluster: ClusterFacts, has_gpu: bool) -> None:
    units = read_units("common", cluster.type, *(["gpu"] if has_gpu else []))
    (data / "systemctl" / "status").mkdir(parents=True)
    (data / "systemctl" / "list-units.txt").write_text(unit_list_table(units))
    failed = [unit for unit in units if unit[2] == "failed"]
    (data / "systemctl" / "list-units-failed.txt").write_text(unit_list_table(failed))
    variables = {**cluster_variables(cluster), **NODE_TOKENS}
    for unit in units:
        (data / "systemctl" / "status" / unit[0]).write_text(unit_status(unit, variables))


def nodes_table(cluster: ClusterFacts) -> str:
    """.sandbox/nodes.tsv: what the stand-ins need to know about each node, found by hostname."""
    lines = []
    for node in cluster.nodes:
        model = packs.gpu_model(node.instance_type)
        uuids, serials = packs.gpu_identities(node.instance_id, model[1] if model else 0)
        fields = [
            node.hostname, node.instance_id, node.ip, packs.gpu_profile(node.instance_type, node.pack), node.pack,
            ",".join(uuids) or "-", ",".join(serials) or "-",
        ]
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def write_stand_in_kind(shared: Path, kind: str, cluster: ClusterFacts) -> None:
    directory = shared / kind
    directory.mkdir()
    has_gpu = kind.startswith("gpu")
    packs.copy_stand_ins(directory, with_nvidia_smi=has_gpu, with_df=kind.endswith("-diskfull"))
    data = directory / ".sandbox"
    (data / "nodes.tsv").write_text(nodes_table(cluster))
    (data / "boot").write_text(f"{int(boot_time(cluster.started_at).timestamp())}\n")
    write_systemctl_data(data, cluster, has_gpu)
    if has_gpu:
        nodes = [node for node in cluster.nodes if stand_in_kind(node) == kind]
        packs.write_gpu_profiles(data, {(node.instance_type, node.pack) for node in nodes})


def prepare_shared(root: Path, cluster: ClusterFacts) -> Path:
    shared = root / "shared"
    shared.mkdir()
    (shared / "hosts").write_text(hosts_file(cluster))
    (shared / "resource_config.json").write_text(json.dumps(resource_config(cluster), indent=4) + "\n")
    for kind in sorted({stand_in_kind(node) for node in cluster.nodes}):
        write_stand_in_kind(shared, kind, cluster)
    return shared


# ---------------------------------------------------------------------------------------------
# Each node's own files: its logs, /opt, /tmp and fault folder


def log_templates(cluster: ClusterFacts) -> dict[str, str]:
    """The /var/log templates with the cluster's values filled in, once for every node."""
    source_root = FIXTURES / "varlog"
    variables = cluster_variables(cluster)
    return {
        str(source.relative_to(source_root)): render(source, variables)
        for source in source_root.rglob("*")
        if source.is_file()
    }


def event_lines(started_at: datetime, events: list[tuple[float, str]], line_format: str) -> list[str]:
    """Pack events (seconds after boot, text) as log lines, in time order."""
    boot = boot_time(started_at)
    lines = []
    for uptime, text in sorted(events):
        moment = boot + timedelta(seconds=uptime)
        lines.append(line_format.format(syslog=syslog_time(moment), iso=iso_time(moment), uptime=uptime, text=text))
    return lines


def pack_log_lines(node: Node, started_at: datetime) -> dict[str, list[str]]:
    """Lines a node's fixture pack adds to its logs, by log file."""
    kernel = packs.kernel_events(node.pack, node.instance_type)
    kernel_lines = event_lines(started_at, kernel, "{syslog} @hostname@ kernel: [{uptime:12.6f}] {text}")
    other_lines = event_lines(started_at, packs.syslog_events(node.pack), "{syslog} @hostname@ {text}")
    agent_lines = event_lines(started_at, packs.agent_events(node.pack), "{iso} {text}")
    return {
        "kern.log": kernel_lines,
        "syslog": sorted(kernel_lines + other_lines),
        "aws/clusters/sagemaker-cluster-agent.log": agent_lines,
    }


def node_log_tokens(node: Node) -> dict[str, str]:
    model = packs.gpu_model(node.instance_type)
    _, serials = packs.gpu_identities(node.instance_id, model[1] if model else 0)
    tokens = {"@hostname@": node.hostname, "@instance_id@": node.instance_id,
              "@sick_bus@": packs.sick_bus(node.pack, node.instance_type)}
    tokens.update({f"@serial{index}@": serial for index, serial in enumerate(serials)})
    return tokens


def fill_tokens(text: str, tokens: dict[str, str]) -> str:
    for token, value in tokens.items():
        text = text.replace(token, value)
    return text


def write_var_log(directory: Path, node: Node, templates: dict[str, str], started_at: datetime) -> None:
    variables = node_variables(node)
    added = pack_log_lines(node, started_at)
    tokens = node_log_tokens(node)
    for relative, template in templates.items():
        text = string.Template(template).safe_substitute(variables)
        extra = added.get(relative)
        if extra:
            text += fill_tokens("\n".join(extra), tokens) + "\n"
        (directory / "varlog" / relative).write_text(text)


def node_folders(templates: dict[str, str]) -> list[str]:
    """A node's folders, parents first: its own /tmp, /usr/local/sbin, /opt/ml/config and /var/log."""
    log_folders = {str(parent) for relative in templates for parent in Path("varlog", relative).parents}
    return ["", "tmp", "sbin", "opt", "opt/ml", "opt/ml/config", *sorted(log_folders - {"."})]


def prepare_node_dir(root: Path, node: Node, templates: dict[str, str], started_at: datetime) -> Path:
    directory = node_dir(root, node.instance_id)
    for folder in node_folders(templates):  # one mkdir each: a 1000-node sandbox makes 9000
        os.mkdir(directory / folder)
    (directory / "tmp").chmod(0o1777)
    write_var_log(directory, node, templates, started_at)
    # The same file for every node, as HyperPod writes it: linked, not copied 1000 times.
    os.link(root / "shared" / "resource_config.json", directory / "opt" / "ml" / "config" / "resource_config.json")
    return directory


# ---------------------------------------------------------------------------------------------
# Starting and stopping


def launch_node(root: Path, node: Node, log) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", NODE_PATH),
        "NODE_HOSTNAME": node.hostname,
        "NODE_DIR": str(node_dir(root, node.instance_id)),
        "NODE_STAND_INS": str(root / "shared" / stand_in_kind(node)),
        "NODE_HOSTS": str(root / "shared" / "hosts"),
    }
    # Own session: the node outlives the process that started it (`invoke sandbox.up`).
    return subprocess.Popen(
        unshare_command(), env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
        start_new_session=True,
    )


def await_node_init(root: Path, node: Node, unshare: subprocess.Popen) -> int:
    """Wait until the node's mounts are in place; return the host PID of its PID 1."""
    ready = unshare.stdout.readline()
    unshare.stdout.close()
    if ready.strip() != b"ready":
        unshare.wait()
        log = (root / "nodes" / "init.log").read_text(errors="replace").strip()
        raise RuntimeError(f"node {node.instance_id} did not start: {log[-2000:] or 'no output'}")
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    return int(children[0])


def start_nodes(root: Path, cluster: ClusterFacts) -> dict[str, subprocess.Popen]:
    """Start every node of `cluster`; return instance id -> the node's `unshare` process."""
    (root / "nodes").mkdir()
    prepare_shared(root, cluster)
    templates = log_templates(cluster)
    launched: dict[str, subprocess.Popen] = {}
    inits: dict[str, dict] = {}
    with open(root / "nodes" / "launched.jsonl", "a") as records, open(root / "nodes" / "init.log", "ab") as log:
        for start in range(0, len(cluster.nodes), LAUNCH_BATCH):
            batch = cluster.nodes[start:start + LAUNCH_BATCH]
            for node in batch:
                prepare_node_dir(root, node, templates, cluster.started_at)
                unshare = launch_node(root, node, log)
                launched[node.instance_id] = unshare
                records.write(json.dumps({"instance_id": node.instance_id, "unshare": process_identity(unshare.pid)}))
                records.write("\n")
                records.flush()
            for node in batch:
                unshare = launched[node.instance_id]
                init_pid = await_node_init(root, node, unshare)
                inits[node.instance_id] = {
                    "unshare": process_identity(unshare.pid),
                    "init": process_identity(init_pid),
                    "stand_ins": stand_in_kind(node),
                }
    write_json_atomically(root / "nodes" / "inits.json", inits)
    return launched


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
# Faults that live on the node


SLOW_SHIM = """#!/bin/sh
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
