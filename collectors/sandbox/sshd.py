"""A real OpenSSH sshd per sandbox node, for the SSH transport and for Fabric.

Each node's sshd runs inside that node's namespaces (so `hostname` over SSH is the node's) and
listens on the node's own 127.10.x.y address, on one port picked for this sandbox (a fixed port 22
would collide with a second sandbox's nodes, which get the same addresses). Root logs in with the
ed25519 key the sandbox generates; each node has its own ed25519 host key, all listed in a
known_hosts file, so that host-key checking can be tested both ways.

Each node also gets its own /root (bind-mounted in the node's mount namespace only), holding
.ssh/authorized_keys and a minimal .bashrc: the host's .bashrc would run for every SSH command
(bash reads it when started by sshd), and a pyenv-style one made 100 commands take 27 s, not 1.4 s.

State (see daemons.py for why it is in /run): STATE/ssh/sshd_config, STATE/ssh/host_keys/<iid>,
STATE/ssh/homes/<iid>/ (the node's /root). Host-only, in ROOT/ssh: id_ed25519 (the client key),
known_hosts, config (an ssh_config with every node by hostname and instance id),
processes.jsonl (every sshd by host PID) and logs/. sshd logs to the node's /var/log/sshd.log.
"""

import base64
import hashlib
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from collectors.sandbox import FIXTURES
from collectors.sandbox.daemons import (
    append_record,
    await_child,
    await_ports,
    create_state_dir,
    free_port,
    launch_in_node,
    process_identity,
    read_records,
    state_dir,
    stop_recorded,
)

SSH_FIXTURES = FIXTURES / "ssh"
SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be started by absolute path
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; created if missing, and left in place
USER = "root"


@dataclass(frozen=True)
class SshPaths:
    root: Path
    state: Path  # node-visible

    @property
    def config(self) -> Path:
        return self.state / "ssh" / "sshd_config"

    def host_key(self, instance_id: str) -> Path:
        return self.state / "ssh" / "host_keys" / instance_id

    def home(self, instance_id: str) -> Path:
        return self.state / "ssh" / "homes" / instance_id

    @property
    def host_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.host_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.host_dir / "known_hosts"

    @property
    def client_config(self) -> Path:
        return self.host_dir / "config"

    @property
    def records(self) -> Path:
        return self.host_dir / "processes.jsonl"

    def output(self, name: str) -> Path:
        """What a node's sshd start prints before sshd logs to the node's /var/log/sshd.log."""
        return self.host_dir / "logs" / f"{name}.out"


def missing_requirement() -> str | None:
    """Why per-node sshd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "per-node sshd in the sandbox needs root (it mounts the node's /root)"
    if not SSHD.exists():
        return f"per-node sshd in the sandbox needs {SSHD} (Debian package openssh-server)"
    return None


# ---------------------------------------------------------------------------------------------
# Keys


def new_key_pair(comment: str) -> tuple[bytes, str]:
    """A fresh ed25519 key: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


