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

import codecs
import dataclasses
import errno
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import paramiko
from fabric import Config, Connection
from paramiko.ssh_exception import NoValidConnectionsError

from collectors.errors import UsageError
from collectors.hashing import sha256_of
from collectors.layout import NODE_SCRIPT_RAN, SCRIPT_NAME, ssm_target
from collectors.nodes import match_names
from collectors.settings import Settings, Timeouts
from collectors.transports.base import (
    SESSION_DROPPED, SESSION_EXITED_EARLY, SESSION_FETCH_FAILED, SESSION_INTERRUPTED, SESSION_LAUNCHED, SESSION_OK,
    SESSION_START_FAILED, SESSION_TIMEOUT, SESSION_UNREACHABLE, NodeJob, RedactingLog, SessionResult, TransportNeeds,
    redact)
from collectors.transports.protocol import (
    FETCH, RC_FETCH_FAILED, RUN_ATTACHED, RUN_DETACHED, classify_start_error, last_line, parse_result_line)

# paramiko logs every failed connection with a traceback; with no logging configured Python would print
# them on stderr. Each failure is an outcome in the node's record instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

POLL = 0.5
CHUNK = 65536
OUTPUT_KEEP_CHARS = 256 * 1024
OUTPUT_TAIL_LINES = 200
CLEANUP_TIMEOUT = 30
DEFAULT_PORT = 22
GATEWAY_CONTROLLER = "controller"
SSM_SSH_DOCUMENT = "AWS-StartSSHSession"
# OpenSSH's StrictHostKeyChecking values, as our policies (we never ask, so `ask` is strict).
SSH_CONFIG_POLICIES = {"yes": "strict", "ask": "strict", "accept-new": "accept-new", "no": "off", "off": "off"}
DEFAULT_USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
WORK_DIR_RE = re.compile(r"^HPC_DIR (/tmp/hpc-run\.[A-Za-z0-9]+)$", re.MULTILINE)
LAUNCH_RE = re.compile(r"^HPC_LAUNCH (pid=\d+|exited=\d+|fetch_failed)$", re.MULTILINE)
CR_RE = re.compile(r"\r+\n?")

# Run by the login user: a private folder whose `env` file is the channel's stdin.
PREPARE = 'umask 077; d=$(mktemp -d /tmp/hpc-run.XXXXXX) && cat >"$d/env" && printf "HPC_DIR %s\\n" "$d"'
# The bodies below run under `sh -c BODY hpc-collector DIR` (as root: through `sudo -n` for
# another user). The S3 ones are the SSM transport's steps: fetch by presigned URL, then run.
ATTACHED_S3 = f'd=$1; if {FETCH}; then {RUN_ATTACHED}; else rm -rf "$d"; exit {RC_FETCH_FAILED}; fi'
# `setsid -w` keeps a waiting parent that `kill -0` can see (a script that dies at once, e.g. on bad
# input, is caught within the short sleep), while the script runs in a session of its own that
# outlives this channel (as in ssm.py).
DETACHED_S3 = (f'd=$1; if {FETCH}; then '
               f'setsid -w nohup sh -c {shlex.quote(RUN_DETACHED)} hpc-collector "$d" >/dev/null 2>&1 </dev/null & '
               'p=$!; sleep 0.3; if kill -0 "$p" 2>/dev/null; then echo "HPC_LAUNCH pid=$p"; '
               'else wait "$p"; r=$?; tail -n 5 "$d.log" 2>/dev/null; echo "HPC_LAUNCH exited=$r"; fi; '
               'else rm -rf "$d"; echo "HPC_LAUNCH fetch_failed"; fi')
# Pushed script, kept tarball. The folder stays until the tarball is pulled; it is handed back to
# the login user so that SFTP can read it.
ATTACHED_SFTP = ('d=$1; . "$d/env"; rm -f "$d/env"; export HPC_KEEP_DIR="$d/keep"; '
                 f'bash "$d/{SCRIPT_NAME}"; rc=$?; '
                 '[ -z "${SUDO_UID:-}" ] || chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$d"; exit $rc')


class Cancelled(Exception):
    """The operator pressed Ctrl-C: end this node's connection now."""


class StepTimeout(Exception):
    def __init__(self, step: str, timeout: float, output: str):
        super().__init__(step)
        self.step, self.timeout, self.output = step, timeout, output


class StepFailed(Exception):
    """Reaching the node (or the jump host), or preparing it, failed; `result` is the outcome."""

    def __init__(self, result: SessionResult):
        super().__init__(result.error)
        self.result = result


