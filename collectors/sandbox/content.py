"""What each sandbox node's files say: the cluster's facts, logs with the node's own ids and its
fixture pack's events, /etc/hosts, resource_config.json, and the shared stand-ins' data.

Rendered once per sandbox where it can be (ROOT/shared), per node only where a node differs (its
/var/log). GPU models and the packs' own content are in packs.py.
"""

import json
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from collectors.sandbox import packs

FIXTURES = packs.FIXTURES


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
# Each node's own logs


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
