"""The jump host: a host of its own, or a node of the cluster, reached by SSH or through SSM."""

from __future__ import annotations

import dataclasses
import os
import select
import shlex
import socket
from typing import Any

import paramiko

from collectors.errors import UsageError
from collectors.layout import ssm_target
from collectors.nodes import match_names


DEFAULT_PORT = 22


GATEWAY_CONTROLLER = "controller"


SSM_SSH_DOCUMENT = "AWS-StartSSHSession"


@dataclasses.dataclass(frozen=True)
class Gateway:
    """The jump host: its address, and the ProxyCommand that reaches it when it is reached by SSM."""

    label: str
    host: str
    user: str | None = None
    port: int | None = None
    proxy_command: str | None = None


def split_user_host_port(text: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]`; a host with more than one `:` (IPv6) takes no port shorthand, as in Fabric."""
    user, _, rest = text.rpartition("@")
    host, port = rest, None
    if rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"--gateway {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host:
        raise UsageError(f"--gateway {text!r} names no host")
    return user or None, host, port


def gateway_node(host: str, nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A node of the cluster named as the jump host: `controller`, an instance id or an ip-a-b-c-d name."""
    if host == GATEWAY_CONTROLLER:
        # HyperPod Slurm clusters name the head node's group as their lifecycle scripts say;
        # AWS's own examples call it controller-machine or controller-group.
        controllers = sorted((n for n in nodes if GATEWAY_CONTROLLER in n["group"].lower()
                              and n.get("hyperpod_status", "Running") == "Running"),
                             key=lambda n: (n["group"], n["instance_id"]))
        if not controllers:
            raise UsageError("--gateway controller: no running node of this run is in an instance group whose name "
                             "contains 'controller'; name the jump host instead (--gateway user@head-node)")
        return controllers[0]
    matched, _ = match_names(nodes, [host])
    return matched[0] if matched else None


def resolve_gateway(spec: str | None, via: str, nodes: list[dict[str, Any]], cluster: dict[str, Any],
                    region: str, profile: str | None, default_port: int | None = None) -> Gateway | None:
    if not spec:
        if via == "ssm":
            raise UsageError("--gateway-via ssm needs --gateway: the cluster node to jump through "
                             "(controller, an instance id or an ip-a-b-c-d name)")
        return None
    user, host, port = split_user_host_port(spec)
    node = gateway_node(host, nodes)
    proxy = None
    if via == "ssm":
        if node is None:
            raise UsageError(f"--gateway-via ssm needs a gateway that is a node of the cluster (controller, an "
                             f"instance id or an ip-a-b-c-d name), not {host!r}")
        target = ssm_target(cluster["id"], node)
        proxy = ssm_proxy_command(target, port or default_port or DEFAULT_PORT, region, profile)
    address = (node.get("ip") or node.get("hostname")) if node else host
    if not address:
        raise UsageError(f"--gateway {spec}: discovery found no address for node {node['instance_id']}")
    return Gateway(label=spec, host=address, user=user, port=port, proxy_command=proxy)


def ssm_proxy_command(target: str, port: int, region: str, profile: str | None) -> str:
    """An SSM session that carries SSH, as AWS documents for `ProxyCommand` in ~/.ssh/config."""
    argv = ["aws", "ssm", "start-session", "--target", target, "--document-name", SSM_SSH_DOCUMENT,
            "--parameters", f"portNumber={port}", "--region", region]
    if profile:
        argv += ["--profile", profile]
    return shlex.join(argv)


class EndingProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand spins until its timeout once the command has exited; this one reports
    the end at once (an empty read is EOF to paramiko), so a failed SSM session fails fast."""

    def recv(self, size: int) -> bytes:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        return os.read(self.process.stdout.fileno(), size)
