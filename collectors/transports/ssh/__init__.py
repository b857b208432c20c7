"""SSH transport: one Fabric connection per node, opened and closed in the runner's worker thread.

What Slurm users on HyperPod do by hand: SSH to each node, directly or through a jump host (the
head node, reached itself by SSH or through an SSM `AWS-StartSSHSession` session). Fabric's
ThreadingGroup would open one thread per host and merge duplicate hosts; the runner already
bounds and paces the fan-out, so each worker thread opens one `Connection` for the node it
serves, and keeps one connection to the jump host for all the nodes it serves.

The node script contract is the SSM one. An SSH exec channel has no terminal echo and no line
limit, so the node's environment (presigned URLs included) travels as the content of a 0600 file
written from the channel's stdin: never in argv, a command line or a log. Node files travel by
S3 (the node fetches the script and uploads its tarball with presigned URLs), or, for nodes that
cannot reach S3 (`ssh_data_path: sftp`), over SFTP: the script is pushed, the node keeps its
tarball (HPC_KEEP_DIR) and we pull it back into the run's results/ folder, checked against the
size and sha256 the node reported, and hand it to `store` (the run stage puts it in S3, where
every later stage looks for it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from fabric import Connection

from collectors.errors import UsageError
from collectors.settings import Settings, Timeouts
from collectors.transports.base import SESSION_UNREACHABLE, NodeJob, RedactingLog, SessionResult, TransportNeeds
from collectors.transports.ssh.failures import (
    CONNECT_ERRORS, StepFailed, close_connection, connect_failure, proxy_failure)
from collectors.transports.ssh.gateway import EndingProxyCommand, Gateway, resolve_gateway
from collectors.transports.ssh.hostkeys import apply_host_key_policy
from collectors.transports.ssh.options import SshOptions, fabric_config
from collectors.transports.ssh.session import NodeSession

# paramiko logs every failed connection with a traceback; with no logging configured Python would print
# them on stderr. Each failure is an outcome in the node's record instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


# The task flags this transport adds (settings paths).
FLAGS = ("ssh.user", "ssh.key", "ssh.port", "ssh.config", "ssh.known_hosts", "ssh.known_hosts_file", "ssh.gateway",
         "ssh.gateway_via", "ssh.data_path")


def make(needs: TransportNeeds) -> "SshTransport":
    return ssh_transport(needs.settings, needs.aws.region, needs.cluster, needs.nodes, script=needs.script,
                         results_dir=needs.results_dir, store=needs.store_tarball)


def ssh_transport(settings: Settings, region: str, cluster: dict[str, Any], nodes: list[dict[str, Any]],
                  script: Path, results_dir: Path, store: Callable[[str, Path], None]) -> "SshTransport":
    """The transport for a run: addresses from discovery, the jump host, and where pulled tarballs go."""
    if settings.ssh.data_path == "sftp" and settings.session.mode == "detached":
        raise UsageError("ssh_data_path sftp pulls each tarball back while the session is open: "
                         "use --session-mode attached")
    gateway = resolve_gateway(settings.ssh.gateway, settings.ssh.gateway_via, nodes, cluster, region,
                              settings.profile, default_port=settings.ssh.port)
    addresses = {node["instance_id"]: node.get("ip") or node.get("hostname") for node in nodes}
    return SshTransport(SshOptions.from_settings(settings), addresses, settings.timeouts, gateway=gateway,
                        script=script, results_dir=results_dir, store=store)


class SshTransport:
    def __init__(self, options: SshOptions, addresses: dict[str, str | None], timeouts: Timeouts, *,
                 gateway: Gateway | None = None, script: Path | None = None, results_dir: Path | None = None,
                 store: Callable[[str, Path], None] | None = None):
        self.options = options
        self.addresses = addresses
        self.timeouts = timeouts
        self.gateway = gateway
        self.script = script
        self.results_dir = results_dir
        self.store = store
        self.fabric_config = fabric_config(options.config_path)
        self.known_hosts_lock = threading.Lock()
        self.local = threading.local()
        # A jump host that refused us (no sshd, host key, login) refuses every node: asked once, told to all.
        self.gateway_refusal: SessionResult | None = None
        self.gateways: list[Connection] = []
        self.gateways_lock = threading.Lock()

    def run(self, job: NodeJob, cancel: Any) -> SessionResult:
        address = self.addresses.get(job.instance_id)
        if not address:
            return SessionResult(SESSION_UNREACHABLE, step="connect",
                                 error="discovery found no IP address or hostname for this node")
        log = RedactingLog(job.transcript, list(job.secrets.values()))
        try:
            return NodeSession(self, job, address, cancel, log).drive()
        finally:
            log.close()

    def close(self) -> None:
        """Close the jump-host connections the worker threads kept open."""
        with self.gateways_lock:
            gateways, self.gateways = self.gateways, []
        for connection in gateways:
            close_connection(connection)

    # -- connections (worker threads) -------------------------------------------------------
    def connection(self, host: str, user: str | None = None, port: int | None = None) -> Connection:
        connect_kwargs: dict[str, Any] = {"banner_timeout": self.timeouts.session_prompt,
                                          "auth_timeout": self.timeouts.session_prompt}
        if self.options.key:
            connect_kwargs["key_filename"] = [self.options.key]
        connection = Connection(host, user=user or self.options.user, port=port or self.options.port,
                                config=self.fabric_config, connect_timeout=self.timeouts.session_prompt,
                                connect_kwargs=connect_kwargs,
                                # Our jump host, when there is one, replaces any from the ssh config.
                                gateway=False if self.gateway else None)
        if self.options.key or str(connection.ssh_config.get("identitiesonly", "")).lower() == "yes":
            # Only the given key: an agent full of keys would use up the server's MaxAuthTries.
            connection.connect_kwargs.update(look_for_keys=False, allow_agent=False)
        apply_host_key_policy(connection.client, self.options, connection.ssh_config, self.known_hosts_lock)
        return connection

    def gateway_connection(self) -> Connection:
        """This thread's connection to the jump host, opened on first use and kept for its next nodes."""
        connection = getattr(self.local, "gateway", None)
        if connection is not None and connection.is_connected:
            return connection
        if connection is not None:
            self.forget_gateway()
        if self.gateway_refusal is not None:
            raise StepFailed(dataclasses.replace(self.gateway_refusal))
        gateway = self.gateway
        connection = self.connection(gateway.host, gateway.user, gateway.port)
        proxy = EndingProxyCommand(gateway.proxy_command) if gateway.proxy_command else None
        if proxy is not None:
            connection.connect_kwargs["sock"] = proxy
        where = f"jump host {gateway.label}"
        try:
            connection.open()
        except CONNECT_ERRORS as exc:
            close_connection(connection)
            if proxy is not None:
                failure = proxy_failure(proxy, exc, where)
            else:
                failure = connect_failure(exc, where, "gateway", self.timeouts.session_prompt)
            if failure.kind == SESSION_UNREACHABLE:
                self.gateway_refusal = failure
            raise StepFailed(dataclasses.replace(failure)) from None
        self.local.gateway = connection
        with self.gateways_lock:
            self.gateways.append(connection)
        return connection

    def forget_gateway(self) -> None:
        connection = getattr(self.local, "gateway", None)
        self.local.gateway = None
        if connection is not None:
            close_connection(connection)
            with self.gateways_lock:
                if connection in self.gateways:
                    self.gateways.remove(connection)
