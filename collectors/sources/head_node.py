"""Discovery without the SageMaker API: a Slurm cluster's nodes, read on its head node over SSH.

Where DescribeCluster and ListClusterNodes cannot be reached (no route to the API endpoint, or no
sagemaker: permission), an operator who can SSH to the head node can still collect. There, `sinfo`
names every compute node with its address and state, and /opt/ml/config/resource_config.json
(HyperPod writes it on every node) maps each address to its instance id and group, the head and
login nodes included, and names the cluster.
"""

from __future__ import annotations

import json
from typing import Any

from invoke.exceptions import CommandTimedOut

from collectors.errors import UsageError
from collectors.nodes import ip_from_hostname
from collectors.settings import Settings
from collectors.transports.ssh import SshTransport
from collectors.transports.ssh.failures import CONNECT_ERRORS, close_connection, connect_failure
from collectors.transports.ssh.gateway import GATEWAY_CONTROLLER, split_user_host_port
from collectors.transports.ssh.options import SshOptions

RESOURCE_CONFIG = "/opt/ml/config/resource_config.json"
# One line per node and partition: name, hostname, address, state (`idle`, `drained`, `down*`…).
SINFO = "sinfo --all --Node --noheader --format='%N %n %o %T'"
# resource_config.json is root's on HyperPod: read it as ourselves, or through sudo without a prompt.
READ_RESOURCE_CONFIG = f"cat {RESOURCE_CONFIG} 2>/dev/null || sudo -n cat {RESOURCE_CONFIG}"
NOT_ASKED = "not asked: this run's nodes were read on the head node, not from the SageMaker API"


def read_cluster(settings: Settings, region: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(cluster, nodes) as the API would give them, from what the head node knows."""
    user, host, port = head_node_address(settings)
    sinfo_text, config_text = run_on_head_node(settings, user, host, port)
    config = parse_resource_config(config_text)
    slurm_nodes = parse_sinfo(sinfo_text)
    if not slurm_nodes and not config:
        raise UsageError(f"the head node {host} lists no Slurm node and has no {RESOURCE_CONFIG}")
    cluster = cluster_record(settings, region, config, host)
    return cluster, merge_nodes(slurm_nodes, config)


def head_node_address(settings: Settings) -> tuple[str | None, str, int | None]:
    """The jump host named by --gateway: it must be reachable without the API (by address, over SSH)."""
    if not settings.ssh.gateway:
        raise UsageError("reading the nodes from the head node needs --gateway [user@]head-node[:port]")
    if settings.ssh.gateway_via != "ssh":
        raise UsageError("reading the nodes from the head node needs a gateway reached by SSH (--gateway-via ssh): "
                         "an SSM session to it needs the cluster's id from the API")
    user, host, port = split_user_host_port(settings.ssh.gateway)
    if host == GATEWAY_CONTROLLER:
        raise UsageError("--gateway controller is found through the SageMaker API; name the head node instead "
                         "(--gateway user@head-node)")
    return user, host, port


def run_on_head_node(settings: Settings, user: str | None, host: str, port: int | None) -> tuple[str, str]:
    """`sinfo` and resource_config.json over one connection, with the run's SSH settings and host-key policy."""
    ssh = SshTransport(SshOptions.from_settings(settings), {}, settings.timeouts)
    connection = ssh.connection(host, user, port)
    where = f"head node {settings.ssh.gateway}"
    try:
        connection.open()
        sinfo = connection.run(SINFO, hide=True, warn=True, in_stream=False, timeout=settings.timeouts.session_prompt)
        config = connection.run(READ_RESOURCE_CONFIG, hide=True, warn=True, in_stream=False,
                                timeout=settings.timeouts.session_prompt)
    except CONNECT_ERRORS as exc:
        raise UsageError(connect_failure(exc, where, "discover", settings.timeouts.session_prompt).error) from None
    except CommandTimedOut as exc:
        raise UsageError(f"{where}: `{exc.result.command}` did not answer within {exc.timeout:.0f}s") from None
    finally:
        close_connection(connection)
    if sinfo.failed:
        raise UsageError(f"{where}: {SINFO} failed: {last_words(sinfo.stderr or sinfo.stdout)}")
    return sinfo.stdout, config.stdout if config.ok else ""


def last_words(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def parse_sinfo(text: str) -> dict[str, dict[str, str]]:
    """Slurm node name -> {host, address, state}; a node in several partitions is listed once."""
    nodes: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4:
            name, host, address, state = fields
            nodes.setdefault(name, {"host": host, "address": address, "state": state})
    return nodes


def parse_resource_config(text: str) -> dict[str, Any]:
    """{} when the file is missing or unreadable: sinfo alone still names the compute nodes."""
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def config_instances(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every instance of resource_config.json with its group's name and instance type."""
    instances = []
    for group in config.get("InstanceGroups") or []:
        # Either spelling of the group's name is accepted.
        name = group.get("InstanceGroupName") or group.get("Name") or "unknown"
        for instance in group.get("Instances") or []:
            instances.append(dict(instance, group=name, instance_type=group.get("InstanceType")))
    return instances


def cluster_record(settings: Settings, region: str, config: dict[str, Any], host: str) -> dict[str, Any]:
    cluster_config = config.get("ClusterConfig") or {}
    arn = cluster_config.get("ClusterArn")
    name = cluster_config.get("ClusterName") or settings.require_cluster()
    return {
        "requested": settings.cluster or name,
        "name": name,
        "arn": arn,
        "id": arn.rsplit("/", 1)[-1] if arn else None,
        "status": "Unknown",
        "type": "slurm",
        "eks_cluster_arn": None,
        "eks_cluster_name": None,
        "region": region,
        "instance_groups": sorted({instance["group"] for instance in config_instances(config)}),
        "discovered_from": f"head node {host} (sinfo, {RESOURCE_CONFIG})",
    }


def merge_nodes(slurm_nodes: dict[str, dict[str, str]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """resource_config.json's instances (the head node's too), each with its Slurm name and state where
    sinfo has it; then the Slurm nodes the file does not list, known by their Slurm name."""
    by_address = {node["address"]: name for name, node in slurm_nodes.items()}
    nodes, named = [], set()
    for instance in config_instances(config):
        address = instance.get("CustomerIpAddress")
        slurm_name = by_address.get(address)
        named.add(slurm_name)
        # The instance id is the run's key for a node; the Slurm or instance name stands in without one.
        key = instance.get("InstanceId") or slurm_name or instance.get("InstanceName") or address
        nodes.append(node_record(key, instance["group"], instance.get("instance_type"), address, slurm_name,
                                 slurm_nodes.get(slurm_name)))
    for name, slurm in sorted(slurm_nodes.items()):
        if name not in named:
            nodes.append(node_record(name, "unknown", None, slurm["address"], name, slurm))
    return nodes


def node_record(instance_id: str, group: str, instance_type: str | None, address: str | None,
                slurm_name: str | None, slurm: dict[str, str] | None) -> dict[str, Any]:
    hostname = slurm_name or (f"ip-{address.replace('.', '-')}" if address else None)
    return {
        "instance_id": instance_id,
        "group": group,
        "instance_type": instance_type,
        # HyperPod's own status needs the API: None, so that the run stage does not skip the node.
        "hyperpod_status": None,
        "hyperpod_message": NOT_ASKED,
        "launch_time": None,
        "dns_hostname": None,
        "hostname": hostname,
        "ip": address or ip_from_hostname(hostname),
        "slurm_state": slurm["state"] if slurm else None,
    }

