"""Host keys as OpenSSH checks them: known_hosts files, and what happens to an unknown key."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

if TYPE_CHECKING:
    from collectors.transports.ssh.options import SshOptions


# OpenSSH's StrictHostKeyChecking values, as our policies (we never ask, so `ask` is strict).
SSH_CONFIG_POLICIES = {"yes": "strict", "ask": "strict", "accept-new": "accept-new", "no": "off", "off": "off"}


DEFAULT_USER_KNOWN_HOSTS = "~/.ssh/known_hosts"


DEFAULT_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"host key for {hostname} not found in known_hosts")
        self.hostname, self.key = hostname, key


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
