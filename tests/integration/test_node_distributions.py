"""The whole node collection on each node distribution HyperPod has, through the real `invoke collect`.

Ubuntu 20.04 and 22.04 (the Slurm DLAMI base: dash as `sh`, rsyslog's syslog and kern.log) and Amazon
Linux 2023 (EKS: bash as `sh`, no rsyslog, journald only; and with rsyslog installed, /var/log/messages).
One one-node sandbox per case; the node's journal is a real journal file that the real journalctl
reads (docs/scenarios.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from collectors.sandbox import SandboxSpec
from collectors.sandbox.nodes import journal_remote
from tests.conftest import require

PROJECT = Path(__file__).resolve().parents[2]
COLLECTED = {"ok", "ok_with_errors"}
# (distribution, rsyslog installed, orchestrator, the files rsyslog writes there, /etc/os-release's PRETTY_NAME)
DISTRIBUTIONS = [
    ("ubuntu-20.04", True, "slurm", {"syslog", "kern.log"}, "Ubuntu 20.04.6 LTS"),
    ("ubuntu-22.04", True, "slurm", {"syslog", "kern.log"}, "Ubuntu 22.04.5 LTS"),
    ("al2023", False, "eks", set(), "Amazon Linux 2023.8.20250808"),
    ("al2023", True, "eks", {"messages"}, "Amazon Linux 2023.8.20250808"),
]
RSYSLOG_FILES = {"syslog", "kern.log", "messages"}
UNIT_JOURNALS = {"slurm": "slurmd_journal.txt", "eks": "kubelet_journal.txt"}
# The journal keeps three boots: 10 days ago, 2 days ago and this one (logs.EARLIER_BOOTS in collectors/sandbox).
BOOTS_IN_JOURNAL, BOOTS_IN_DEFAULT_WINDOW = 3, 2


@pytest.fixture(scope="module", params=DISTRIBUTIONS,
                ids=[f"{row[0]}{'-rsyslog' if row[0] == 'al2023' and row[1] else ''}" for row in DISTRIBUTIONS])
def collected(request, sandbox_factory, tmp_path_factory):
    """A one-node sandbox of the distribution, collected once with the default 3-day window."""
    distribution, rsyslog, orchestrator, rsyslog_files, pretty_name = request.param
    require(journal_remote() is not None, "needs systemd-journal-remote (Debian package systemd-journal-remote)")
    spec = SandboxSpec.from_scenario({
        "cluster": f"hp-{distribution.replace('.', '')}", "type": orchestrator, "os": distribution, "rsyslog": rsyslog,
        "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 1}],
    })
    sandbox, status, env = sandbox_factory(spec)
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(env, runs, "collect")
    state = json.loads((runs / status["cluster"] / "latest" / "state.json").read_text())
    node = status["nodes"][0]
    tarball = runs / status["cluster"] / "latest" / "results" / f"{node['group']}_{node['instance_id']}.tar.gz"
    return {"sandbox": sandbox, "node": node, "result": result, "state": state, "files": tar_members(tarball),
            "rsyslog_files": rsyslog_files, "pretty_name": pretty_name, "orchestrator": orchestrator}


def invoke(env: dict, runs: Path, *args: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, INVOKE_HYPERPOD_RUNS_DIR=str(runs), INVOKE_HYPERPOD_POLL_INTERVAL="1")
    full_env.pop("AWS_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and "/" in m.name}


def manifest(files: dict[str, bytes]) -> dict[str, dict[str, str]]:
    lines = files["manifest.tsv"].decode().splitlines()
    header = lines[0].split("\t")
    return {row["item"]: row for row in (dict(zip(header, line.split("\t"))) for line in lines[1:])}


def test_the_whole_collection_runs_on_the_distribution(collected):
    assert collected["result"].returncode == 0, collected["result"].stderr[-3000:]
    node = collected["state"]["nodes"][collected["node"]["instance_id"]]
    assert node["status"] in COLLECTED and node["bytes"] > 0, node
    assert f'PRETTY_NAME="{collected["pretty_name"]}"' in collected["files"]["versions.txt"].decode()


def test_log_files_are_the_distributions_own(collected):
    """Ubuntu: syslog and kern.log; AL2023 without rsyslog: none of them, each skipped as not present."""
    files, rows = collected["files"], manifest(collected["files"])
    assert RSYSLOG_FILES & set(files) == collected["rsyslog_files"]
    for name in RSYSLOG_FILES - collected["rsyslog_files"]:
        item = {"kern.log": "kern_log"}.get(name, name)
        assert rows[item]["note"] == f"skipped: not present: /var/log/{name}"
    if "kern.log" in files:  # imklog keeps the kernel's stamps; Amazon Linux's imjournal does not
        assert b"kernel: [    0.000000] Linux version" in files["kern.log"]
    if "messages" in files:
        assert b" kernel: Linux version 6.1." in files["messages"] and b"systemd[1]: Started " in files["messages"]


def test_rotated_logs_within_the_window_are_taken(collected):
    """The boot 2 days ago is in logrotate's first rotation (syslog.1, kern.log.1; AL2023: messages-DATE),
    taken; the one 10 days ago (syslog.2.gz, ...) is outside the 3-day window."""
    rotated = {name.split("/", 1)[1] for name in collected["files"] if name.startswith("rotated_logs/")}
    expected = {re.sub(r"^messages$", "messages-DATE", name) + ("" if name == "messages" else ".1")
                for name in collected["rsyslog_files"]}
    assert {re.sub(r"-\d{8}$", "-DATE", name) for name in rotated} == expected


def test_journal_items_hold_the_nodes_journal_within_the_window(collected):
    """journal_kernel.txt is every boot's kernel messages since 3 days ago: two of the three boots."""
    sandbox, node = collected["sandbox"], collected["node"]
    everything = sandbox.node_exec(node["instance_id"], ["journalctl", "--no-pager", "_TRANSPORT=kernel"]).stdout
    assert everything.count("Linux version") == BOOTS_IN_JOURNAL
    kernel = collected["files"]["journal_kernel.txt"].decode()
    assert kernel.count("Linux version") == BOOTS_IN_DEFAULT_WINDOW
    assert kernel.count("-- Boot ") == BOOTS_IN_DEFAULT_WINDOW - 1
    assert f" {node['hostname']} kernel: NVRM: loading NVIDIA UNIX" in kernel  # short-iso, the node's name
    units = collected["files"][UNIT_JOURNALS[collected["orchestrator"]]].decode()
    daemon = {"slurm": "slurmd[3120]: slurmd: slurmd version", "eks": "kubelet[2714]: I1122 kubelet.go:2327]"}
    assert units.count(daemon[collected["orchestrator"]]) == BOOTS_IN_DEFAULT_WINDOW
    assert " systemd[1]: Started " in units and " kernel: " not in units


def test_journalctl_dash_k_is_this_boot_only(collected):
    sandbox, node = collected["sandbox"], collected["node"]
    this_boot = sandbox.node_exec(node["instance_id"], ["journalctl", "--no-pager", "-k"]).stdout
    assert this_boot.count("Linux version") == 1 and "-- Boot " not in this_boot


def test_failed_units_are_not_every_unit(collected):
    files = collected["files"]
    services, failed = files["systemd_services.txt"].decode(), files["systemd_failed.txt"].decode()
    assert failed != services
    assert failed.startswith("  UNIT LOAD ACTIVE SUB DESCRIPTION\n0 loaded units listed.")
    assert ".timer" not in services and "logrotate.service" in services  # --type=service --all
