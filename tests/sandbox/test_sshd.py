"""A real sshd per sandbox node, reached with the real ssh client and with Fabric.

Each node's sshd listens on the node's own 127.10.x.y address and runs inside the node, so
`hostname` over SSH is the node's. Host keys are the nodes' own, each as the status names it, so a
known_hosts built from the status accepts them. How a client treats a wrong or unknown host key is
OpenSSH's and paramiko's business; the SSH transport's handling of both is tested in
tests/integration/test_ssh_transport.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from collectors.sandbox import SandboxSpec
from collectors.sandbox.daemons import read_records
from collectors.sandbox.nodes import is_same_process
from collectors.sandbox.sshd import stop_node_sshd
from tests.conftest import require_tool


@pytest.fixture(scope="module")
def ssh_cluster(sandbox_factory):
    """Four Slurm nodes, each with its own sshd. The last one is the node whose sshd a test stops."""
    require_tool("sshd", "openssh-server")
    require_tool("ssh", "openssh-client")
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=4))
    assert status["ssh"]["running"], status["ssh"]
    return sandbox, status, env


def reachable_nodes(status: dict) -> list[dict]:
    return status["nodes"][:-1]


def ssh(status: dict, address: str, command: str) -> subprocess.CompletedProcess:
    """The real OpenSSH client, with nothing from ~/.ssh: only the sandbox's key and known_hosts."""
    options = {
        "User": status["ssh"]["user"],
        "Port": str(status["ssh"]["port"]),
        "IdentityFile": status["ssh"]["key"],
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": status["ssh"]["known_hosts"],
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "BatchMode": "yes",
        "ConnectTimeout": "10",
    }
    argv = ["ssh", "-F", "/dev/null"] + [f"-o{key}={value}" for key, value in options.items()]
    return subprocess.run(argv + [address, command], capture_output=True, text=True, timeout=30)


def fabric_connection(status: dict, node: dict):
    from fabric import Connection

    connect_kwargs = {"key_filename": status["ssh"]["key"], "look_for_keys": False, "allow_agent": False}
    return Connection(node["ip"], user=status["ssh"]["user"], port=status["ssh"]["port"],
                      connect_kwargs=connect_kwargs, connect_timeout=10)


def test_ssh_reaches_each_node_by_its_own_address(ssh_cluster):
    _, status, _ = ssh_cluster
    for node in reachable_nodes(status):
        assert status["ssh"]["nodes"][node["instance_id"]]["address"] == node["ip"]
        result = ssh(status, node["ip"], "hostname; id -un; echo $HOME")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [node["hostname"], "root", "/root"]


def test_the_ssh_config_names_nodes_by_hostname_and_instance_id(ssh_cluster):
    _, status, _ = ssh_cluster
    node = status["nodes"][0]
    for name in (node["hostname"], node["instance_id"]):
        result = subprocess.run(["ssh", "-F", status["ssh"]["config"], name, "hostname"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.strip() == node["hostname"], result.stderr


def test_fabric_reaches_every_node_and_its_real_slurm(ssh_cluster):
    from fabric import ThreadingGroup

    _, status, _ = ssh_cluster
    nodes = reachable_nodes(status)
    connect_kwargs = {"key_filename": status["ssh"]["key"], "look_for_keys": False, "allow_agent": False}
    group = ThreadingGroup(*[f"root@{node['ip']}:{status['ssh']['port']}" for node in nodes],
                           connect_kwargs=connect_kwargs, connect_timeout=10)
    try:
        results = group.run("hostname; sinfo --noheader --Node --format=%N | wc -l", hide=True, in_stream=False)
    finally:
        group.close()
    by_address = {connection.host: result.stdout.split() for connection, result in results.items()}
    assert by_address == {node["ip"]: [node["hostname"], str(len(status["nodes"]))] for node in nodes}


def test_fabric_copies_files_over_sftp(ssh_cluster, tmp_path):
    _, status, _ = ssh_cluster
    node = status["nodes"][1]
    local = tmp_path / "payload.txt"
    local.write_text("from the host\n")
    with fabric_connection(status, node) as connection:
        connection.put(str(local), "/tmp/payload.txt")
        assert connection.run("cat /tmp/payload.txt; hostname", hide=True, in_stream=False).stdout.split("\n")[:2] == [
            "from the host", node["hostname"]]
        connection.get("/opt/slurm/etc/slurm.conf", str(tmp_path / "slurm.conf"))
    assert f"NodeName={node['hostname']} " in (tmp_path / "slurm.conf").read_text()


def test_each_node_has_its_own_host_key_as_the_status_says(ssh_cluster):
    _, status, _ = ssh_cluster
    nodes = reachable_nodes(status)
    scanned = {}
    for node in nodes:
        result = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(status["ssh"]["port"]), node["ip"]],
                                capture_output=True, text=True, timeout=30)
        key_type, key = result.stdout.split()[1:3]
        scanned[node["instance_id"]] = f"{key_type} {key}"
        fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=result.stdout, capture_output=True,
                                     text=True).stdout.split()[1]
        assert fingerprint == status["ssh"]["nodes"][node["instance_id"]]["fingerprint"]
    assert scanned == {node["instance_id"]: status["ssh"]["nodes"][node["instance_id"]]["host_key"] for node in nodes}
    assert len(set(scanned.values())) == len(nodes)


def test_a_node_whose_sshd_is_stopped_refuses_connections(ssh_cluster):
    sandbox, status, _ = ssh_cluster
    node = status["nodes"][-1]
    assert ssh(status, node["ip"], "hostname").stdout.strip() == node["hostname"]
    assert stop_node_sshd(sandbox.root, node["instance_id"]) == []
    result = ssh(status, node["ip"], "hostname")
    assert result.returncode == 255 and "Connection refused" in result.stderr
    # The other nodes still answer.
    assert ssh(status, status["nodes"][0]["ip"], "hostname").returncode == 0


def test_the_nodes_root_is_their_own_and_the_hosts_is_untouched(ssh_cluster):
    _, status, _ = ssh_cluster
    node = status["nodes"][0]
    listing = ssh(status, node["ip"], "ls -A /root; cat /root/.ssh/authorized_keys").stdout
    assert listing.split()[:3] == [".bashrc", ".profile", ".ssh"]
    assert Path(status["ssh"]["key"] + ".pub").read_text().split()[1] in listing
    assert not Path("/root/.ssh/authorized_keys").exists() or \
        Path(status["ssh"]["key"] + ".pub").read_text().split()[1] not in Path("/root/.ssh/authorized_keys").read_text()


def test_down_stops_every_sshd_by_pid(sandbox_factory):
    require_tool("sshd", "openssh-server")
    sandbox, status, _ = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=2))
    records = read_records(sandbox.root / "ssh" / "processes.jsonl")
    assert len(records) == 2 and all(is_same_process(*record["daemon"]) for record in records)
    sandbox.down()
    assert not any(is_same_process(*record[key]) for record in records for key in ("daemon", "parent"))
    for node in status["nodes"]:
        result = subprocess.run(["ssh-keyscan", "-T", "2", "-p", str(status["ssh"]["port"]), node["ip"]],
                                capture_output=True, text=True, timeout=30)
        assert result.stdout == ""