class PullFailed(Exception):
    """The kept tarball could not be pulled back intact; collecting the node again makes a new one."""


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"host key for {hostname} not found in known_hosts")
        self.hostname, self.key = hostname, key


# ---------------------------------------------------------------------------------------------
# Settings → what the transport needs


@dataclasses.dataclass(frozen=True)
class SshOptions:
    user: str | None = None
    key: str | None = None
    port: int | None = None
    config_path: str | None = None
    policy: str | None = None            # None: the ssh config's StrictHostKeyChecking, else strict
    known_hosts_file: str | None = None  # None: the ssh config's known_hosts files
    data_path: str = "s3"

    @classmethod
    def from_settings(cls, settings: Settings) -> "SshOptions":
        """Checked once here: a bad key or config would otherwise fail every node the same way."""
        if settings.ssh.config and not Path(settings.ssh.config).expanduser().is_file():
            raise UsageError(f"ssh_config {settings.ssh.config} is not a file")
        if settings.ssh.port is not None and settings.ssh.port > 65535:
            raise UsageError(f"ssh_port must be a port number (1 to 65535), got {settings.ssh.port}")
        key = str(Path(settings.ssh.key).expanduser()) if settings.ssh.key else None
        if key:
            check_private_key(key)
        return cls(user=settings.ssh.user, key=key, port=settings.ssh.port, config_path=settings.ssh.config,
                   policy=settings.ssh.known_hosts, known_hosts_file=settings.ssh.known_hosts_file,
                   data_path=settings.ssh.data_path)


def check_private_key(path: str) -> None:
    try:
        paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise UsageError(f"ssh_key {path} is encrypted: add it to ssh-agent and leave --ssh-key out") from None
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"ssh_key {path} is not a usable private key: {describe(exc)}") from None


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


# ---------------------------------------------------------------------------------------------
# Host keys


class StrictPolicy(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use, as OpenSSH's accept-new: a new key is appended; a changed one is still refused."""

    def __init__(self, path: Path, lock: threading.Lock):
        self.path, self.lock = path, lock

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with self.lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path, "a", encoding="ascii") as known_hosts:
                known_hosts.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def host_key_policy(options: SshOptions, ssh_config: dict[str, Any]) -> str:
    if options.policy:
        return options.policy
    return SSH_CONFIG_POLICIES.get(str(ssh_config.get("stricthostkeychecking", "")).lower(), "strict")


