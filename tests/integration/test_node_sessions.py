"""Sessions as an account's Session Manager preferences and a flaky network make them, through the real
`invoke collect`: Run-As a user with passwordless sudo, Run-As one without it, a shell profile that
runs before the prompt (the one that broke the earlier tool), and a session that drops mid-script in
attached mode. One sandbox; the preferences are changed at run time, as the console changes them
for the sessions started afterwards.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from tests.conftest import require

PROJECT = Path(__file__).resolve().parents[2]
COLLECTED = {"ok", "ok_with_errors"}
# The real case from the earlier tool's README (reference/upstream.md §3.12): the sandbox has no /fsx, so
# its `cd` fails as on a cluster without FSx homes, and the shell stays sh.
UPSTREAM_PROFILE = "/bin/bash -c 'export HOME=/fsx/$(whoami) && cd ${HOME} && exec /bin/bash'"
# The same pattern where the home exists: the session's shell becomes an interactive bash.
BASH_PROFILE = "/bin/bash -c 'export HOME=/home/$(whoami) && cd ${HOME} && exec /bin/bash'"
# What each profile shows in the session before our first line: its cd failing, or bash's own prompt.
PROFILE_EVIDENCE = {UPSTREAM_PROFILE: "cd: /fsx/root: No such file or directory", BASH_PROFILE: "ssm-user@ip-"}


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    from collectors.sandbox import SandboxSpec

    require(shutil.which("sudo") is not None, "needs sudo on the host (Debian package sudo) for Run-As sessions")
    spec = SandboxSpec.from_scenario({
        "cluster": "hp-sessions", "type": "eks", "os": "ubuntu-22.04",
        "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 1}],
    })
    return sandbox_factory(spec)


@pytest.fixture
def sandbox(cluster):
    """Preferences and faults set by a test are put back afterwards."""
    sandbox, status, _ = cluster
    yield sandbox
    sandbox.set_faults(run_as=None, shell_profile=None)
    sandbox.set_node_faults(status["nodes"][0]["instance_id"], session_drop_after=None, session_drops=None)


def invoke(env: dict, runs: Path, *args: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    full_env.pop("AWS_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def collect(cluster, runs: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    """(the command's result, the node's record, its session transcript)"""
    _, status, env = cluster
    result = invoke(env, runs, "collect", "--no-download", *args)
    latest = runs / status["cluster"] / "latest"
    instance_id = status["nodes"][0]["instance_id"]
    node = json.loads((latest / "state.json").read_text())["nodes"][instance_id]
    return result, node, (latest / "transcripts" / f"{instance_id}.log").read_text()


def uploaded_file(cluster, node: dict, name: str) -> bytes:
    """One file of the node's tarball, as uploaded to the sandbox's S3."""
    _, status, env = cluster
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=status["region"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    body = s3.get_object(Bucket=status["bucket"], Key=node["s3_key"])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/" + name))
        return tar.extractfile(member).read()


@pytest.mark.parametrize("mode", ["detached", "attached"])
def test_run_as_a_user_with_passwordless_sudo_collects_as_root(cluster, sandbox, tmp_path, mode):
    sandbox.set_faults(run_as="ssm-user")
    result, node, transcript = collect(cluster, tmp_path, "--session-mode", mode, "--command", "id -un")
    assert result.returncode == 0, result.stderr[-3000:]
    assert node["status"] in COLLECTED and node["bytes"] > 0, node
    assert re.search(r"^\$ $", transcript, re.MULTILINE), "the session's own shell was not ssm-user's ($)"
    assert uploaded_file(cluster, node, "command_01_id_-un.txt") == b"root\n"  # the script itself ran as root


def test_run_as_a_user_without_sudo_says_root_could_not_be_had(cluster, sandbox, tmp_path):
    sandbox.set_faults(run_as="researcher")
    result, node, _ = collect(cluster, tmp_path)
    assert result.returncode == 1
    assert node["status"] == "failed" and node["attempts"] == 1, node  # not retried: it would fail the same way
    assert "runs as researcher (Session Manager Run-As), not root, and `sudo -n` cannot make it root" in node["error"]


def test_run_as_a_user_the_node_lacks_fails_the_session_as_the_agent_does(cluster, sandbox, tmp_path):
    sandbox.set_faults(run_as="nobody-here")
    result, node, _ = collect(cluster, tmp_path)
    assert result.returncode == 1 and node["status"] == "failed"
    # (node["error"] quotes the session's last line, which is the echo of our own first line there.)
    assert "Unable to start command: failed to start pty since RunAs user nobody-here does not exist" in node["output"]


@pytest.mark.parametrize("profile, run_as", [(UPSTREAM_PROFILE, None), (BASH_PROFILE, "ssm-user")],
                         ids=["upstream-profile-as-root", "bash-profile-as-ssm-user"])
def test_a_shell_profile_before_the_prompt_does_not_stop_the_collection(cluster, sandbox, tmp_path, profile, run_as):
    sandbox.set_faults(shell_profile=profile, run_as=run_as)
    result, node, transcript = collect(cluster, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert node["status"] in COLLECTED and node["bytes"] > 0, node
    assert profile in transcript  # typed into the shell before our first line, as SSM Agent does
    assert PROFILE_EVIDENCE[profile] in transcript


def test_an_attached_session_that_drops_mid_script_loses_no_node(cluster, sandbox, tmp_path):
    """The first session drops 4 s in, while the script still runs (an extra 8 s item); the runner
    tries again and the node is collected."""
    _, status, _ = cluster
    sandbox.set_node_faults(status["nodes"][0]["instance_id"], session_drop_after=4, session_drops=1)
    result, node, transcript = collect(cluster, tmp_path, "--session-mode", "attached", "--command", "sleep 8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert node["status"] in COLLECTED and node["bytes"] > 0, node
    assert node["attempts"] == 2, node
    assert transcript.count("Starting session with SessionId") == 2
