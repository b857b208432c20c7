"""Every sandbox fault (docs/scenarios.md), shown to a real client the way the real service shows it.

One EKS sandbox for the module. One fault is armed by its scenario (a node whose SSM agent is gone);
the others are armed and disarmed at run time through Sandbox.set_faults / set_node_faults, the
control endpoint POST /_emu/faults.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pexpect
import pytest

from collectors.errors import SandboxError
from collectors.sandbox import SandboxSpec
from tests.conftest import require_tool
from tests.sandbox.sessions import (
    EXIT_BANNER,
    client,
    end_session,
    run_in_session,
    ssm_target,
    start_session,
)

SCENARIO = {
    "cluster": "hp-faults",
    "type": "eks",
    "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 3}],
    "nodes": {"worker-group-1/2": {"faults": {"target_not_connected": True}}},
}


@pytest.fixture(scope="module")
def faulty(sandbox_factory):
    sandbox, status, env = sandbox_factory(SandboxSpec.from_scenario(SCENARIO))
    return sandbox, status, env


@pytest.fixture
def node(faulty):
    """The first node, with every fault a test arms on it taken off again afterwards."""
    sandbox, status, _ = faulty
    first = status["nodes"][0]
    yield first
    sandbox.set_node_faults(first["instance_id"], session_drop_after=None, slow=None, hang=None, tmp_free_mb=None)
    sandbox.set_faults(start_session_rate=None, idle_timeout=None, line_limit=None, s3_put_failures=None)


def ssm_without_retries(env: dict):
    """A plain boto3 client that shows the API's answer as it is: no retries, no sandbox helpers."""
    config = botocore.config.Config(retries={"total_max_attempts": 1})
    return boto3.client("ssm", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing", config=config)


def aws_cli(env: dict, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["aws", *args], env=dict(os.environ, **env, **extra_env), capture_output=True, text=True,
                          timeout=60)


def test_start_session_above_the_rate_limit_is_throttled(faulty, node):
    sandbox, status, env = faulty
    target = ssm_target(status, node)
    sandbox.set_faults(start_session_rate=0.1)  # one session every 10 s
    ssm = ssm_without_retries(env)
    started = ssm.start_session(Target=target)
    with pytest.raises(botocore.exceptions.ClientError) as throttled:
        ssm.start_session(Target=target)
    error = throttled.value.response
    assert error["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    # The AWS CLI shows it the same way (retries off, as AWS_MAX_ATTEMPTS=1 makes them).
    cli = aws_cli(env, "ssm", "start-session", "--target", target, AWS_MAX_ATTEMPTS="1")
    assert cli.returncode == 255
    assert "An error occurred (ThrottlingException) when calling the StartSession operation" in cli.stderr
    assert "Rate exceeded" in cli.stderr
    ssm.terminate_session(SessionId=started["SessionId"])


def test_a_running_node_whose_agent_is_gone_is_not_connected(faulty, node):
    sandbox, status, env = faulty
    gone = status["nodes"][2]  # the scenario armed it
    assert gone["scenario"]["faults"]["target_not_connected"] is True
    assert {n["instance_id"]: n["status"] for n in sandbox.status()["nodes"]}[gone["instance_id"]] == "Running"
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        ssm_without_retries(env).start_session(Target=ssm_target(status, gone))
    assert refused.value.response["Error"]["Code"] == "TargetNotConnected"
    cli = aws_cli(env, "ssm", "start-session", "--target", ssm_target(status, gone))
    assert cli.returncode == 255 and "(TargetNotConnected)" in cli.stderr
    assert f"{ssm_target(status, gone)} is not connected." in cli.stderr


def test_a_session_drops_after_n_seconds_and_detached_work_carries_on(faulty, node):
    sandbox, status, env = faulty
    sandbox.set_node_faults(node["instance_id"], session_drop_after=1)
    session = start_session(env, ssm_target(status, node))
    session.sendline("nohup sh -c 'sleep 0.5; hostname > /tmp/survivor' >/dev/null 2>&1 &")
    session.sendline("sleep 30; echo never-printed")
    session.expect(EXIT_BANNER, timeout=15)
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0  # the AWS CLI exits as it does when the agent closes the channel
    assert "never-printed" not in session.before
    time.sleep(0.5)
    survivor = sandbox.node_exec(node["instance_id"], ["cat", "/tmp/survivor"])
    assert survivor.stdout.strip() == node["hostname"]


def test_a_session_without_input_times_out_even_while_output_flows(faulty, node):
    sandbox, status, env = faulty
    sandbox.set_faults(idle_timeout=1)
    session = start_session(env, ssm_target(status, node))
    session.sendline("for i in 1 2 3 4 5 6 7 8 9 10; do echo tick$i; sleep 0.3; done")
    session.expect(r"SessionId: (\S+) : Your session timed out due to inactivity and has been terminated\.",
                   timeout=15)
    printed = session.before
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0
    assert "tick1" in printed and "tick10" not in printed  # output alone does not keep a session alive


def bytes_kept_of_a_typed_line(session: pexpect.spawn, length: int) -> int:
    session.sendline("cat > /tmp/typed")
    session.send("x" * length + "\n")
    session.sendcontrol("d")
    session.expect(r"[#$] $")
    return int(run_in_session(session, "wc -c < /tmp/typed").split()[-1])


def test_typed_lines_are_truncated_as_a_terminal_truncates_them(faulty, node):
    sandbox, status, env = faulty
    session = start_session(env, ssm_target(status, node))
    assert bytes_kept_of_a_typed_line(session, 5000) == 4096  # real SSM: 4095 bytes and the newline
    assert end_session(session) == 0
    sandbox.set_faults(line_limit=100)  # like SSM preferences, for the sessions started afterwards
    session = start_session(env, ssm_target(status, node))
    assert bytes_kept_of_a_typed_line(session, 150) == 100
    assert bytes_kept_of_a_typed_line(session, 50) == 51
    assert end_session(session) == 0


def test_every_command_on_a_slow_node_misses_a_deadline_it_meets_once_the_fault_is_off(faulty, node):
    sandbox, status, env = faulty
    sandbox.set_node_faults(node["instance_id"], slow=3)
    session = start_session(env, ssm_target(status, node))
    assert run_in_session(session, "command -v hostname").split()[-1] == "/usr/local/sbin/hostname"
    # /usr/bin/timeout by its path, so that only the command it runs is slowed: killed at its deadline,
    # as an item of the node script is when its node is this slow.
    deadline = "/usr/bin/timeout 1 hostname; echo rc=$?"
    assert run_in_session(session, deadline).split()[-1] == "rc=124"
    sandbox.set_node_faults(node["instance_id"], slow=None)
    assert run_in_session(session, deadline).split()[-2:] == [node["hostname"], "rc=0"]
    assert end_session(session) == 0


def test_a_hung_command_never_returns_and_shrugs_off_sigterm(faulty, node):
    sandbox, status, env = faulty
    sandbox.set_node_faults(node["instance_id"], hang=["nvidia-smi"])
    session = start_session(env, ssm_target(status, node))
    # `timeout` sends TERM, which the hung command ignores, then KILL half a second later: 137.
    assert run_in_session(session, "timeout -k 0.5 0.5 nvidia-smi -L; echo rc=$?").split()[-1] == "rc=137"
    sandbox.set_node_faults(node["instance_id"], hang=None)
    assert "NVIDIA A10G" in run_in_session(session, "nvidia-smi -L")
    assert end_session(session) == 0


def test_a_nearly_full_tmp_refuses_big_writes(faulty, node):
    sandbox, status, env = faulty
    sandbox.set_node_faults(node["instance_id"], tmp_free_mb=1)
    session = start_session(env, ssm_target(status, node))
    available_kb = run_in_session(session, "df -Pk /tmp | tail -1").split()[3]
    assert 900 <= int(available_kb) <= 1024
    written = run_in_session(session, "head -c 2097152 /dev/zero > /tmp/big; echo rc=$?")
    assert "No space left on device" in written and written.split()[-1] == "rc=1"
    sandbox.set_node_faults(node["instance_id"], tmp_free_mb=None)
    assert run_in_session(session, "head -c 2097152 /dev/zero > /tmp/big; echo rc=$?").split()[-1] == "rc=0"
    assert end_session(session) == 0


def curl_put(url: str, body: Path) -> tuple[str, str]:
    """HTTP status and body of a presigned PUT made with curl, as the node script makes it."""
    result = subprocess.run(["curl", "-sS", "--noproxy", "*", "-w", "\n%{http_code}", "-T", str(body), url],
                            capture_output=True, text=True, timeout=30, check=True)
    answer, _, code = result.stdout.rpartition("\n")
    return code, answer


def test_s3_uploads_to_chosen_keys_fail_then_succeed_or_always_fail(faulty, node, tmp_path):
    require_tool("curl", "curl")
    sandbox, status, _ = faulty
    sandbox.set_faults(s3_put_failures=[
        {"key_contains": "instances/flaky", "status": 500, "times": 2},
        {"key_contains": "instances/broken", "status": 503, "times": "always"},
    ])
    s3 = client(status, "s3")
    body = tmp_path / "node.tar.gz"
    body.write_bytes(os.urandom(2048))
    urls = {name: s3.generate_presigned_url("put_object", Params={"Bucket": status["bucket"], "Key": f"instances/{name}"})
            for name in ("flaky", "broken", "fine")}
    for _ in range(2):
        code, answer = curl_put(urls["flaky"], body)
        assert code == "500" and "<Code>InternalError</Code>" in answer
    assert curl_put(urls["flaky"], body)[0] == "200"
    for _ in range(3):
        code, answer = curl_put(urls["broken"], body)
        assert code == "503" and "<Code>SlowDown</Code>" in answer
    assert curl_put(urls["fine"], body)[0] == "200"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=status["bucket"], Prefix="instances/")["Contents"]}
    assert keys == {"instances/flaky", "instances/fine"}


def test_a_fault_change_is_checked_like_a_scenario(faulty, node):
    sandbox, _, _ = faulty
    with pytest.raises(SandboxError, match="unknown key 'slowness'"):
        sandbox.set_node_faults(node["instance_id"], slowness=3)
    with pytest.raises(SandboxError, match=r"faults.idle_timeout: must be a number above 0"):
        sandbox.set_faults(idle_timeout=-1)
    assert sandbox.faults()["faults"]["idle_timeout"] == 1200
