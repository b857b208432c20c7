"""The SSH transport's parts that need no sshd: node commands (run by the real sh here), the env file,
the jump host, host-key policies, how connection failures become outcomes, and its settings."""

from __future__ import annotations

import errno
import os
import shlex
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from collectors.errors import UsageError
from collectors.sandbox.sshd import new_key_pair, write_private_key
from collectors.settings import Session, Settings, Ssh
from collectors.transports.base import (
    SESSION_START_FAILED, SESSION_THROTTLED, SESSION_TIMEOUT, SESSION_UNREACHABLE)
from collectors.transports.ssh import ssh_transport
from collectors.transports.ssh.failures import connect_failure, proxy_failure
from collectors.transports.ssh.gateway import EndingProxyCommand, resolve_gateway, split_user_host_port
from collectors.transports.ssh.hostkeys import AcceptNewPolicy, UnknownHostKey, host_key_policy, known_hosts_files
from collectors.transports.ssh.options import SshOptions
from collectors.transports.ssh.session import ATTACHED_S3, ATTACHED_SFTP, DETACHED_S3, PREPARE, env_file, node_command

CLUSTER = {"id": "abc123", "name": "hp", "type": "slurm"}
NODES = [
    {"instance_id": "i-0aaa", "group": "worker-group-1", "hostname": "ip-10-1-0-5", "ip": "10.1.0.5",
     "hyperpod_status": "Running"},
    {"instance_id": "i-0bbb", "group": "controller-machine", "hostname": "ip-10-1-0-9", "ip": "10.1.0.9",
     "hyperpod_status": "Running"},
    {"instance_id": "i-0ccc", "group": "controller-machine", "hostname": "ip-10-1-0-8", "ip": "10.1.0.8",
     "hyperpod_status": "Pending"},
]


def run_body(body: str, directory: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """A node command, run by this machine's sh exactly as the node runs it."""
    return subprocess.run(node_command(body, str(directory), sudo=False), shell=True, capture_output=True,
                          text=True, timeout=timeout)


def work_dir(tmp_path: Path, variables: dict[str, str]) -> Path:
    directory = tmp_path / "hpc-run.test"
    directory.mkdir()
    (directory / "env").write_bytes(env_file(variables))
    return directory


def script_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "served" / "collector_script.sh"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


# -- the env file --------------------------------------------------------------------------------

def test_the_env_file_gives_the_node_every_value_exactly(tmp_path):
    values = {"PLAIN": "worker-group-1", "QUOTES": "it's \"quoted\"", "SHELL_TEXT": "$HOME `id` $(id) \\n",
              "LINES": "one\ntwo", "UNICODE": "nœud", "URL": "https://b.s3/k?X-Amz-Signature=ab%2Fc&x=1"}
    env = tmp_path / "env"
    env.write_bytes(env_file(values))
    printed = subprocess.run(["sh", "-c", '. "$1"; for n in PLAIN QUOTES SHELL_TEXT LINES UNICODE URL; do '
                              'eval "printf \'%s\\0\' \\"\\$$n\\""; done', "sh", str(env)],
                             capture_output=True, timeout=10).stdout.decode()
    assert printed.split("\0")[:-1] == list(values.values())


def test_the_env_file_refuses_a_name_the_shell_would_run(tmp_path):
    with pytest.raises(ValueError, match="not an environment variable name"):
        env_file({"X=1; rm -rf /tmp/x; Y": "v"})


def test_prepare_writes_the_env_from_stdin_into_a_private_folder():
    content = env_file({"HPC_UPLOAD_URL": "https://secret.example/?Signature=s3cr3t"})
    result = subprocess.run(["sh", "-c", PREPARE], input=content, capture_output=True, timeout=10)
    directory = Path(result.stdout.decode().split()[1])
    try:
        assert result.returncode == 0 and result.stdout.decode() == f"HPC_DIR {directory}\n"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "env").stat().st_mode) == 0o600
        assert (directory / "env").read_bytes() == content
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=True)


# -- node commands -----------------------------------------------------------------------------

def test_node_command_uses_sudo_only_for_another_user_than_root():
    assert node_command("echo $1", "/tmp/hpc-run.ab", sudo=False) == "sh -c 'echo $1' hpc-collector /tmp/hpc-run.ab"
    assert shlex.split(node_command("echo $1", "/tmp/hpc-run.ab", sudo=True))[:4] == ["sudo", "-n", "sh", "-c"]


