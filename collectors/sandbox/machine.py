"""What the sandbox needs of the machine beyond PyPI: Debian packages, and their installer.

The demo (and the test suite, tests/machine.py, which adds its own) call `ensure()`: as root on Debian
or Ubuntu, what is missing is installed with apt-get; elsewhere the missing packages and the one
command that installs them are named, and the sandbox does without what it can (no Slurm sandboxes
without slurm-wlm, no node journals without systemd-journal-remote).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# package -> what the sandbox uses it for
SANDBOX_PACKAGES = {
    "curl": "nodes upload with it",
    "util-linux": "unshare and nsenter, for the emulated nodes",
    "procps": "ps, pgrep and kill on the nodes",
    "systemd-journal-remote": "writes the sandbox nodes' real journals",
    "sudo": "Session Manager Run-As sessions get root through sudo -n",
    "slurm-wlm": "real Slurm daemons in Slurm sandboxes",
    "munge": "Slurm's authentication",
    "openssh-server": "one sshd per sandbox node (the SSH transport)",
    "openssh-client": "ssh, through the jump host",
}


def missing(packages: dict[str, str]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        return list(packages)
    listed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *packages],
                            capture_output=True, text=True).stdout
    present = {line.split()[0] for line in listed.splitlines() if line.endswith("ok installed")}
    return [package for package in packages if package not in present]


def install_command(packages: list[str]) -> str:
    return "sudo apt-get install -y --no-install-recommends " + " ".join(packages)


def on_debian() -> bool:
    """Debian, Ubuntu, or a distribution like them (os-release's ID and ID_LIKE)."""
    try:
        with open("/etc/os-release", encoding="utf-8") as release:
            fields = dict(line.split("=", 1) for line in release.read().splitlines() if "=" in line)
    except OSError:
        return False
    names = {fields.get("ID", "").strip('"'), *fields.get("ID_LIKE", "").strip('"').split()}
    return bool(names & {"debian", "ubuntu"})


def ensure(packages: dict[str, str], who: str) -> list[str]:
    """Installs what is missing where it can (root on Debian or Ubuntu); returns what is still missing."""
    absent = missing(packages)
    if absent and os.geteuid() == 0 and on_debian() and shutil.which("apt-get"):
        print(f"{who}: installing {' '.join(absent)} (apt-get)", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *absent], check=True, env=env)
        absent = missing(packages)
    if absent:
        print(f"{who}: missing {' '.join(absent)}; install them with: {install_command(absent)}", file=sys.stderr,
              flush=True)
    return absent
