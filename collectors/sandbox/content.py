"""What each sandbox node's files say: the cluster's facts, its distribution's files and users, its
units as systemctl shows them, /etc/hosts, resource_config.json, and the shared stand-ins' data.

Rendered once per sandbox where it can be (ROOT/shared), per node only where a node differs (its
/var/log, its journal, its machine id and home folders). The node's logs are logs.py's; GPU models
and the packs' own content are in packs.py.
"""

import hashlib
import json
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
