"""What the transport needs of the settings, checked once: a bad key or config would fail every node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import paramiko
from fabric import Config

from collectors.errors import UsageError
from collectors.settings import Settings
from collectors.transports.ssh.failures import describe


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


def fabric_config(path: str | None) -> Config:
    try:
        return Config(runtime_ssh_path=str(Path(path).expanduser())) if path else Config()
    except Exception as exc:  # noqa: BLE001 - a broken ssh config is the user's input
        raise UsageError(f"cannot read the ssh config: {exc}") from None
