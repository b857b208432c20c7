"""`invoke report` on run folders: the files it writes, the screen, --json, --against, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collectors import pipeline
from collectors.errors import UsageError
from collectors.settings import Settings
from tests.fixtures.bundles.builder import GROUP, RunBuilder, changed_files

PROJECT = Path(__file__).resolve().parents[2]
XID = "Nov 22 10:01:02 {host} kernel: [181234.5] NVRM: Xid (PCI:0000:53:00): {code}, pid=1, name=python"


def host(number: int) -> str:
    return f"ip-10-1-4-{number}"


def iid(number: int) -> str:
    return f"i-0a1b2c3d4e5f6{number:04d}"


def sick_run(root: Path, run_id: str = "20261122_110000", sick: dict[int, dict] | None = None, nodes: int = 12,
             unreachable: tuple[int, ...] = (12,)) -> RunBuilder:
    """`nodes` nodes of one group; `sick` maps a node number to the files to append to its bundle."""
    run = RunBuilder(root, run_id=run_id)
    for number in range(1, nodes + 1):
        if number in unreachable:
            run.add_node(iid(number), host(number), None, status="unreachable", error_kind="unreachable",
                         error="TargetNotConnected")
            continue
        append = (sick or {}).get(number)
        run.add_node(iid(number), host(number), changed_files(append=append, hostname=host(number)))
    run.write()
    return run


def report(root: Path, run_id: str | None = None, **options) -> int:
    settings = Settings.from_config({"runs_dir": str(root)}, cluster="hp-test")
    return pipeline.run_stage("report", settings, {"run_id": run_id, **options} if run_id else options)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No AWS configuration at all: the report must not need any."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))


def test_report_writes_its_files_and_puts_the_cluster_and_the_worst_first(tmp_path, capsys, offline):
    xid79 = {number: {"kern.log": XID.format(host=host(number), code=79)} for number in (2, 3, 4, 9)}
    run = sick_run(tmp_path, sick={**xid79, 5: {"kern.log": XID.format(host=host(5), code=13)}})
    assert report(tmp_path) == 0
    screen = capsys.readouterr().out
    lines = screen.splitlines()
    assert lines[0].startswith("Cluster hp-test (slurm, InService), run 20261122_110000: 12 node(s)")
    assert "collected 11 of 12" in screen and "healthy: 6 node(s)" in screen
    assert lines.index("CRITICAL") < lines.index("HIGH") < lines.index("WARNING")
    block = screen[screen.index("[gpu.xid:79]"):]
    assert "(4 nodes)" in block.splitlines()[0]
    assert "nodes     ip-10-1-4-[2-4,9]" in block
    assert f"{GROUP}: {iid(2)}, {iid(3)}, {iid(4)}, {iid(9)}" in block
    assert "evidence  ip-10-1-4-2 kern.log:12  Nov 22 10:01:02 ip-10-1-4-2 kernel:" in block
    assert "action    Replace the node" in block
    assert "[ssm.agent] Node unreachable over SSM  (1 node)" in screen
    for healthy in (1, 6, 7, 8, 10, 11):
        assert not re.search(rf"{host(healthy)}(?!\d)", screen)  # healthy nodes are counted, never listed
    doc = json.loads((run.run_dir / "findings.json").read_text())
    assert [f["id"] for f in doc["findings"]][:1] == ["gpu.xid:79"]
    assert (run.run_dir / "report.md").read_text().startswith("# HyperPod report: hp-test, run 20261122_110000")
    page = (run.run_dir / "report.html").read_text()
    # Self-contained: its script is inline, nothing is loaded (test_report_render_html.py checks it whole).
    assert "Xid 79: GPU has fallen off the bus" in page and "src=" not in page and "default-src 'none'" in page


def test_json_prints_the_findings_document_alone(tmp_path, capsys, offline):
    sick_run(tmp_path, sick={3: {"kern.log": XID.format(host=host(3), code=79)}}, nodes=3, unreachable=())
    assert report(tmp_path, json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"][0]["id"] == "gpu.xid:79" and doc["nodes"]["healthy"] == 2


def test_many_nodes_fold_and_their_ids_are_cut_short(tmp_path, capsys, offline):
    sick = {number: {"kern.log": XID.format(host=host(number), code=119)} for number in range(1, 41)}
    sick_run(tmp_path, sick=sick, nodes=40, unreachable=())
    report(tmp_path)
    screen = capsys.readouterr().out
    assert "nodes     ip-10-1-4-[1-40]" in screen
    assert "(+34 more)" in screen


def test_against_shows_new_cleared_and_grown(tmp_path, capsys, offline):
    disk = {"disk_usage.txt": "/dev/md1         28T   27T  500G  99% /opt/dlami/nvme"}
    crc = "\t Link 3: CRC Errors: {}"
    sick_run(tmp_path, "20261121_110000", nodes=4, unreachable=(),
             sick={1: {"kern.log": XID.format(host=host(1), code=13), "nvidia_smi_nvlink_errors.txt": crc.format(2)},
                   2: disk})
    assert report(tmp_path, "20261121_110000") == 0
    three_xids = "\n".join(XID.format(host=host(1), code=13).replace("10:01", f"10:0{n}") for n in range(3))
    sick_run(tmp_path, "20261122_110000", nodes=4, unreachable=(),
             sick={1: {"kern.log": three_xids, "nvidia_smi_nvlink_errors.txt": crc.format(9)},
                   3: {"kern.log": XID.format(host=host(3), code=79)}})
    capsys.readouterr()
    assert report(tmp_path, against="20261121_110000") == 0
    screen = capsys.readouterr().out
    assert "CHANGES since run 20261121_110000" in screen
    assert "new       [gpu.xid:79] Xid 79: GPU has fallen off the bus (critical): ip-10-1-4-3" in screen
    assert "cleared   [disk.full:/opt/dlami/nvme] File system /opt/dlami/nvme nearly full (high): ip-10-1-4-2" in screen
    assert "grew      [gpu.xid:13] ip-10-1-4-1: 1 -> 3" in screen
    assert "counter   nvlink_errors on ip-10-1-4-1: 2 -> 9" in screen
    doc = json.loads((tmp_path / "hp-test" / "20261122_110000" / "findings.json").read_text())
    assert doc["diff"]["against"] == "20261121_110000"


def test_against_a_run_never_reported_judges_its_bundles(tmp_path, capsys, offline):
    sick_run(tmp_path, "20261121_110000", nodes=2, unreachable=(),
             sick={2: {"kern.log": XID.format(host=host(2), code=79)}})
    sick_run(tmp_path, "20261122_110000", nodes=2, unreachable=())
    assert report(tmp_path, against="20261121_110000") == 0
    assert "cleared   [gpu.xid:79]" in capsys.readouterr().out
    assert not (tmp_path / "hp-test" / "20261121_110000" / "findings.json").exists()  # the earlier run is untouched


def test_a_node_not_collected_this_time_is_not_cleared(tmp_path, capsys, offline):
    sick_run(tmp_path, "20261121_110000", nodes=2, unreachable=(),
             sick={2: {"kern.log": XID.format(host=host(2), code=79)}})
    sick_run(tmp_path, "20261122_110000", nodes=2, unreachable=(2,))
    report(tmp_path, against="20261121_110000")
    changes = capsys.readouterr().out.split("CHANGES", 1)[1]
    assert "cleared" not in changes and "new       [ssm.agent]" in changes


@pytest.mark.parametrize("setup, options, message", [
    ("none", {}, "no runs for cluster 'hp-test'"),
    ("not_downloaded", {}, "is not downloaded: run `invoke download --run-id 20261122_110000` first"),
    ("run", {"against": "20200101_000000"}, "no state for run 20200101_000000"),
    ("run", {"against": "20261122_110000"}, "is this run itself"),
    ("run", {"against": "yesterday"}, "must look like YYYYMMDD_HHMMSS"),
])
def test_bad_input_is_a_usage_error(tmp_path, offline, setup, options, message):
    if setup != "none":
        run = sick_run(tmp_path, nodes=1, unreachable=())
        if setup == "not_downloaded":
            state = run.state()
            state["stages"] = {}
            (run.run_dir / "state.json").write_text(json.dumps(state))
            for bundle in (run.run_dir / "results").iterdir():
                bundle.unlink()
            (run.run_dir / "results").rmdir()
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        report(tmp_path, **options)


def test_the_command_line_exits_0_with_findings_and_2_on_bad_input(tmp_path):
    sick_run(tmp_path, nodes=2, sick={1: {"kern.log": XID.format(host=host(1), code=79)}})
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "INVOKE_HYPERPOD_"))}
    env.update(INVOKE_HYPERPOD_RUNS_DIR=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"))
    command = [sys.executable, "-m", "invoke", "report", "--cluster", "hp-test"]
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[gpu.xid:79]" in done.stdout and "report: " in done.stderr
    bad = subprocess.run(command + ["--against", "20200101_000000"], cwd=PROJECT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        f"error: no state for run 20200101_000000 of cluster 'hp-test' "
        f"(looked for {tmp_path}/hp-test/20200101_000000/state.json)"]


def test_a_damaged_kubectl_bundle_is_said_and_the_rest_is_reported(tmp_path, capsys, offline):
    run = sick_run(tmp_path, nodes=1, unreachable=(), sick={1: {"kern.log": XID.format(host=host(1), code=79)}})
    (run.run_dir / "kubectl_resources.tar.gz").write_bytes(b"not a tarball")
    assert report(tmp_path) == 0
    screen = capsys.readouterr().out
    assert "Kubernetes bundle problem: kubectl_resources.tar.gz: " in screen and "[gpu.xid:79]" in screen


def test_an_xid_after_another_on_the_same_gpu_points_at_the_first(tmp_path, capsys, offline):
    xid = "Nov 22 10:0{m}:00 {host} kernel: NVRM: Xid (PCI:0000:{bus}:00): {code}, pid=1"
    lines = [xid.format(m=1, host=host(1), bus="53", code=79), xid.format(m=2, host=host(1), bus="53", code=13),
             xid.format(m=3, host=host(1), bus="64", code=13)]
    sick_run(tmp_path, nodes=2, unreachable=(),
             sick={1: {"kern.log": "\n".join(lines)}, 2: {"kern.log": xid.format(m=4, host=host(2), bus="53", code=13)}})
    assert report(tmp_path, json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    xid13 = next(f for f in doc["findings"] if f["id"] == "gpu.xid:13")
    by_host = {node["hostname"]: node for node in xid13["nodes"]}
    assert by_host[host(1)]["first_on_gpus"] == ["0000:64:00"]  # first on that GPU: its own cause
    assert by_host[host(1)]["after_on_gpus"] == {"0000:53:00": "79"}  # fallout of the 79 there
    assert by_host[host(2)]["first_on_gpus"] == ["0000:53:00"]
    sick_run(tmp_path / "fallout", nodes=1, unreachable=(), sick={1: {"kern.log": "\n".join(lines[:2])}})
    report(tmp_path / "fallout")
    screen = capsys.readouterr().out
    assert "    after     on ip-10-1-4-1 gpu.xid:79 came first on the same GPU: act on that one" in screen


def test_a_nodes_own_lines_come_before_what_other_nodes_say_of_it(tmp_path, capsys, offline):
    row = "Kill task failed                                             root      2026-11-22T09:12:45 ip-10-1-4-2"
    own = "NodeName=ip-10-1-4-2 Arch=x86_64\n   State=IDLE+DRAIN\n   Reason=Kill task failed [root@2026-11-22T09:12:45]"
    sick_run(tmp_path, nodes=2, unreachable=(), sick={1: {"sinfo_R.txt": row}, 2: {"scontrol_show_node.txt": own}})
    assert report(tmp_path, json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    (finding,) = [f for f in doc["findings"] if f["id"] == "slurm.reason:Kill task failed"]
    (node,) = finding["nodes"]
    assert node["hostname"] == host(2) and finding["severity"] == "high"
    assert [item["bundle"] for item in node["evidence"]] == [None, host(1)]