def known_hosts_files(options: SshOptions, ssh_config: dict[str, Any]) -> list[Path]:
    """The files to check keys against; new keys go to the first one (as OpenSSH does)."""
    if options.known_hosts_file:
        return [Path(options.known_hosts_file).expanduser()]
    user_files = str(ssh_config.get("userknownhostsfile", DEFAULT_USER_KNOWN_HOSTS)).split()
    global_files = str(ssh_config.get("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS)).split()
    return [Path(name).expanduser() for name in user_files + global_files]


def apply_host_key_policy(client: paramiko.SSHClient, options: SshOptions, ssh_config: dict[str, Any],
                          lock: threading.Lock) -> None:
    """Load the known keys and set what happens to an unknown one."""
    policy = host_key_policy(options, ssh_config)
    if policy == "off":
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # in memory only: nothing is loaded or saved
        return
    files = known_hosts_files(options, ssh_config)
    for path in files:
        if path.is_file():
            client.get_host_keys().load(str(path))
    client.set_missing_host_key_policy(AcceptNewPolicy(files[0], lock) if policy == "accept-new" else StrictPolicy())


# ---------------------------------------------------------------------------------------------
# The transport


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


CONNECT_ERRORS = (paramiko.SSHException, OSError, EOFError)


def close_connection(connection: Connection) -> None:
    """Fabric closes only an open connection; a failed open can leave paramiko's transport thread behind."""
    connection.close()
    connection.client.close()


class EndingProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand spins until its timeout once the command has exited; this one reports
    the end at once (an empty read is EOF to paramiko), so a failed SSM session fails fast."""

    def recv(self, size: int) -> bytes:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        return os.read(self.process.stdout.fileno(), size)


def fabric_config(path: str | None) -> Config:
    try:
        return Config(runtime_ssh_path=str(Path(path).expanduser())) if path else Config()
    except Exception as exc:  # noqa: BLE001 - a broken ssh config is the user's input
        raise UsageError(f"cannot read the ssh config: {exc}") from None


class NodeSession:
    """One node, step by step: connect, prepare (folder and env file), run or launch, pull back."""

    def __init__(self, transport: SshTransport, job: NodeJob, address: str, cancel: Any, log: RedactingLog):
        self.transport = transport
        self.options = transport.options
        self.timeouts = transport.timeouts
        self.job = job
        self.address = address
        self.cancel = cancel
        self.log = log
        self.hidden = list(job.secrets.values())
        self.connection: Connection | None = None
        self.step = "connect"

    def drive(self) -> SessionResult:
        try:
            self.connection = self.connect()
            return self.steps()
        except StepFailed as failure:
            return failure.result
        except Cancelled:
            return SessionResult(SESSION_INTERRUPTED, error="interrupted by the operator")
        except StepTimeout as timeout:
            return SessionResult(SESSION_TIMEOUT, step=timeout.step, output=self.clean(timeout.output),
                                 error=f"no answer from the node within {timeout.timeout:.0f}s ({timeout.step})")
        except PullFailed as failure:
            return SessionResult(SESSION_DROPPED, step="pull", error=str(failure))
        except CONNECT_ERRORS as exc:
            return SessionResult(SESSION_DROPPED, step=self.step, error=f"the SSH connection failed: {describe(exc)}")
        finally:
            if self.connection is not None:
                close_connection(self.connection)

    # -- connect ----------------------------------------------------------------------------
    def connect(self) -> Connection:
        connection = self.transport.connection(self.address)
        where = f"{connection.user}@{connection.host}:{connection.port}"
        via = f" through {self.transport.gateway.label}" if self.transport.gateway else ""
        self.log.write(f"# ssh {where}{via}\n")
        if self.transport.gateway:
            connection.connect_kwargs["sock"] = self.gateway_channel(connection, where)
        try:
            connection.open()
        except CONNECT_ERRORS as exc:
            close_connection(connection)
            raise StepFailed(connect_failure(exc, where, "connect", self.timeouts.session_prompt)) from None
        return connection

    def gateway_channel(self, connection: Connection, where: str) -> paramiko.Channel:
        gateway = self.transport.gateway_connection()
        try:
            return gateway.transport.open_channel("direct-tcpip", dest_addr=(connection.host, int(connection.port)),
                                                  src_addr=("", 0), timeout=self.timeouts.session_prompt)
        except paramiko.ChannelException as exc:
            raise StepFailed(SessionResult(
                SESSION_UNREACHABLE, step="connect",
                error=f"jump host {self.transport.gateway.label} could not connect to {where}: {exc.text}")) from None
        except CONNECT_ERRORS as exc:
            self.transport.forget_gateway()  # the next node in this thread opens a fresh one
            raise StepFailed(SessionResult(
                SESSION_DROPPED, step="gateway",
                error=f"the connection to jump host {self.transport.gateway.label} failed: {describe(exc)}")) from None

    # -- the node's steps -------------------------------------------------------------------
    def steps(self) -> SessionResult:
        self.step = "shell"
        directory = self.prepare()
        if self.options.data_path == "sftp":
            return self.push_run_and_pull(directory)
        if self.job.detached:
            return self.launch(directory)
        return self.run_attached(directory)

    def prepare(self) -> str:
        """A private folder on the node holding the env file, written from stdin (never a command line)."""
        rc, output = self.execute(PREPARE, "shell", self.timeouts.session_prompt, stdin=env_file(self.node_env()))
        found = WORK_DIR_RE.search(output)
        if rc != 0 or not found:
            raise StepFailed(SessionResult(SESSION_START_FAILED, step="shell", output=self.clean(output),
                                           error=f"cannot make a private folder in /tmp on the node (rc {rc}): "
                                                 f"{last_line(self.clean(output))}"))
        return found.group(1)

    def node_env(self) -> dict[str, str]:
        if self.options.data_path == "sftp":
            # The node cannot reach S3: no presigned URL is of use to it, so none is sent.
            return dict(self.job.env)
        return {**self.job.env, **self.job.secrets}

    def run_attached(self, directory: str) -> SessionResult:
        self.step = "script"
        rc, output = self.execute(self.as_root(ATTACHED_S3, directory), "script", self.timeouts.node_script, pty=True)
        output = self.clean(output)
        if rc == RC_FETCH_FAILED:
            return SessionResult(SESSION_FETCH_FAILED, rc=rc, step="script", output=output,
                                 error="the node could not fetch the script from S3")
        return SessionResult(SESSION_OK, rc=rc, output=output, result=parse_result_line(output))

    def launch(self, directory: str) -> SessionResult:
        self.step = "launch"
        rc, output = self.execute(self.as_root(DETACHED_S3, directory), "launch", self.timeouts.session_prompt)
        output = self.clean(output)
        answers = LAUNCH_RE.findall(output)
        answer = answers[-1] if answers else ""
        if answer.startswith("pid="):
            return SessionResult(SESSION_LAUNCHED, pid=int(answer[len("pid="):]), output=output)
        if answer.startswith("exited="):
            code = int(answer[len("exited="):])
            if code in NODE_SCRIPT_RAN:
                return SessionResult(SESSION_LAUNCHED, rc=code, output=output)
            return SessionResult(SESSION_EXITED_EARLY, rc=code, step="launch", output=output,
                                 error=f"the node script exited at once with {code}: {last_line(output)}")
        if answer == "fetch_failed":
            return SessionResult(SESSION_FETCH_FAILED, step="launch", output=output,
                                 error="the node could not fetch the script from S3")
        return SessionResult(SESSION_START_FAILED, rc=rc, step="launch", output=output,
                             error=f"the launch ended without an answer (rc {rc}): {last_line(output)}")

    def push_run_and_pull(self, directory: str) -> SessionResult:
        """For nodes that cannot reach S3; the node's folder is removed whatever happens."""
        try:
            self.step = "push"
            self.sftp().put(str(self.transport.script), f"{directory}/{SCRIPT_NAME}",
                            callback=self.check_cancel_transfer)
            self.step = "script"
            rc, output = self.execute(self.as_root(ATTACHED_SFTP, directory), "script", self.timeouts.node_script,
                                      pty=True)
            output = self.clean(output)
            report = parse_result_line(output)
            if report.get("kept"):
                self.step = "pull"
                self.pull(directory, report)
                report = {key: value for key, value in report.items() if key != "kept"}
            return SessionResult(SESSION_OK, rc=rc, output=output, result=report)
        finally:
            self.remove(directory)

    def pull(self, directory: str, report: dict[str, str]) -> None:
        """The kept tarball into results/, checked against what the node reported, then stored."""
        kept = urllib.parse.unquote(report["kept"])
        if not kept.startswith(f"{directory}/keep/"):
            raise PullFailed(f"the node kept its tarball outside {directory}/keep: not pulled")
        name = f"{self.job.env['INSTANCE_GROUP']}_{self.job.instance_id}.tar.gz"
        results = self.transport.results_dir
        results.mkdir(parents=True, exist_ok=True)
        partial = results / f".{name}.part"
        try:
            self.sftp().get(kept, str(partial), callback=self.check_cancel_transfer)
            size, digest = partial.stat().st_size, sha256_of(partial)
            if str(size) != report.get("bytes") or digest != report.get("sha256"):
                raise PullFailed(f"pulled {size} bytes sha256 {digest[:12]}…, but the node reported "
                                 f"{report.get('bytes')} bytes sha256 {str(report.get('sha256'))[:12]}…")
            os.replace(partial, results / name)
        finally:
            partial.unlink(missing_ok=True)
        self.log.write(f"# pulled {name} into {results}\n")
        self.transport.store(self.job.instance_id, results / name)

    def remove(self, directory: str) -> None:
        """Best effort: the folder (and a tarball that was not pulled) is in /tmp, which nodes clean."""
        if self.connection is None or not self.connection.is_connected or self.cancel.is_set():
            return
        try:
            self.execute(self.as_root('rm -rf -- "$1"', directory), "cleanup", CLEANUP_TIMEOUT)
        except (StepTimeout, *CONNECT_ERRORS):
            self.log.write(f"# could not remove {directory} from the node\n")

    # -- plumbing ---------------------------------------------------------------------------
    def as_root(self, body: str, directory: str) -> str:
        return node_command(body, directory, sudo=self.connection.user != "root")

    def execute(self, command: str, step: str, timeout: float, stdin: bytes = b"",
                pty: bool = False) -> tuple[int, str]:
        """Run one command in its own channel; return (exit status, output). A pty ties the command's
        life to the channel: closing it (Ctrl-C, timeout) hangs the command up, as an SSM session does."""
        self.log.write(f"# {step}\n")
        channel = self.connection.create_session()
        try:
            channel.set_combine_stderr(True)
            if pty:
                channel.get_pty(term="dumb", width=1000, height=50)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            output = self.read_until_exit(channel, step, timeout)
            return channel.recv_exit_status(), output
        finally:
            channel.close()

    def read_until_exit(self, channel: paramiko.Channel, step: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        output, ended = "", False
        channel.settimeout(POLL)
        while True:
            self.check_cancel()
            if time.monotonic() >= deadline:
                raise StepTimeout(step, timeout, output)
            if ended:
                if channel.status_event.wait(POLL):  # set by the exit status, or when the channel closes
                    return output
                continue
            try:
                data = channel.recv(CHUNK)
            except socket.timeout:
                continue
            ended = not data
            text = decoder.decode(data, final=ended)
            self.log.write(text)
            self.log.flush()  # a transcript can be followed while a long script runs
            output = (output + text)[-OUTPUT_KEEP_CHARS:]

    def sftp(self) -> paramiko.SFTPClient:
        sftp = self.connection.sftp()
        sftp.get_channel().settimeout(self.timeouts.session_prompt)
        return sftp

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def check_cancel_transfer(self, _done: int, _total: int) -> None:
        self.check_cancel()

    def clean(self, text: str) -> str:
        """CRs normalised (a pty's output), blank lines dropped, secrets redacted, the tail kept."""
        lines = [line.rstrip() for line in CR_RE.sub("\n", text or "").split("\n")]
        kept = [line for line in lines if line.strip()]
        return redact("\n".join(kept[-OUTPUT_TAIL_LINES:]), self.hidden)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def node_command(body: str, directory: str, sudo: bool) -> str:
    """`sh -c BODY hpc-collector DIR`, through `sudo -n` (never a password prompt) for a user other than root."""
    argv = ["sh", "-c", body, "hpc-collector", directory]
    return shlex.join(["sudo", "-n"] + argv if sudo else argv)


def env_file(variables: dict[str, str]) -> bytes:
    """`export NAME='value'` lines, sourced by sh on the node."""
    for name in variables:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not an environment variable name: {name!r}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items()).encode()


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def connect_failure(exc: BaseException, where: str, step: str, timeout: float) -> SessionResult:
    """What reaching `where` failed on, as an outcome: unreachable says which of refused, no route,
    refused host key, or failed login."""
    def unreachable(error: str) -> SessionResult:
        return SessionResult(SESSION_UNREACHABLE, step=step, error=error)

    if isinstance(exc, NoValidConnectionsError):
        codes = {error.errno for error in exc.errors.values()}
        if errno.ECONNREFUSED in codes:
            return unreachable(f"{where}: connection refused (is sshd running and listening on that port?)")
        return unreachable(f"{where}: no route to host")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return unreachable(f"{where}: no route to host")
    if isinstance(exc, socket.gaierror):
        return unreachable(f"{where}: cannot resolve the host name ({exc.strerror})")
    if isinstance(exc, paramiko.BadHostKeyException):
        return unreachable(f"{where}: host key refused: the host offered {exc.key.fingerprint} but known_hosts has "
                           f"{exc.expected_key.fingerprint} for it (a changed key, or someone in between); "
                           "fix known_hosts, or skip checking with --ssh-known-hosts off")
    if isinstance(exc, UnknownHostKey):
        return unreachable(f"{where}: host key {exc.key.fingerprint} is not in known_hosts and the policy is strict; "
                           "add it, or trust new keys on first use with --ssh-known-hosts accept-new")
    if isinstance(exc, paramiko.AuthenticationException):
        return unreachable(f"{where}: authentication failed ({describe(exc)}); check the user and key "
                           "(--ssh-user, --ssh-key)")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SessionResult(SESSION_TIMEOUT, step=step, error=f"{where}: no answer within {timeout:.0f}s")
    return SessionResult(SESSION_START_FAILED, step=step, error=f"{where}: {describe(exc)}")


def proxy_failure(proxy: paramiko.ProxyCommand, exc: BaseException, where: str) -> SessionResult:
    """An SSM session used as a proxy failed: what the AWS CLI said decides the outcome (TargetNotConnected
    is unreachable, throttling is throttled), as for the SSM transport."""
    if proxy.process.poll() is None:
        proxy.process.kill()
    said = proxy.process.communicate()[1].decode(errors="replace").strip()
    said = "\n".join(line for line in said.splitlines() if line.strip())
    if not said:
        return connect_failure(exc, where, "gateway", 0)
    result = classify_start_error(said)  # the kind: unreachable, throttled or a failed start
    result.step = "gateway"
    # The AWS CLI says what went wrong first, then repeats the plugin's command line.
    result.error = f"{where} through SSM: {said.splitlines()[0].strip()}"
    return result