def test_attached_fetches_the_script_and_runs_it_with_the_env_whose_file_is_gone(tmp_path):
    # The env file holds the presigned URLs: read once, then removed before the script (and any item
    # of it) runs. The script is told its launch folder, which it removes when it ends (bash/collect.sh).
    script = script_file(tmp_path, 'printf "%s\\n" "$GREETING"; [ -e "$HPC_LAUNCH_DIR/env" ] || echo gone; exit 3\n')
    directory = work_dir(tmp_path, {"HPC_SCRIPT_URL": f"file://{script}", "GREETING": "hi there"})
    result = run_body(ATTACHED_S3, directory)
    assert (result.returncode, result.stdout) == (3, "hi there\ngone\n")
    assert sorted(p.name for p in directory.iterdir()) == ["collector_script.sh"]


def test_attached_says_91_when_the_script_cannot_be_fetched(tmp_path):
    directory = work_dir(tmp_path, {"HPC_SCRIPT_URL": f"file://{tmp_path}/missing.sh"})
    result = run_body(ATTACHED_S3, directory)
    assert result.returncode == 91 and not directory.exists()


def test_detached_launches_a_script_that_outlives_the_command(tmp_path):
    marker = tmp_path / "finished"
    script = script_file(tmp_path, f'sleep 1.5; touch {marker}; rm -rf "$HPC_LAUNCH_DIR"\n')
    directory = work_dir(tmp_path, {"HPC_SCRIPT_URL": f"file://{script}"})
    result = run_body(DETACHED_S3, directory)
    assert result.returncode == 0 and result.stdout.startswith("HPC_LAUNCH pid=")
    pid = int(result.stdout.split("=")[1])
    while os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.1)
    assert marker.exists() and not directory.exists()


def test_detached_reports_a_script_that_exits_at_once_with_its_last_words(tmp_path):
    script = script_file(tmp_path, "echo 'bad input: INSTANCE_ID is not set' >&2; exit 2\n")
    directory = work_dir(tmp_path, {"HPC_SCRIPT_URL": f"file://{script}"})
    result = run_body(DETACHED_S3, directory)
    assert result.stdout.splitlines()[-2:] == ["bad input: INSTANCE_ID is not set", "HPC_LAUNCH exited=2"]


def test_detached_reports_a_failed_fetch(tmp_path):
    directory = work_dir(tmp_path, {"HPC_SCRIPT_URL": f"file://{tmp_path}/missing.sh"})
    assert run_body(DETACHED_S3, directory).stdout.strip() == "HPC_LAUNCH fetch_failed"


def test_sftp_mode_runs_the_pushed_script_and_keeps_the_folder_for_the_pull(tmp_path):
    directory = work_dir(tmp_path, {"INSTANCE_ID": "i-0aaa"})
    (directory / "collector_script.sh").write_text('mkdir -p "$HPC_KEEP_DIR"; echo data >"$HPC_KEEP_DIR/t.tar.gz"; '
                                                   'echo "kept for $INSTANCE_ID"; exit 3\n')
    result = run_body(ATTACHED_SFTP, directory)
    assert (result.returncode, result.stdout) == (3, "kept for i-0aaa\n")
    assert (directory / "keep" / "t.tar.gz").read_text() == "data\n"


# -- the jump host -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("head", (None, "head", None)),
    ("ubuntu@head", ("ubuntu", "head", None)),
    ("ubuntu@10.0.0.1:2222", ("ubuntu", "10.0.0.1", 2222)),
    ("fe80::1", (None, "fe80::1", None)),
])
def test_gateway_text_is_user_host_and_port(text, parsed):
    assert split_user_host_port(text) == parsed


@pytest.mark.parametrize("text", ["head:ssh", "head:70000", "ubuntu@"])
def test_a_bad_gateway_is_one_clear_error(text):
    with pytest.raises(UsageError, match="--gateway"):
        split_user_host_port(text)


def test_controller_is_the_first_running_node_of_a_controller_group():
    gateway = resolve_gateway("ubuntu@controller", "ssh", NODES, CLUSTER, "us-west-2", None)
    assert (gateway.user, gateway.host, gateway.port, gateway.proxy_command) == ("ubuntu", "10.1.0.9", None, None)


def test_a_node_named_as_gateway_is_reached_at_its_address():
    assert resolve_gateway("ip-10-1-0-5:2200", "ssh", NODES, CLUSTER, "r", None).host == "10.1.0.5"
    assert resolve_gateway("i-0aaa", "ssh", NODES, CLUSTER, "r", None).host == "10.1.0.5"
    assert resolve_gateway("head.example.com", "ssh", NODES, CLUSTER, "r", None).host == "head.example.com"
    assert resolve_gateway(None, "ssh", NODES, CLUSTER, "r", None) is None


