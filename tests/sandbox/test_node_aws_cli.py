"""A node's own way to S3: `upload_mode: awscli` with the real AWS CLI and the node role's credentials
from the node's instance metadata (IMDSv2), allowed to write under the cluster's reports prefix and
nowhere else; and the node's curl meeting S3's refusal of SigV2 URLs.

A one-node EKS sandbox; one whole collection through the real `invoke` command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from collectors.sandbox import SandboxSpec
from tests.sandbox.sessions import client

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def one_node(sandbox_factory):
    return sandbox_factory(SandboxSpec.simple(type="eks", nodes=1))


def node_aws(sandbox, node: dict, *args: str) -> subprocess.CompletedProcess:
    """`aws ...` in a node's shell environment, as the node script runs it."""
    return sandbox.node_exec(node["instance_id"], ["aws", *args])


def collect(env: dict, runs: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`invoke collect --upload-mode awscli ...`, and the run's state file."""
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        full_env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "invoke", "collect", "--upload-mode", "awscli", *args],
                            cwd=PROJECT, env=full_env, capture_output=True, text=True, timeout=300)
    return result, json.loads((runs / env["INVOKE_HYPERPOD_CLUSTER"] / "latest" / "state.json").read_text())


def test_a_collection_in_awscli_mode_uploads_each_tarball_with_the_node_role(one_node, tmp_path):
    sandbox, status, env = one_node
    node = status["nodes"][0]
    result, state = collect(env, tmp_path / "inside")
    assert result.returncode == 0, result.stderr
    assert state["nodes"][node["instance_id"]]["status"] == "ok"
    key = f"{state['s3']['run_prefix']}/instances/{node['group']}_{node['instance_id']}.tar.gz"
    assert client(status, "s3").head_object(Bucket=status["bucket"], Key=key)["ContentLength"] > 0
    # Under a prefix the role may not write to, the node's `aws s3 cp` is refused and the node says so;
    # the operator's own writes there (script, preflight) still pass.
    result, state = collect(env, tmp_path / "outside", "--s3-path", f"s3://{status['bucket']}/elsewhere")
    assert result.returncode == 1
    outcome = state["nodes"][node["instance_id"]]
    assert (outcome["status"], outcome["error_kind"]) == ("failed", "upload_failed"), outcome
    assert "the tarball is kept on the node" in outcome["error"]


def test_the_node_role_may_not_write_outside_the_clusters_prefix(one_node):
    sandbox, status, _ = one_node
    node = status["nodes"][0]
    inside = f"s3://{status['bucket']}/hyperpod-issue-reports/{status['cluster']}/probe/hostname"
    written = node_aws(sandbox, node, "s3", "cp", "/etc/hostname", inside)
    assert written.returncode == 0, written.stderr
    outside = node_aws(sandbox, node, "s3", "cp", "/etc/hostname", f"s3://{status['bucket']}/elsewhere/hostname")
    assert outside.returncode == 1 and "(AccessDenied) when calling the PutObject operation" in outside.stderr
    read_back = node_aws(sandbox, node, "s3", "cp", inside, "-")  # the role may write its results, not read them
    assert read_back.returncode == 1 and "Forbidden" in read_back.stderr


def test_the_nodes_aws_finds_its_role_and_no_keys_of_the_hosts_whatever_the_shell(one_node):
    """Only the instance metadata gives the node its credentials, also from an empty environment (an
    SSH session's, sudo's), and never the one at 169.254.169.254."""
    sandbox, status, _ = one_node
    for argv in (["aws", "configure", "list"], ["/usr/bin/env", "-i", "/usr/local/bin/aws", "configure", "list"]):
        where = sandbox.node_exec(status["nodes"][0]["instance_id"], argv)
        assert where.returncode == 0, where.stderr
        assert "iam-role" in where.stdout and "testing" not in where.stdout


def test_a_nodes_curl_is_refused_a_sigv2_url_and_given_a_sigv4_one(one_node):
    sandbox, status, env = one_node
    operator = client(status, "s3")  # SigV4
    operator.put_object(Bucket=status["bucket"], Key="scripts/probe.sh", Body=b"echo probe\n")
    sigv2 = boto3.client("s3", endpoint_url=status["endpoint"], region_name=status["region"],
                         aws_access_key_id="testing", aws_secret_access_key="testing")  # botocore's default
    node = status["nodes"][0]
    for s3, rc, answer in ((sigv2, 22, "The requested URL returned error: 400"), (operator, 0, "echo probe")):
        url = s3.generate_presigned_url("get_object", Params={"Bucket": status["bucket"], "Key": "scripts/probe.sh"})
        fetched = sandbox.node_exec(node["instance_id"], ["curl", "-fsS", "--noproxy", "*", url])
        assert fetched.returncode == rc and answer in fetched.stderr + fetched.stdout, fetched