def fingerprint(public_line: str) -> str:
    """`ssh-keygen -l` style: SHA256:<base64 of the key blob's digest, unpadded>."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def write_private_key(path: Path, private: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(private)
    path.chmod(0o600)  # ssh and sshd refuse a private key others can read


def write_client_key(paths: SshPaths) -> str:
    private, public = new_key_pair("hyperpod-collect-sandbox")
    write_private_key(paths.client_key, private)
    paths.client_key.with_suffix(".pub").write_text(public + "\n")
    return public


def write_node_files(paths: SshPaths, node: dict, authorized_key: str) -> str:
    """The node's host key and /root; returns the host key's public line."""
    private, public = new_key_pair(f"root@{node['hostname']}")
    write_private_key(paths.host_key(node["instance_id"]), private)
    home = paths.home(node["instance_id"])
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    (home / ".ssh" / "authorized_keys").write_text(authorized_key + "\n")
    shutil.copy(SSH_FIXTURES / "bashrc", home / ".bashrc")
    shutil.copy(SSH_FIXTURES / "profile", home / ".profile")
    return public


def known_hosts_line(node: dict, port: int, public_line: str) -> str:
    key_type, key = public_line.split()[:2]
    return f"[{node['ip']}]:{port},[{node['hostname']}]:{port} {key_type} {key}"


def client_config(paths: SshPaths, nodes: list[dict], port: int) -> str:
    """An ssh_config: `ssh -F ROOT/ssh/config ip-127-10-0-10 hostname` (or the instance id)."""
    lines = []
    for node in nodes:
        lines += [f"Host {node['hostname']} {node['instance_id']}", f"  HostName {node['ip']}"]
    lines += [
        "Host *",
        f"  User {USER}",
        f"  Port {port}",
        f"  IdentityFile {paths.client_key}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {paths.known_hosts}",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Daemons


def sshd_script(paths: SshPaths, node: dict, port: int) -> str:
    """Shell run inside the node: its own /root, then exec sshd on the node's address."""
    return (
        "set -e\n"
        f"mount --bind {paths.home(node['instance_id'])} /root\n"
        f"exec {SSHD} -D -f {paths.config} -h {paths.host_key(node['instance_id'])} "
        f"-o ListenAddress={node['ip']}:{port} -E /var/log/sshd.log\n"
    )


def start_node_sshds(paths: SshPaths, nodes: list[dict], port: int) -> dict[str, list[int]]:
    """Start every node's sshd at once; return instance id -> the sshd's host identity."""
    launchers = {}
    for node in nodes:
        log_file = paths.output(node["instance_id"])
        launchers[node["instance_id"]] = (launch_in_node(node["init_pid"], sshd_script(paths, node, port), log_file),
                                          log_file)
    daemons = {}
    for instance_id, (launcher, log_file) in launchers.items():
        daemons[instance_id] = await_child(launcher, log_file)
        append_record(paths.records, {"name": f"sshd@{instance_id}", "instance_id": instance_id,
                                      "daemon": daemons[instance_id], "parent": process_identity(launcher.pid)})
    return daemons


# ---------------------------------------------------------------------------------------------
# The interface for control.py and tests


def start_sshd(root: Path, status: dict) -> dict:
    """Start one sshd inside every node; return status["ssh"]."""
    reason = missing_requirement()
    if reason:
        return {"running": False, "reason": reason}
    paths = SshPaths(Path(root), create_state_dir(root))
    (paths.host_dir / "logs").mkdir(parents=True, exist_ok=True)
    nodes = status["nodes"]
    port = free_port(node["ip"] for node in nodes)
    paths.config.parent.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(string.Template((SSH_FIXTURES / "sshd_config").read_text()).substitute(port=port))
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    authorized_key = write_client_key(paths)
    host_keys = {node["instance_id"]: write_node_files(paths, node, authorized_key) for node in nodes}
    paths.known_hosts.write_text(
        "".join(known_hosts_line(node, port, host_keys[node["instance_id"]]) + "\n" for node in nodes)
    )
    paths.client_config.write_text(client_config(paths, nodes, port))
    daemons = start_node_sshds(paths, nodes, port)
    await_ports({node["instance_id"]: (node["ip"], port) for node in nodes}, daemons)
    return {
        "running": True,
        "user": USER,
        "key": str(paths.client_key),
        "port": port,
        "known_hosts": str(paths.known_hosts),
        "config": str(paths.client_config),
        "nodes": {
            node["instance_id"]: {
                "address": node["ip"],
                "host_key": " ".join(host_keys[node["instance_id"]].split()[:2]),
                "fingerprint": fingerprint(host_keys[node["instance_id"]]),
            }
            for node in nodes
        },
    }


def stop_node_sshd(root: Path, instance_id: str) -> list[int]:
    """Stop one node's sshd (a node that refuses SSH); return the PIDs that would not stop."""
    records = read_records(SshPaths(Path(root), state_dir(root)).records)
    return stop_recorded([entry for entry in records if entry.get("instance_id") == instance_id])


def stop_sshd(root: Path) -> list[int]:
    """Stop every recorded sshd by host PID; return the PIDs still alive afterwards."""
    return stop_recorded(read_records(SshPaths(Path(root), state_dir(root)).records))