def test_a_gateway_reached_by_ssm_gets_an_ssh_session_to_its_hyperpod_target():
    gateway = resolve_gateway("controller", "ssm", NODES, CLUSTER, "us-west-2", "ops")
    assert shlex.split(gateway.proxy_command) == [
        "aws", "ssm", "start-session", "--target", "sagemaker-cluster:abc123_controller-machine-i-0bbb",
        "--document-name", "AWS-StartSSHSession", "--parameters", "portNumber=22", "--region", "us-west-2",
        "--profile", "ops"]
    on_2222 = resolve_gateway("controller", "ssm", NODES, CLUSTER, "us-west-2", None, default_port=2222)
    assert "portNumber=2222" in shlex.split(on_2222.proxy_command)


@pytest.mark.parametrize("spec, via, message", [
    ("head.example.com", "ssm", "needs a gateway that is a node"),
    (None, "ssm", "needs --gateway"),
])
def test_ssm_needs_a_gateway_that_is_a_cluster_node(spec, via, message):
    with pytest.raises(UsageError, match=message):
        resolve_gateway(spec, via, NODES, CLUSTER, "r", None)


def test_controller_without_a_controller_group_says_what_to_do():
    with pytest.raises(UsageError, match="user@head-node"):
        resolve_gateway("controller", "ssh", NODES[:1], CLUSTER, "r", None)


# -- host keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("given, ssh_config, policy", [
    ("off", {"stricthostkeychecking": "yes"}, "off"),
    (None, {"stricthostkeychecking": "accept-new"}, "accept-new"),
    (None, {"stricthostkeychecking": "no"}, "off"),
    (None, {"stricthostkeychecking": "ask"}, "strict"),
    (None, {}, "strict"),
])
def test_the_policy_comes_from_the_setting_then_the_ssh_config(given, ssh_config, policy):
    assert host_key_policy(SshOptions(policy=given), ssh_config) == policy


def test_known_hosts_files_come_from_the_setting_or_the_ssh_config():
    given = SshOptions(known_hosts_file="/k/hosts")
    assert known_hosts_files(given, {"userknownhostsfile": "/a"}) == [Path("/k/hosts")]
    assert known_hosts_files(SshOptions(), {"userknownhostsfile": "/a /b"}) == [
        Path("/a"), Path("/b"), Path("/etc/ssh/ssh_known_hosts")]
    assert known_hosts_files(SshOptions(), {})[0] == Path("~/.ssh/known_hosts").expanduser()


def test_accept_new_writes_the_key_where_it_is_found_next_time(tmp_path):
    key = paramiko.RSAKey.generate(1024)
    path = tmp_path / "ssh" / "known_hosts"
    client = paramiko.SSHClient()
    AcceptNewPolicy(path, threading.Lock()).missing_host_key(client, "[10.1.0.5]:2222", key)
    assert client.get_host_keys().lookup("[10.1.0.5]:2222")["ssh-rsa"] == key
    reloaded = paramiko.HostKeys(str(path))
    assert reloaded.lookup("[10.1.0.5]:2222")["ssh-rsa"] == key


# -- outcomes ----------------------------------------------------------------------------------

def test_connection_failures_say_which_kind_of_unreachable():
    offered, known = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    where = "root@10.1.0.5:22"
    cases = {
        "connection refused": NoValidConnectionsError({("10.1.0.5", 22): OSError(errno.ECONNREFUSED, "refused")}),
        "no route to host": OSError(errno.EHOSTUNREACH, "No route to host"),
        "cannot resolve": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        f"offered {offered.fingerprint} but known_hosts has {known.fingerprint}":
            paramiko.BadHostKeyException("10.1.0.5", offered, known),
        f"{offered.fingerprint} is not in known_hosts": UnknownHostKey("10.1.0.5", offered),
        "authentication failed": paramiko.AuthenticationException("Authentication failed."),
    }
    for words, exc in cases.items():
        result = connect_failure(exc, where, "connect", 60)
        assert (result.kind, result.step) == (SESSION_UNREACHABLE, "connect"), words
        assert result.error.startswith(where) and words in result.error, result.error


def test_a_silent_host_is_a_timeout_at_the_step_and_anything_else_a_failed_start():
    timeout = connect_failure(socket.timeout(), "root@h:22", "gateway", 60)
    assert (timeout.kind, timeout.step) == (SESSION_TIMEOUT, "gateway")
    assert timeout.error == "root@h:22: no answer within 60s"
    other = connect_failure(paramiko.SSHException("Error reading SSH protocol banner"), "root@h:22", "connect", 60)
    assert other.kind == SESSION_START_FAILED and "protocol banner" in other.error


