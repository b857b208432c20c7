"""The whole job against the sandbox, through the real `invoke` command line.

Real parts only: moto over HTTP, the real `aws ssm start-session`, the stand-in plugin into real
namespaced nodes running real bash, real curl uploads to presigned URLs.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import boto3
import pytest

PROJECT = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def cluster(sandbox_factory):
    from collectors.sandbox import SandboxSpec

    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=4))
    return sandbox, status, env


def invoke(env: dict, runs: Path, *args: str, stdin: str | None = None, timeout: float = 240):
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def s3_client(env: dict, region: str | None = None):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=region or env["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def latest_state(runs: Path, cluster_name: str) -> dict:
    return json.loads((runs / cluster_name / "latest" / "state.json").read_text())


def tar_members(path: Path) -> dict[str, bytes]:
    """File name (below the one top folder) → content."""
    with tarfile.open(path) as tar:
        tops = {member.name.split("/", 1)[0] for member in tar.getmembers()}
        assert len(tops) == 1, tops
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and "/" in m.name}


def test_collect_gathers_every_node_into_s3_and_results(cluster, tmp_path):
    sandbox, status, env = cluster
    result = invoke(env, tmp_path, "collect")
    assert result.returncode == 0, result.stderr
    state = latest_state(tmp_path, status["cluster"])
    assert {n["status"] for n in state["nodes"].values()} == {"ok"}
    s3 = s3_client(env)
    prefix = state["s3"]["run_prefix"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=status["bucket"], Prefix=prefix)["Contents"]}
    assert f"{prefix}/collector_script.sh" in keys and f"{prefix}/summary.json" in keys
    for node in status["nodes"]:
        name = f"{node['group']}_{node['instance_id']}.tar.gz"
        assert f"{prefix}/instances/{name}" in keys
        files = tar_members(tmp_path / status["cluster"] / "latest" / "results" / name)
        # Taken from that node: its own hostname, ids and files, not the host's.
        assert files["hostname.txt"].decode().strip() == node["hostname"]
        assert files["instance_id.txt"].decode().strip() == node["instance_id"]
        assert files["instance_group.txt"].decode().strip() == node["group"]
        assert files["cluster_type.txt"].decode().strip() == "eks"
        assert node["instance_id"] in files["resource_config.json"].decode()
        assert any(name.startswith("cluster_logs/") for name in files)
        assert b"Filesystem" in files["disk_usage.txt"]
        assert b"kubelet.service" in files["systemd_services.txt"]
        assert "timestamp.txt" in files and "manifest.tsv" in files
    summary = json.loads(s3.get_object(Bucket=status["bucket"], Key=f"{prefix}/summary.json")["Body"].read())
    assert (summary["total_nodes"], summary["successful"], summary["failed"]) == (4, 4, 0)
    assert f"{prefix}/kubectl_resources.tar.gz" in keys and summary["stages"]["kubectl"] == "done"


def test_stages_one_by_one_match_collect_and_rerun_changes_nothing(cluster, tmp_path):
    sandbox, status, env = cluster
    for stage in ("discover", "render", "upload", "run", "summarize", "download"):
        result = invoke(env, tmp_path, stage)
        assert result.returncode == 0, (stage, result.stderr)
    state = latest_state(tmp_path, status["cluster"])
    assert {n["status"] for n in state["nodes"].values()} == {"ok"}
    results = tmp_path / status["cluster"] / "latest" / "results"
    staged = {p.name: sorted(tar_members(p)) for p in results.glob("*.tar.gz")}
    assert len(staged) == 4

    collected = invoke(env, tmp_path / "collect", "collect")
    assert collected.returncode == 0, collected.stderr
    results_collect = tmp_path / "collect" / status["cluster"] / "latest" / "results"
    assert staged == {p.name: sorted(tar_members(p)) for p in results_collect.glob("*.tar.gz")}

    rerun = invoke(env, tmp_path, "run")
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing to do" in rerun.stderr
    assert latest_state(tmp_path, status["cluster"])["nodes"] == state["nodes"]


def test_node_names_from_stdin_chain_stages(cluster, tmp_path):
    sandbox, status, env = cluster
    wanted = status["nodes"][1]
    names = f"# from a pipeline\nhyperpod-{wanted['instance_id']}\n"
    result = invoke(env, tmp_path, "discover", "--json", "--nodes", "-", stdin=names)
    assert result.returncode == 0, result.stderr
    discovered = json.loads(result.stdout)  # stdout is pure JSON; logs went to stderr
    assert [n["instance_id"] for n in discovered["nodes"]] == [wanted["instance_id"]]
    by_hostname = invoke(env, tmp_path, "discover", "--json", "--nodes", wanted["hostname"])
    assert [n["instance_id"] for n in json.loads(by_hostname.stdout)["nodes"]] == [wanted["instance_id"]]


@pytest.mark.parametrize("args, message", [
    (["collect", "--cluster", "no-such-cluster"], "cluster 'no-such-cluster' not found"),
    (["collect", "--s3-path", "bucket-without-scheme/x"], "--s3-path must look like s3://bucket"),
    (["collect", "--nodes", "i-0abc", "--instance-groups", "worker-group-1"], "cannot be used together"),
    (["discover", "--nodes", "ip-1-2-3-4"], "no node in cluster hp-sandbox matches ip-1-2-3-4"),
    (["summarize", "--run-id", "20200101_000000"], "no state for run 20200101_000000"),
    (["run", "--max-workers", "0"], "max_workers must be a positive integer"),
    (["collect", "--s3-path", "s3://hyperpod-sandbox-reports/a//b"], "has an empty, '.' or '..' segment"),
    (["collect", "--s3-path", "s3://hyperpod-sandbox-reports/a/../b"], "has an empty, '.' or '..' segment"),
    (["collect", "--s3-path", "s3://hyperpod-sandbox-reports/./b"], "has an empty, '.' or '..' segment"),
    (["collect", "--s3-path", "s3://no-such-bucket-here/x"], "bucket no-such-bucket-here does not exist"),
    # An empty node filter never selects the whole fleet (before: every node, exit 0).
    (["collect", "--nodes", ""], "--nodes selects nothing (it names nothing)"),
    (["discover", "--nodes", ","], "--nodes selects nothing (it names nothing)"),
    (["collect", "--instance-groups", ""], "--instance-groups selects nothing"),
])
def test_bad_input_is_one_line_and_exit_2(cluster, tmp_path, args, message):
    sandbox, status, env = cluster
    result = invoke(env, tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert TRACEBACK not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert not list(tmp_path.glob("*/2*")), "a failed discovery must not leave a run behind"


def test_a_bucket_in_another_region_is_used_in_its_own_region(cluster, tmp_path):
    sandbox, status, env = cluster
    s3 = s3_client(env, "eu-central-1")  # S3 takes a bucket's creation only in its own region
    s3.create_bucket(Bucket="hp-reports-frankfurt", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    node = status["nodes"][0]
    result = invoke(env, tmp_path, "collect", "--s3-path", "s3://hp-reports-frankfurt/ops/night shift+1",
                    "--nodes", node["instance_id"])
    assert result.returncode == 0, result.stderr
    state = latest_state(tmp_path, status["cluster"])
    assert state["s3"]["region"] == "eu-central-1" and state["s3"]["prefix"] == "ops/night shift+1"
    key = f"{state['s3']['run_prefix']}/instances/{node['group']}_{node['instance_id']}.tar.gz"
    assert key.startswith("ops/night shift+1/") and state["nodes"][node["instance_id"]]["s3_key"] == key
    assert s3.head_object(Bucket="hp-reports-frankfurt", Key=key)["ContentLength"] > 0


def test_a_bucket_we_may_not_write_to_is_exit_2_before_any_run_starts(cluster, tmp_path):
    sandbox, status, env = cluster
    sandbox.set_faults(s3_put_failures=[{"key_contains": ".hyperpod-collect-write-check", "status": 403,
                                         "times": "always"}])
    try:
        result = invoke(env, tmp_path, "collect")
    finally:
        sandbox.set_faults(s3_put_failures=None)
    assert result.returncode == 2 and TRACEBACK not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert f"bucket {status['bucket']}: access denied" in error_lines[0] and "s3:PutObject" in error_lines[0]
    assert not list(tmp_path.glob("*/2*")), "a run that cannot start leaves no run folder behind"


def test_everything_a_run_writes_is_private_whatever_the_umask(cluster, tmp_path):
    sandbox, status, env = cluster
    previous = os.umask(0o022)  # the usual one: before, tarballs, transcripts and summaries were 0644
    try:
        result = invoke(env, tmp_path, "collect", "--nodes", status["nodes"][0]["instance_id"])
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    cluster_dir = tmp_path / status["cluster"]
    paths = [cluster_dir, *cluster_dir.rglob("*")]
    assert any(p.name.endswith(".tar.gz") for p in paths) and any(p.name == "summary.json" for p in paths)
    loose = [(str(p), oct(p.stat().st_mode & 0o777)) for p in paths if not p.is_symlink()
             and p.stat().st_mode & 0o777 != (0o700 if p.is_dir() else 0o600)]
    assert loose == []


def test_bad_setting_in_the_environment_is_exit_2(cluster, tmp_path):
    sandbox, status, env = cluster
    result = invoke(dict(env, INVOKE_HYPERPOD_TIMEOUTS_NODE_SCRIPT="soon"), tmp_path, "discover")
    assert result.returncode == 2 and TRACEBACK not in result.stderr
    assert "timeouts.node_script must be a positive integer" in result.stderr


def test_unhealthy_nodes_are_skipped_and_lost_nodes_fail_with_a_retry_hint(sandbox_factory, tmp_path):
    from collectors.sandbox import SandboxSpec

    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="slurm", nodes=3))
    pending, lost, healthy = status["nodes"]
    sandbox.set_node_status(pending["instance_id"], "Pending")
    os.kill(lost["init_pid"], signal.SIGKILL)  # the node vanishes behind a Running API status
    result = invoke(env, tmp_path, "collect")
    assert result.returncode == 1, result.stderr
    nodes = latest_state(tmp_path, status["cluster"])["nodes"]
    assert nodes[pending["instance_id"]]["status"] == "skipped"
    assert nodes[lost["instance_id"]]["status"] == "failed"
    assert nodes[healthy["instance_id"]]["status"] == "ok"
    assert "--retry-failed" in result.stderr
    retry = invoke(env, tmp_path, "run", "--retry-failed")
    assert retry.returncode == 1  # still not collected: the run stage says so, as collect and summarize do
    assert "0 of 1 node(s) collected (1 failed)" in retry.stderr and "--retry-failed" in retry.stderr
    again = latest_state(tmp_path, status["cluster"])["nodes"][lost["instance_id"]]
    assert again["status"] == "failed" and again["attempts"] >= 1


def test_no_secret_reaches_transcripts_summary_or_bundles(cluster, tmp_path):
    sandbox, status, env = cluster
    result = invoke(env, tmp_path, "collect", "--nodes", status["nodes"][0]["instance_id"],
                    "--command", "env", "--command", "echo '$HOME `id` \"q\"'")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / status["cluster"] / "latest"
    texts = [p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".json")]
    bundle = next((run_dir / "results").glob("*.tar.gz"))
    files = tar_members(bundle)
    texts += [content.decode(errors="replace") for content in files.values()]
    for text in texts + [result.stdout, result.stderr]:
        assert "X-Amz-Signature" not in text and "Signature=" not in text and "HPC_UPLOAD_URL=" not in text
    literal = [content for name, content in files.items() if name.startswith("command_02_")]
    assert literal == [b"$HOME `id` \"q\"\n"]


def test_ctrl_c_leaves_a_consistent_state_and_run_resumes_without_collecting_twice(cluster, tmp_path):
    sandbox, status, env = cluster
    assert invoke(env, tmp_path, "discover").returncode == 0
    assert invoke(env, tmp_path, "render", "--command", "sleep 4").returncode == 0
    assert invoke(env, tmp_path, "upload").returncode == 0
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(tmp_path), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "run", "--max-workers", "1", "--session-rate", "0.5"],
                            cwd=PROJECT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_path = tmp_path / status["cluster"] / "latest" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(n["status"] == "running" for n in json.loads(state_path.read_text())["nodes"].values()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert TRACEBACK not in stderr
    nodes = json.loads(state_path.read_text())["nodes"].values()
    assert {n["status"] for n in nodes} <= {"ok", "running", "pending", "interrupted"}
    assert 1 <= sum(n["status"] in ("ok", "running") for n in nodes) < 4, "Ctrl-C came before or after every launch"
    resumed = invoke(env, tmp_path, "run", stdin="")
    assert resumed.returncode == 0, resumed.stderr
    assert {n["status"] for n in latest_state(tmp_path, status["cluster"])["nodes"].values()} == {"ok"}
    for transcript in (tmp_path / status["cluster"] / "latest" / "transcripts").glob("*.log"):
        launches = re.findall(r"__hpc_launched_\w+__:\w+", transcript.read_text())
        assert len(launches) == 1, f"{transcript.name} launched {len(launches)} times"


def test_attached_sessions_and_the_cli_client_collect_the_same(cluster, tmp_path):
    sandbox, status, env = cluster
    result = invoke(env, tmp_path, "collect", "--session-mode", "attached", "--session-client", "cli",
                    "--instance-groups", status["nodes"][0]["group"], "--no-download")
    assert result.returncode == 0, result.stderr
    nodes = latest_state(tmp_path, status["cluster"])["nodes"].values()
    assert nodes and {n["status"] for n in nodes} == {"ok"}
    assert all(n["bytes"] > 0 and len(n["sha256"]) == 64 for n in nodes)


def test_collect_with_a_run_id_continues_the_run_from_its_first_unfinished_stage(cluster, tmp_path):
    sandbox, status, env = cluster
    node = status["nodes"][0]["instance_id"]
    assert invoke(env, tmp_path, "discover", "--nodes", node).returncode == 0
    run_id = latest_state(tmp_path, status["cluster"])["run_id"]
    early = invoke(env, tmp_path, "run")
    assert early.returncode == 2
    assert f"continue the run with `invoke collect --cluster {status['cluster']} --run-id {run_id}`" in early.stderr
    resumed = invoke(env, tmp_path, "collect", "--run-id", run_id, "--no-download")
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing run {run_id} from its render stage" in resumed.stderr
    state = latest_state(tmp_path, status["cluster"])
    assert state["run_id"] == run_id and state["nodes"][node]["status"] == "ok"
    assert {name for name, stage in state["stages"].items() if stage["status"] == "done"} >= {
        "discover", "render", "upload", "run", "summarize"}


def test_real_world_secret_forms_planted_on_a_node_leave_no_trace_and_look_alikes_survive(cluster, tmp_path):
    """Every case of the redaction catalogue's fixtures (tests/fixtures/redaction/, each shape taken from
    public bug reports and rule sets) planted in a node's syslog: after a collection, none of the secrets is
    in the downloaded tarball, the S3 objects or any run file, and every look-alike is there unchanged."""
    from tests.bash.test_redact import load_cases

    sandbox, status, env = cluster
    node = status["nodes"][0]
    cases = load_cases()
    secrets = [case for case in cases if case.kind == "redact"]
    survivors = [case.line for case in cases if case.kind == "keep"]
    syslog = sandbox.root / "nodes" / node["instance_id"] / "varlog" / "syslog"
    original = syslog.read_bytes()
    syslog.write_bytes(original + "".join(f"{case.line}\n" for case in secrets + [c for c in cases
                                                                                if c.kind == "keep"]).encode())
    try:
        result = invoke(env, tmp_path, "collect", "--nodes", node["instance_id"], "--no-download")
        assert result.returncode == 0, result.stderr
        assert invoke(env, tmp_path, "download").returncode == 0
    finally:
        syslog.write_bytes(original)
    run_dir = tmp_path / status["cluster"] / "latest"
    shipped = tar_members(next((run_dir / "results").glob("*.tar.gz")))["syslog"].decode()
    # What each secret line became, and what of it must be gone: the part the catalogue replaces.
    for case in secrets:
        assert case.line not in shipped, case.where
        assert case.into in shipped, case.where
    assert all(line in shipped for line in survivors)
    gone = {case.line for case in secrets} - {case.into for case in secrets}
    s3 = s3_client(env)
    prefix = latest_state(tmp_path, status["cluster"])["s3"]["run_prefix"]
    objects = [s3.get_object(Bucket=status["bucket"], Key=o["Key"])["Body"].read()
               for o in s3.list_objects_v2(Bucket=status["bucket"], Prefix=prefix)["Contents"]]
    run_files = [p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.name.endswith(".tar.gz")]
    texts = [gzip.decompress(o).decode(errors="replace") if o[:2] == b"\x1f\x8b" else o.decode(errors="replace")
             for o in objects + run_files]
    leaked = [case.where for case in secrets if case.line in gone and any(case.line in text for text in texts)]
    assert leaked == []


def test_an_empty_list_of_nodes_from_a_pipeline_touches_no_node(cluster, tmp_path):
    sandbox, status, env = cluster
    assert invoke(env, tmp_path, "collect", "--nodes", status["nodes"][0]["instance_id"], "--no-download").returncode == 0
    before = latest_state(tmp_path, status["cluster"])
    # What the README's pipeline hands on when nothing failed: nothing to retry, exit 0.
    nothing = invoke(env, tmp_path, "run", "--nodes", "-", "--retry-failed", stdin="")
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stderr, nothing.stderr
    assert latest_state(tmp_path, status["cluster"])["nodes"] == before["nodes"]
    empty = invoke(env, tmp_path, "run", "--nodes", "-", stdin="# no names\n")
    assert empty.returncode == 2 and "standard input held no names" in empty.stderr


def test_a_runs_folder_that_is_a_file_is_one_line_and_exit_2(cluster, tmp_path):
    sandbox, status, env = cluster
    runs = tmp_path / "runs"
    runs.write_text("")
    for args in (("discover",), ("run",), ("report",)):
        full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs))
        result = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and TRACEBACK not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
