"""What each sandbox node's files say: the cluster's facts, its distribution's files, logs with the
node's own ids and its fixture pack's events, /etc/hosts, resource_config.json, and the shared
stand-ins' data.

Rendered once per sandbox where it can be (ROOT/shared), per node only where a node differs (its
/var/log, its journal, its machine id and home folders). GPU models and the packs' own content are in
packs.py.

Every log line a node shows comes from one list of events per node (LogEvent): the boot's kernel and
system messages (fixtures/journal/), the tails of its units' `systemctl status` (which are journal
lines), and its pack's events. They are written the way the node's distribution writes them: all of
them into its journal (journal export format, made into a real journal file by nodes.py), and, where
rsyslog runs, into syslog and kern.log (Ubuntu) or messages (Amazon Linux with rsyslog installed).
"""

import functools
import gzip
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from collectors.sandbox import FIXTURES, packs
from collectors.sandbox.scenario import DEFAULT_DISTRIBUTION


@dataclass(frozen=True)
class Node:
    instance_id: str
    group: str
    instance_type: str
    ip: str
    fqdn: str
    pack: str = "healthy"
    os: str = DEFAULT_DISTRIBUTION
    rsyslog: bool = True

    @property
    def hostname(self) -> str:
        return self.fqdn.split(".", 1)[0]

    @property
    def machine_id(self) -> str:
        """/etc/machine-id: 32 hex digits, random-looking, the same on every run."""
        return hashlib.sha256(f"{self.instance_id}/machine-id".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Distribution:
    """What the node script can see of a distribution, besides /etc/os-release (fixtures/os/)."""

    kernel_banner: str
    kernel_cmdline: str
    root_mount_message: str
    cloud_init_version: str
    unit_dir: str
    # systemd 252 (AL2023) says "preset:" in `systemctl status` and names the unit in "Started ...";
    # 245 (Ubuntu 20.04) and 249 (22.04) say "vendor preset:" and give the description only.
    preset_word: str
    names_units: bool
    default_user: str
    units: str  # fixtures/systemctl/units-<units>.tsv
    # How rsyslog (when installed) writes kernel lines: imklog keeps the kernel's own [uptime] stamp in
    # Ubuntu's kern.log and syslog; Amazon Linux's imjournal writes the message alone to messages.
    kernel_stamps: bool
    rsyslog_files: tuple[str, ...]


DISTRIBUTIONS = {
    "ubuntu-20.04": Distribution(
        kernel_banner="5.15.0-1072-aws (buildd@lcy02-amd64-070) (gcc (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0, "
                      "GNU ld (GNU Binutils for Ubuntu) 2.34) #78~20.04.1-Ubuntu SMP",
        kernel_cmdline="BOOT_IMAGE=/boot/vmlinuz-5.15.0-1072-aws root=PARTUUID=6a2e3f4c-01 ro console=tty1 "
                       "console=ttyS0 nvme_core.io_timeout=4294967295",
        root_mount_message="EXT4-fs (nvme0n1p1): mounted filesystem with ordered data mode. Opts: (null). "
                           "Quota mode: none.",
        cloud_init_version="24.1.3-0ubuntu1~20.04.1", unit_dir="/lib/systemd/system", preset_word="vendor preset",
        names_units=False, default_user="ubuntu", units="ubuntu", kernel_stamps=True,
        rsyslog_files=("syslog", "kern.log"),
    ),
    "ubuntu-22.04": Distribution(
        kernel_banner="6.8.0-1021-aws (buildd@lcy02-amd64-080) (x86_64-linux-gnu-gcc-12 (Ubuntu "
                      "12.3.0-1ubuntu1~22.04) 12.3.0, GNU ld (GNU Binutils for Ubuntu) 2.38) #23~22.04.1-Ubuntu SMP",
        kernel_cmdline="BOOT_IMAGE=/boot/vmlinuz-6.8.0-1021-aws root=PARTUUID=5c1a6f2b-01 ro console=tty1 "
                       "console=ttyS0 nvme_core.io_timeout=4294967295 panic=-1",
        root_mount_message="EXT4-fs (nvme0n1p1): mounted filesystem 2d5a0f0e-5d6c-4a53-9d4c-0a41e9f2c3b7 ro with "
                           "ordered data mode. Quota mode: none.",
        cloud_init_version="24.1.3-0ubuntu1~22.04.1", unit_dir="/lib/systemd/system", preset_word="vendor preset",
        names_units=False, default_user="ubuntu", units="ubuntu", kernel_stamps=True,
        rsyslog_files=("syslog", "kern.log"),
    ),
    "al2023": Distribution(
        kernel_banner="6.1.144-170.251.amzn2023.x86_64 (mockbuild@ip-10-0-60-170) (gcc (GCC) 11.5.0 20240719 "
                      "(Red Hat 11.5.0-5), GNU ld version 2.41-50.amzn2023.0.2) #1 SMP PREEMPT_DYNAMIC",
        kernel_cmdline="BOOT_IMAGE=(hd0,gpt1)/boot/vmlinuz-6.1.144-170.251.amzn2023.x86_64 "
                       "root=UUID=4ff1b9b4-3c35-4e1e-a0f2-6b1b6a2f4d3e ro console=tty0 console=ttyS0,115200n8 "
                       "nvme_core.io_timeout=4294967295 rd.emergency=poweroff rd.shell=0 selinux=1 security=selinux quiet",
        root_mount_message="XFS (nvme0n1p1): Mounting V5 Filesystem 4ff1b9b4-3c35-4e1e-a0f2-6b1b6a2f4d3e",
        cloud_init_version="22.2.2", unit_dir="/usr/lib/systemd/system", preset_word="preset", names_units=True,
        default_user="ec2-user", units="al2023", kernel_stamps=False, rsyslog_files=("messages",),
    ),
}


@dataclass(frozen=True)
class ClusterFacts:
    """What a node's fixture files say about the cluster it belongs to."""

    name: str
    arn: str
    region: str
    type: str
    nodes: list[Node]
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


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
    """Which shared stand-in folder a node mounts: the stand-ins differ by what the node has (its
    distribution's units, whether rsyslog runs, a GPU, a full disk)."""
    gpu = "gpu" if packs.gpu_model(node.instance_type) else "cpu"
    logs = "" if node.rsyslog else "-journald"
    return f"{node.os}{logs}-{gpu}" + ("-diskfull" if node.pack == "disk_full" else "")


def render(template_path: Path, variables: dict[str, str]) -> str:
    return string.Template(template_path.read_text()).safe_substitute(variables)



def distribution_variables(node: Node) -> dict[str, str]:
    distribution = DISTRIBUTIONS[node.os]
    return {
        "kernel_banner": distribution.kernel_banner, "kernel_cmdline": distribution.kernel_cmdline,
        "root_mount_message": distribution.root_mount_message,
        "cloud_init_version": distribution.cloud_init_version,
        "unit_dir": distribution.unit_dir, "preset_word": distribution.preset_word,
    }


# ---------------------------------------------------------------------------------------------
# Units: what systemctl shows, and which unit a log line belongs to


def node_units(node: Node, cluster_type: str) -> list[list[str]]:
    """(name, load, active, sub, description) of the node's units, in systemd's order (by type, then
    by name): its distribution's, rsyslog where it runs, its orchestrator's, GPU units on GPU nodes."""
    kinds = ["common", DISTRIBUTIONS[node.os].units, cluster_type]
    kinds += ["rsyslog"] if node.rsyslog else []
    kinds += ["gpu"] if packs.gpu_model(node.instance_type) else []
    rows = []
    for kind in kinds:
        text = (FIXTURES / "systemctl" / f"units-{kind}.tsv").read_text()
        rows += [line.split("\t") for line in text.splitlines() if line]
    if node.pack == "disk_full":  # logrotate cannot write the rotated files
        rows = [[name, load, "failed", "failed", text] if name == "logrotate.service" else [name, load, a, b, text]
                for name, load, a, b, text in rows]
    return sorted(rows, key=lambda row: (row[0].rpartition(".")[2].lower(), row[0].lower()))


def started_line(unit: str, description: str, node: Node) -> str:
    return f"Started {unit} - {description}." if DISTRIBUTIONS[node.os].names_units else f"Started {description}."


def unit_status(unit: list[str], variables: dict[str, str], node: Node) -> str:
    name, _, active, sub, description = unit
    template = FIXTURES / "systemctl" / "status" / name
    if not template.exists():
        template = FIXTURES / "systemctl" / "status" / "_default"
    if active == "active":
        active_line = f"active ({sub}) since {variables['since']}; 1h ago"
    else:
        active_line = f"{active} ({sub})"
    return render(template, {**variables, "unit": name, "description": description, "active_line": active_line,
                             "started": started_line(name, description, node)})


def write_systemctl_data(data: Path, cluster: ClusterFacts, node: Node) -> None:
    """units.tsv and one status file per unit, for the stand-in systemctl of `node`'s kind."""
    units = node_units(node, cluster.type)
    (data / "systemctl" / "status").mkdir(parents=True)
    (data / "systemctl" / "units.tsv").write_text("".join("\t".join(unit) + "\n" for unit in units))
    variables = {**cluster_variables(cluster), **distribution_variables(node), **NODE_TOKENS}
    for unit in units:
        (data / "systemctl" / "status" / unit[0]).write_text(unit_status(unit, variables, node))


# ---------------------------------------------------------------------------------------------
# Users: root, and the ones Session Manager's Run-As may name


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    # Who grants it passwordless sudo on a real node (a file in /etc/sudoers.d), or None.
    sudoers_file: str | None


def node_users(distribution: Distribution, taken: set[int], names_taken: set[str]) -> list[User]:
    """The distribution's default user (cloud-init gives it passwordless sudo in 90-cloud-init-users),
    ssm-user (SSM Agent creates it with passwordless sudo in ssm-agent-users; aws/amazon-ssm-agent
    agent/session/utility/utility_unix.go), and `researcher`, a cluster user an admin added without sudo.
    Ids from 1000 up, past those the host's own files use."""
    wanted = [(distribution.default_user, "90-cloud-init-users"), ("ssm-user", "ssm-agent-users"), ("researcher", None)]
    users, uid = [], 1000
    for name, sudoers_file in wanted:
        if name in names_taken:
            continue
        while uid in taken:
            uid += 1
        users.append(User(name, uid, sudoers_file))
        uid += 1
    return users


def ids_in(path: Path, column: int) -> tuple[set[str], set[int]]:
    names, ids = set(), set()
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > column and fields[column].isdigit():
            names.add(fields[0])
            ids.add(int(fields[column]))
    return names, ids


def write_distribution_files(directory: Path, node: Node) -> list[User]:
    """ROOT/shared/os/<os>/: os-release, and the host's passwd and group with the node's users added
    (the nodes run the host's daemons, whose users must resolve), a shadow to match, and sudoers.d."""
    distribution = DISTRIBUTIONS[node.os]
    directory.mkdir(parents=True)
    (directory / "os-release").write_text((FIXTURES / "os" / node.os / "os-release").read_text())
    user_names, uids = ids_in(Path("/etc/passwd"), 2)
    group_names, gids = ids_in(Path("/etc/group"), 2)
    users = node_users(distribution, uids | gids, user_names | group_names)
    passwd = Path("/etc/passwd").read_text().rstrip("\n") + "\n"
    passwd += "".join(f"{user.name}:x:{user.uid}:{user.uid}::/home/{user.name}:/bin/bash\n" for user in users)
    group = Path("/etc/group").read_text().rstrip("\n") + "\n"
    group += "".join(f"{user.name}:x:{user.uid}:\n" for user in users)
    (directory / "passwd").write_text(passwd)
    (directory / "group").write_text(group)
    # PAM's account check (sudo runs it even with NOPASSWD) needs a shadow entry for each user. No
    # password is copied from the host's: every account's is locked (`*`), as keys and SSM log in.
    (directory / "shadow").write_text("".join(f"{line.split(':', 1)[0]}:*:19000:0:99999:7:::\n"
                                              for line in passwd.splitlines()))
    (directory / "shadow").chmod(0o600)
    sudoers = directory / "sudoers.d"
    sudoers.mkdir()
    for user in users:
        if user.sudoers_file:
            (sudoers / user.sudoers_file).write_text(f"{user.name} ALL=(ALL) NOPASSWD:ALL\n")
            (sudoers / user.sudoers_file).chmod(0o440)  # sudo ignores a sudoers file others may write
    return users


# ---------------------------------------------------------------------------------------------
# Log events: one list per node, written as each distribution writes them


@dataclass(frozen=True)
class LogEvent:
    uptime: float  # seconds since its boot
    identifier: str  # "kernel", "systemd", "kubelet", ...
    pid: int | None
    message: str


# `${syslog_tN} ${hostname} IDENT[PID]: MESSAGE` in fixtures/journal/ and the status tails; the kernel's
# messages start with their own `[uptime]`.
TEMPLATE_LINE_RE = re.compile(r"^\$\{syslog_t(\d)\} \$\{hostname\} ([^\s\[:]+)(?:\[(\d+)\])?: (.*)$")
KERNEL_STAMP_RE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
PACK_LINE_RE = re.compile(r"^([^\s\[:]+)(?:\[(\d+)\])?: (.*)$")
TEMPLATE_OFFSETS_S = (0, 12, 40, 95, 160)  # ${syslog_tN}: N-th moment after boot (time_variables)


def parse_template_events(text: str) -> list[LogEvent]:
    events = []
    for line in text.splitlines():
        match = TEMPLATE_LINE_RE.match(line)
        if not match:
            continue
        moment, identifier, pid, message = match.groups()
        uptime = float(TEMPLATE_OFFSETS_S[int(moment)])
        stamped = KERNEL_STAMP_RE.match(message) if identifier == "kernel" else None
        if stamped:
            uptime, message = float(stamped.group(1)), stamped.group(2)
        events.append(LogEvent(uptime, identifier, int(pid) if pid else None, message))
    return events


def boot_events(cluster: ClusterFacts, node: Node, units: list[list[str]]) -> list[LogEvent]:
    """A boot's messages (the same every boot), with the cluster's and distribution's values in."""
    descriptions = {unit[0]: unit[4] for unit in units}
    # The lines' own moments (${syslog_tN}) stay for parse_template_events: each boot has its own.
    cluster_values = {name: value for name, value in cluster_variables(cluster).items() if not name.startswith("syslog_t")}
    variables = {
        **cluster_values, **distribution_variables(node),
        "starting_cloud_init": started_line("cloud-init.service", descriptions["cloud-init.service"], node)
        .replace("Started", "Starting", 1).removesuffix(".") + "...",
        "started_ntp": next(started_line(name, text, node) for name, text in descriptions.items()
                            if name in ("chrony.service", "chronyd.service")),
        "multi_user_target": "multi-user.target - Multi-User System" if DISTRIBUTIONS[node.os].names_units
        else "Multi-User System",
    }
    events = []
    for name in ("kernel.txt", "system.txt"):
        text = string.Template((FIXTURES / "journal" / name).read_text()).safe_substitute(variables)
        events += parse_template_events(text)
    for unit in units:  # the journal lines `systemctl status` shows under each unit
        status = FIXTURES / "systemctl" / "status" / unit[0]
        if status.exists():
            text = string.Template(status.read_text()).safe_substitute(
                {**variables, "started": started_line(unit[0], unit[4], node)})
            events += parse_template_events(text)
    # Once each (a status tail may repeat a line), in time order; sorted() keeps equal times in file order.
    return sorted(dict.fromkeys(events), key=lambda event: event.uptime)


def pack_events(node: Node) -> list[LogEvent]:
    events = [LogEvent(uptime, "kernel", None, text) for uptime, text in packs.kernel_events(node.pack,
                                                                                             node.instance_type)]
    for uptime, text in packs.syslog_events(node.pack):
        identifier, pid, message = PACK_LINE_RE.match(text).groups()
        events.append(LogEvent(uptime, identifier, int(pid) if pid else None, message))
    return events


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


def node_message(event: LogEvent, variables: dict[str, str], tokens: dict[str, str]) -> str:
    return fill_tokens(string.Template(event.message).safe_substitute(variables), tokens)


# Kernel messages at KERN_ERR or KERN_WARNING (the rest are info): what `journalctl -p` and dmesg's
# levels see. NVRM prints Xids as errors; the OOM killer warns when it is invoked and errs when it kills.
KERNEL_ERRORS = ("NVRM: Xid", "GPU has fallen off the bus", "Out of memory: Killed process")
KERNEL_WARNINGS = ("invoked oom-killer", "taints kernel")


def priority(event: LogEvent) -> int:
    """syslog priority: 3 error, 4 warning, 6 info; daemons' own levels where their lines carry one
    (klog's E/W prefix, logrus' level=)."""
    text = event.message
    if event.identifier == "kernel":
        if any(marker in text for marker in KERNEL_ERRORS):
            return 3
        return 4 if any(marker in text for marker in KERNEL_WARNINGS) else 6
    if re.match(r"^E\d{4}", text) or "level=error" in text or "No space left on device" in text \
            or "no space left on device" in text:
        return 3
    return 4 if re.match(r"^W\d{4}", text) or "level=warning" in text else 6


# ---------------------------------------------------------------------------------------------
# Boots: the journal keeps earlier ones


@functools.cache
def host_boot_id() -> str:
    """The running kernel's boot id: nodes share it, so `journalctl -b` and `-k` mean this boot."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


# Earlier boots the node's journal remembers: one inside the script's default 3-day window, one
# outside it, so the window shows in what journalctl returns.
EARLIER_BOOTS = (timedelta(days=10), timedelta(days=2))


def node_boots(node: Node, started_at: datetime) -> list[tuple[str, datetime]]:
    """(boot id, boot time) of each boot the node's journal holds, oldest first."""
    current = boot_time(started_at)
    boots = [(hashlib.sha256(f"{node.instance_id}/boot{index}".encode()).hexdigest()[:32], current - ago)
             for index, ago in enumerate(EARLIER_BOOTS)]
    return boots + [(host_boot_id(), current)]


# ---------------------------------------------------------------------------------------------
# Writing them: rsyslog's files, the journal's export stream, the kernel ring buffer


def syslog_line(at: datetime, hostname: str, event: LogEvent, message: str, kernel_stamps: bool) -> str:
    if event.identifier == "kernel":
        text = f"[{event.uptime:12.6f}] {message}" if kernel_stamps else message
        return f"{syslog_time(at)} {hostname} kernel: {text}"
    who = f"{event.identifier}[{event.pid}]" if event.pid else event.identifier
    return f"{syslog_time(at)} {hostname} {who}: {message}"


def event_unit(event: LogEvent, message: str, units: list[list[str]]) -> tuple[str | None, str | None]:
    """(_SYSTEMD_UNIT, UNIT): a daemon's lines belong to its service; systemd's own lines are about
    the unit they name, which is how `journalctl -u` finds both (_PID=1 UNIT=...)."""
    names = {unit[0] for unit in units}
    if event.identifier == "kernel":
        return None, None
    if event.identifier == "systemd" and event.pid == 1:
        about = next((name for name, *_, text in units if f" {name} " in f" {message} " or f" {text}." in message
                      or f" {text}..." in message), None)
        return "init.scope", about
    service = f"{event.identifier}.service"
    return (service if service in names else None), None


def export_entry(fields: list[tuple[str, object]]) -> str:
    return "".join(f"{name}={value}\n" for name, value in fields) + "\n"


def journal_fields(event: LogEvent, message: str, at: datetime, boot_id: str, node: Node,
                   units: list[list[str]]) -> list[tuple[str, object]]:
    """One entry as journald records it (systemd.journal-fields(7))."""
    fields: list[tuple[str, object]] = [
        ("__REALTIME_TIMESTAMP", int(at.timestamp() * 1_000_000)),
        ("__MONOTONIC_TIMESTAMP", int(event.uptime * 1_000_000)),
        ("_BOOT_ID", boot_id), ("_MACHINE_ID", node.machine_id), ("_HOSTNAME", node.hostname),
        ("PRIORITY", priority(event)),
    ]
    if event.identifier == "kernel":
        return fields + [("_TRANSPORT", "kernel"), ("SYSLOG_FACILITY", 0), ("SYSLOG_IDENTIFIER", "kernel"),
                         ("_SOURCE_MONOTONIC_TIMESTAMP", int(event.uptime * 1_000_000)), ("MESSAGE", message)]
    own_unit, about = event_unit(event, message, units)
    fields += [("_TRANSPORT", "journal" if event.pid == 1 else "stdout"), ("SYSLOG_FACILITY", 3),
               ("SYSLOG_IDENTIFIER", event.identifier), ("_PID", event.pid or 1), ("_UID", 0), ("_GID", 0),
               ("_COMM", event.identifier)]
    if own_unit:
        fields += [("_SYSTEMD_UNIT", own_unit), ("_SYSTEMD_CGROUP", f"/system.slice/{own_unit}"),
                   ("_SYSTEMD_SLICE", "system.slice" if own_unit != "init.scope" else "-.slice")]
    if about:
        fields.append(("UNIT", about))
    return fields + [("MESSAGE", message)]


@dataclass(frozen=True)
class RotatedLog:
    name: str  # under /var/log
    data: bytes
    mtime: float  # when its last line was written: what the node script's --since window reads


@dataclass
class NodeLogs:
    """What one node's logs hold, by destination."""

    files: dict[str, str]  # /var/log/<name> -> text (rsyslog's files, the HyperPod agents' logs)
    rotated: list[RotatedLog]  # rsyslog's files of the earlier boots, as logrotate left them
    journal_export: str  # journal export format: every boot's entries, oldest first
    kmsg: str  # the kernel ring buffer of this boot, for the dmesg stand-in: "[uptime] message" lines


class LogSources:
    """What every node's logs are made from, read once per sandbox: the agents' log templates, and
    each kind of node's units and boot messages."""

    def __init__(self, cluster: ClusterFacts) -> None:
        self.cluster = cluster
        self.templates = log_templates(cluster)
        self.kinds: dict[str, tuple[list[list[str]], list[LogEvent]]] = {}

    def units_and_boot(self, node: Node) -> tuple[list[list[str]], list[LogEvent]]:
        kind = stand_in_kind(node)
        if kind not in self.kinds:
            units = node_units(node, self.cluster.type)
            self.kinds[kind] = (units, boot_events(self.cluster, node, units))
        return self.kinds[kind]


def node_logs(node: Node, sources: LogSources) -> NodeLogs:
    units, base = sources.units_and_boot(node)
    variables = {**node_variables(node), **distribution_variables(node)}
    tokens = node_log_tokens(node)
    this_boot = sorted(base + pack_events(node), key=lambda event: event.uptime)
    lines = [(event, node_message(event, variables, tokens)) for event in this_boot]
    files = {relative: fill_tokens(string.Template(template).safe_substitute(variables), tokens)
             for relative, template in sources.templates.items()}
    agent_lines = event_lines(sources.cluster.started_at, packs.agent_events(node.pack), "{iso} {text}")
    if agent_lines:
        files["aws/clusters/sagemaker-cluster-agent.log"] += fill_tokens("\n".join(agent_lines), tokens) + "\n"
    rotated = []
    if node.rsyslog:
        files.update(rsyslog_files(node, boot_time(sources.cluster.started_at), lines))
        earlier = [(event, node_message(event, variables, tokens)) for event in base]
        rotated = rotated_logs(node, sources.cluster.started_at, earlier)
    kmsg = "".join(f"[{event.uptime:12.6f}] {message}\n" for event, message in lines if event.identifier == "kernel")
    journal = journal_export(node, sources.cluster.started_at, units, base, this_boot, variables, tokens)
    return NodeLogs(files=files, rotated=rotated, journal_export=journal, kmsg=kmsg)


def rsyslog_files(node: Node, booted: datetime, lines: list[tuple[LogEvent, str]]) -> dict[str, str]:
    """Ubuntu's rsyslog: everything in syslog, the kernel's in kern.log too; Amazon Linux's: messages."""
    distribution = DISTRIBUTIONS[node.os]
    everything = [syslog_line(booted + timedelta(seconds=event.uptime), node.hostname, event, message,
                              distribution.kernel_stamps) for event, message in lines]
    kernel = [text for (event, _), text in zip(lines, everything) if event.identifier == "kernel"]
    return {name: "\n".join(kernel if name == "kern.log" else everything) + "\n" for name in distribution.rsyslog_files}


def rotated_logs(node: Node, started_at: datetime, lines: list[tuple[LogEvent, str]]) -> list[RotatedLog]:
    """The earlier boots' rsyslog files, newest first, as logrotate names them: Ubuntu's daily
    rotation keeps `syslog.1` and compresses older ones (`syslog.2.gz`, delaycompress); Amazon Linux's
    names them by date (`messages-20261130`)."""
    rotated = []
    earlier_boots = [booted for boot_id, booted in node_boots(node, started_at) if boot_id != host_boot_id()]
    for age, booted in enumerate(reversed(earlier_boots), 1):
        last = booted + timedelta(seconds=lines[-1][0].uptime)
        for name, text in rsyslog_files(node, booted, lines).items():
            if node.os == "al2023":
                rotated.append(RotatedLog(f"{name}-{(last + timedelta(days=1)).strftime('%Y%m%d')}", text.encode(),
                                          last.timestamp()))
            elif age == 1:
                rotated.append(RotatedLog(f"{name}.1", text.encode(), last.timestamp()))
            else:
                rotated.append(RotatedLog(f"{name}.{age}.gz", gzip.compress(text.encode(), mtime=0), last.timestamp()))
    return rotated


def journal_export(node: Node, started_at: datetime, units: list[list[str]], base: list[LogEvent],
                   this_boot: list[LogEvent], variables: dict[str, str], tokens: dict[str, str]) -> str:
    """Every boot's entries, oldest first: earlier boots had the same boot messages, this one its pack's too."""
    entries = []
    for boot_id, booted in node_boots(node, started_at):
        for event in this_boot if boot_id == host_boot_id() else base:
            at = booted + timedelta(seconds=event.uptime)
            message = node_message(event, variables, tokens)
            entries.append(export_entry(journal_fields(event, message, at, boot_id, node, units)))
    return "".join(entries)


# ---------------------------------------------------------------------------------------------
# The shared stand-in folders


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


def write_stand_in_kind(shared: Path, kind: str, cluster: ClusterFacts, nodes: list[Node]) -> None:
    directory = shared / kind
    directory.mkdir()
    has_gpu = bool(packs.gpu_model(nodes[0].instance_type))
    packs.copy_stand_ins(directory, with_nvidia_smi=has_gpu, with_df=nodes[0].pack == "disk_full")
    data = directory / ".sandbox"
    (data / "nodes.tsv").write_text(nodes_table(cluster))
    (data / "boot").write_text(f"{int(boot_time(cluster.started_at).timestamp())}\n")
    (data / "kmsg").mkdir()
    write_systemctl_data(data, cluster, nodes[0])
    if has_gpu:
        packs.write_gpu_profiles(data, {(node.instance_type, node.pack) for node in nodes})


def prepare_shared(root: Path, cluster: ClusterFacts) -> dict[str, list[User]]:
    """ROOT/shared: hosts, resource_config.json, each distribution's files and each kind's stand-ins.
    Returns each distribution's users, whose home folders every node of it gets."""
    shared = root / "shared"
    shared.mkdir()
    (shared / "hosts").write_text(hosts_file(cluster))
    (shared / "resource_config.json").write_text(json.dumps(resource_config(cluster), indent=4) + "\n")
    kinds: dict[str, list[Node]] = {}
    users: dict[str, list[User]] = {}
    for node in cluster.nodes:
        kinds.setdefault(stand_in_kind(node), []).append(node)
        if node.os not in users:
            users[node.os] = write_distribution_files(shared / "os" / node.os, node)
    for kind, nodes in sorted(kinds.items()):
        write_stand_in_kind(shared, kind, cluster, nodes)
    return users


# ---------------------------------------------------------------------------------------------
# Each node's own logs


def log_templates(cluster: ClusterFacts) -> dict[str, str]:
    """The /var/log templates (the HyperPod agents' logs) with the cluster's values filled in, once
    for every node."""
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