def failing_proxy(message: str) -> EndingProxyCommand:
    proxy = EndingProxyCommand(shlex.join(["sh", "-c", 'printf "\\n%s\\n" "$1" >&2; exit 255', "sh", message]))
    proxy.process.wait(timeout=10)
    return proxy


@pytest.mark.parametrize("said, kind", [
    ("An error occurred (TargetNotConnected) when calling the StartSession operation: i-0bbb is not connected.",
     SESSION_UNREACHABLE),
    ("An error occurred (ThrottlingException) when calling the StartSession operation: Rate exceeded",
     SESSION_THROTTLED),
    ("An error occurred (AccessDeniedException) when calling the StartSession operation: no", SESSION_START_FAILED),
])
def test_an_ssm_proxy_failure_is_judged_by_what_the_aws_cli_said(said, kind):
    result = proxy_failure(failing_proxy(said), EOFError(), "jump host controller")
    assert (result.kind, result.step) == (kind, "gateway")
    assert result.error == f"jump host controller through SSM: {said}"


def test_the_proxy_reports_the_end_of_its_command_instead_of_waiting():
    proxy = EndingProxyCommand("true")
    proxy.settimeout(30)
    assert proxy.recv(64) == b""
    proxy.process.wait(timeout=10)


# -- settings ----------------------------------------------------------------------------------

def test_ssh_settings_are_typed_and_checked():
    settings = Settings.from_config({"transport": "ssh", "ssh": {"port": "2222", "known_hosts": "accept-new"}})
    assert (settings.transport, settings.ssh.port, settings.ssh.known_hosts) == ("ssh", 2222, "accept-new")
    assert Settings.from_config({}).ssh.port is None
    for bad, message in [({"transport": "rsh"}, "one of ssm, ssh"), ({"ssh": {"port": "x"}}, "positive integer"),
                         ({"ssh": {"known_hosts": "yes"}}, "one of strict, accept-new, off"),
                         ({"ssh": {"data_path": "nfs"}}, "one of s3, sftp")]:
        with pytest.raises(UsageError, match=message):
            Settings.from_config(bad)


def test_the_flat_ssh_names_of_before_are_still_read_for_one_release(capsys):
    settings = Settings.from_config({"ssh_port": "2222", "ssh_gateway": "ubuntu@10.1.0.10"})
    assert (settings.ssh.port, settings.ssh.gateway) == (2222, "ubuntu@10.1.0.10")
    assert "hyperpod.ssh_port is now hyperpod.ssh.port" in capsys.readouterr().err
    with pytest.raises(UsageError, match="sets both hyperpod.ssh_port and hyperpod.ssh.port"):
        Settings.from_config({"ssh_port": "22", "ssh": {"port": "2222"}})


def test_options_refuse_a_key_or_config_that_would_fail_every_node(tmp_path):
    private, _ = new_key_pair("test")
    good = tmp_path / "id_ed25519"
    write_private_key(good, private)
    assert SshOptions.from_settings(Settings(ssh=Ssh(key=str(good), port=2222))).key == str(good)
    not_a_key = tmp_path / "known_hosts"
    not_a_key.write_text("host ssh-ed25519 AAAA\n")
    for settings, message in [(Settings(ssh=Ssh(key=str(not_a_key))), "not a usable private key"),
                              (Settings(ssh=Ssh(config=str(tmp_path / "none"))), "is not a file"),
                              (Settings(ssh=Ssh(port=70000)), "1 to 65535")]:
        with pytest.raises(UsageError, match=message):
            SshOptions.from_settings(settings)


def test_tarballs_pulled_back_need_an_attached_session(tmp_path):
    settings = Settings(transport="ssh", ssh=Ssh(data_path="sftp"), session=Session(mode="detached"))
    with pytest.raises(UsageError, match="--session-mode attached"):
        ssh_transport(settings, "r", CLUSTER, NODES, tmp_path / "s.sh", tmp_path, lambda iid, path: None)


def test_run_and_collect_have_every_ssh_flag_with_help():
    from collectors import tasks

    for task in (tasks.run_nodes, tasks.collect):
        arguments = {argument.name: argument for argument in task.get_arguments()}
        for name in ("transport", "gateway", "gateway_via", "ssh_user", "ssh_key", "ssh_port", "ssh_config",
                     "ssh_known_hosts", "ssh_known_hosts_file", "ssh_data_path"):
            assert arguments[name].help, (task.name, name)
        assert not any(len(flag) == 1 for argument in arguments.values() for flag in argument.names), \
            "auto short flags would take -h (help) for an SSH flag"
