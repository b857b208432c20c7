"""`invoke clean` (issue 14): a shareable copy of a run in which names and addresses are stand-ins,
the same everywhere, and on which `invoke report` finds what it finds on the original.

The run is the sick Slurm fleet of the report's tests (tests/fixtures/sick_fleet.py) with lines
that name people and places planted in a node's logs: an sshd login, pam and logind sessions, a
home folder, the node's MAC and IPv6 addresses, an ECR image, ARNs with an account and an assumed
role's session name, and a `ps` table with a user column. What must be gone is listed here, from
the fixture, not taken from the mapping the cleaner wrote.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import stat
import tarfile
from pathlib import Path

import pytest

from collectors import pipeline
from collectors.clean.learn import Inventory
from collectors.clean.rewrite import Cleaner
from collectors.clean.standins import Mapping
from collectors.errors import UsageError
from collectors.report.engine import build_report
from collectors.report.nodeset import expand
from collectors.settings import Settings
from tests.fixtures import sick_fleet
from tests.fixtures.bundles.builder import (HEALTH_LABEL, RunBuilder, changed_files, kube_node, kube_pod,
                                            write_kube_bundle)
from tests.fixtures.readable import every_text

ACCOUNT = "111122223333"
BUCKET = "acme-hyperpod-diagnostics"
EKS = "acme-training-eks"
PLANTED = "\n".join([
    "Nov 22 10:00:01 ip-10-1-4-1 sshd[901]: Accepted publickey for alice from 10.1.0.5 port 51234 ssh2",
    "Nov 22 10:00:01 ip-10-1-4-1 sshd[901]: pam_unix(sshd:session): session opened for user alice(uid=1001) by (uid=0)",
    "Nov 22 10:00:02 ip-10-1-4-1 systemd-logind[700]: New session 7 of user bob.",
    "Nov 22 10:00:03 ip-10-1-4-1 train.sh[4242]: loading /home/alice/ckpt/step_100.pt",
    "Nov 22 10:00:04 ip-10-1-4-1 kernel: eth0: link/ether 0a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff",
    "Nov 22 10:00:04 ip-10-1-4-1 systemd-networkd[600]: eth0: inet6 fe80::81b:2cff:fe3d:4e5f/64 scope link",
    "Nov 22 10:00:05 ip-10-1-4-1 dhclient[500]: bound to 2600:1f14:abc:1200:1e2f:3a4b:5c6d:7e8f, EFA gid "
    "fe80:0000:0000:0000:0002:c903:00e1:0b7b",
    f"Nov 22 10:00:06 ip-10-1-4-1 containerd[800]: PullImage {ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com/trainer:v1",
    f"Nov 22 10:00:07 ip-10-1-4-1 agent: arn:aws:sagemaker:us-west-2:{ACCOUNT}:cluster/abc123def456 by "
    f"arn:aws:sts::{ACCOUNT}:assumed-role/HyperPodOps/carol@example.com",
    "Nov 22 10:00:08 ip-10-1-4-1 slurmd[3120]: launch from ip-10-1-4-2.us-west-2.compute.internal 10.1.4.2:6818 for "
    "hp-slurm-sick, nodes ip-10-1-4-[1-3,7]",
    f"Nov 22 10:00:09 ip-10-1-4-1 upload.sh[77]: put s3://{BUCKET}/hp-slurm-sick/run.tar.gz via 52.218.1.9",
])
PROCESSES = ("    PID    PPID USER     STAT COMMAND\n      1       0 root     S    /sbin/init\n"
             "   4242       1 alice    R    python train.py\n   4343       1 verylon+ S    python eval.py\n")
# What the fixture holds that names the cluster, its hosts, networks, people and account.
ORIGINAL_TEXT = ["hp-slurm-sick", EKS, BUCKET, ACCOUNT, "0a:1b:2c:3d:4e:5f", "fe80::81b:2cff:fe3d:4e5f",
                 "2600:1f14:abc:1200:1e2f:3a4b:5c6d:7e8f", "0002:c903:00e1:0b7b", "52.218.1.9",
                 "carol@example.com", "/home/alice", "verylon+",
                 *(f"ip-10-1-{net}-" for net in (0, 4, 5)), *(f"10.1.{net}." for net in (0, 4, 5)),
                 *(f"i-0a00000000000000{n}" for n in range(1, 9)), "i-0c0000000000000a0",
                 *(f"i-0b000000000000000{n}" for n in range(1, 5))]
ORIGINAL_WORDS = ["alice", "bob", "verylon"]
# Look-alikes that must come through as they are.
KEPT = ["NVRM: Xid (PCI:0000:53:00): 79", "busId 9b000 commId 0x5ae77eb5ea4ec1ee", "c10d::ProcessGroupNCCL::watchdog",
        "GPU-5b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "2026-11-22T10:01:02.123+00:00", "libnccl.so.2.18.5",
        "ml.p5.48xlarge", "sha256:8c15b2612051244d0a2b6ceb6f9bf82ddc0e909555c1067c098e5f935e2751a7",
        "127.0.0.1:8080", "169.254.169.254", "255.255.255.0", "ff:ff:ff:ff:ff:ff", "::1",
        "session opened for user root"]


def sick_run(root: Path) -> RunBuilder:
    """The sick fleet with the planted lines, its state as an EKS run's (an EKS name, an S3 bucket,
    the cluster's ARN) and a kubectl bundle that names two of its nodes."""
    extra = {1: {"syslog": PLANTED + "\nNov 22 10:00:10 ip-10-1-4-1 look-alikes: " + " ; ".join(KEPT),
                 "processes.txt": PROCESSES}}
    run = sick_fleet.build(root, extra=extra)
    rotated = gzip.compress(b"Nov 21 23:00:00 ip-10-1-4-3 sshd[1]: Accepted password for alice from 10.1.0.5 port 2\n")
    add_member(run.run_dir / "results" / "worker-group-1_i-0a000000000000003.tar.gz", "rotated_logs/syslog.2.gz",
               rotated)
    state = json.loads((run.run_dir / "state.json").read_text())
    state["cluster"].update(arn=f"arn:aws:sagemaker:us-west-2:{ACCOUNT}:cluster/abc123def456", eks_cluster_name=EKS,
                            eks_cluster_arn=f"arn:aws:eks:us-west-2:{ACCOUNT}:cluster/{EKS}")
    state["s3"] = {"bucket": BUCKET, "prefix": "diag", "run_prefix": f"diag/hp-slurm-sick/{run.run_id}"}
    (run.run_dir / "state.json").write_text(json.dumps(state, indent=1))
    nodes = [kube_node("hyperpod-i-0a000000000000001", labels={HEALTH_LABEL: "UnschedulablePendingReboot"}),
             kube_node("hyperpod-i-0a000000000000002")]
    pods = [kube_pod("trainer-0", "hyperpod-i-0a000000000000002",
                     [{"name": "main", "restartCount": 9,
                       "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                       "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}])]
    write_kube_bundle(run.run_dir, nodes, pods)
    return run


def add_member(bundle: Path, name: str, content: bytes) -> None:
    """Rewrite a bundle with one more file in its top folder."""
    members = []
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar.getmembers():
            members.append((member, tar.extractfile(member).read() if member.isfile() else None))
    top = members[0][0].name.split("/")[0]
    with tarfile.open(bundle, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        info = tarfile.TarInfo(f"{top}/{name}")
        info.size, info.mode = len(content), 0o600
        tar.addfile(info, io.BytesIO(content))


def clean(root: Path, output: Path, run_id: str = sick_fleet.RUN_ID, cluster: str = "hp-slurm-sick",
          **options) -> int:
    settings = Settings.from_config({"runs_dir": str(root)}, cluster=cluster)
    return pipeline.run_stage("clean", settings, {"run_id": run_id, "output": str(output), **options})


def leaks(texts: dict[str, bytes]) -> list[tuple[str, str]]:
    found = []
    for where, data in texts.items():
        place = where.encode() + b"\n" + data
        found += [(where, text) for text in ORIGINAL_TEXT if text.encode() in place]
        found += [(where, word) for word in ORIGINAL_WORDS
                  if re.search(rb"(?<![A-Za-z0-9])" + word.encode() + rb"(?![A-Za-z0-9])", place)]
    return found


@pytest.fixture
def cleaned(tmp_path):
    """The original run, and its copy with the mapping."""
    run = sick_run(tmp_path / "runs")
    output = tmp_path / "shareable"
    assert clean(tmp_path / "runs", output) == 0
    copy_dir = output / "cluster-1" / sick_fleet.RUN_ID
    map_path = output / "cluster-1" / f"{sick_fleet.RUN_ID}.private-map.json"
    mapping = Mapping.from_json(json.loads(map_path.read_text()))
    return run, copy_dir, mapping


def test_the_copy_holds_none_of_the_names_and_addresses_and_the_look_alikes_stay(cleaned):
    run, copy_dir, _ = cleaned
    assert leaks(every_text(run.run_dir))  # the fixture does hold them: the test can fail

    texts = every_text(copy_dir)

    assert leaks(texts) == []
    syslog = next(data for where, data in texts.items() if where.endswith("i-00000000000000001_20261122_110000/syslog"))
    look_alikes = syslog.decode().rsplit("look-alikes: ", 1)[1].split("\n", 1)[0].split(" ; ")
    assert look_alikes == KEPT
    assert b"session opened for user user1(uid=1001)" in syslog and b"ip-10-0-1-[1-3,7]" in syslog


def test_the_same_original_is_the_same_stand_in_everywhere(cleaned):
    _, copy_dir, _ = cleaned
    state = json.loads((copy_dir / "state.json").read_text())
    node = state["nodes"]["i-00000000000000001"]
    assert (node["hostname"], node["ip"]) == ("ip-10-0-1-1", "10.0.1.1")
    texts = every_text(copy_dir)
    bundle = str(copy_dir / "results" / "worker-group-1_i-00000000000000001.tar.gz")
    top = f"{bundle}:hyperpod_report_worker-group-1_i-00000000000000001_20261122_110000"
    assert texts[f"{top}/hostname.txt"].startswith(b"ip-10-0-1-1\n")
    assert b"Accepted publickey for user1 from 10.0.0.5" in texts[f"{top}/syslog"]
    rotated = texts[f"{bundle.replace('00000000000000001', '00000000000000003')}:"
                    f"hyperpod_report_worker-group-1_i-00000000000000003_20261122_110000/rotated_logs/syslog.2.gz"]
    assert rotated.startswith(b"Nov 21 23:00:00 ip-10-0-1-3 sshd[1]: Accepted password for user1 from 10.0.0.5")
    kube = json.loads(texts[str(copy_dir / "kubectl_resources.tar.gz") + ":kubectl_resources/nodes.json"]
                      .rsplit(b"\n", 1)[0])
    assert [item["metadata"]["name"] for item in kube["items"]] == ["hyperpod-i-00000000000000001",
                                                                    "hyperpod-i-00000000000000002"]
    assert state["cluster"]["name"] == "cluster-1" and state["cluster"]["eks_cluster_name"] == "eks-cluster-1"
    assert state["cluster"]["arn"] == "arn:aws:sagemaker:us-west-2:000000000001:cluster/abc123def456"
    assert state["s3"]["bucket"] == "bucket-1"


def test_the_report_on_the_copy_is_the_originals_with_stand_ins_folded_the_same_way(cleaned):
    run, copy_dir, mapping = cleaned
    original = build_report(run.run_dir, json.loads((run.run_dir / "state.json").read_text()))
    copy = build_report(copy_dir, json.loads((copy_dir / "state.json").read_text()))
    expected = json.loads(Cleaner(mapping).clean(json.dumps(original["findings"]).encode()))

    assert [finding_view(f) for f in copy["findings"]] == [finding_view(f) for f in expected]
    assert len(copy["findings"]) > 10 and copy["nodes"]["findings_by_severity"] == original["nodes"][
        "findings_by_severity"]
    folded = {f["id"]: f["node_set"] for f in copy["findings"]}
    assert folded["gpu.xid:74"] == "ip-10-0-1-[3-5]" == Cleaner(mapping).clean_name("ip-10-1-4-[3-5]")
    assert copy["nodes"]["healthy"] == original["nodes"]["healthy"]


def finding_view(finding: dict) -> tuple:
    nodes = sorted((node["instance_id"] or "", node["hostname"] or "", node["count"],
                    tuple((e["file"], e["line"], e["text"], e["bundle"]) for e in node["evidence"]))
                   for node in finding["nodes"])
    return (finding["id"], finding["severity"], finding["title"], finding["node_count"],
            sorted(expand(finding["node_set"])), nodes, [(a["id"], sorted(expand(a["node_set"])))
                                                          for a in finding["also_seen"]])


def test_the_mapping_is_private_and_beside_the_copy_and_the_copy_private_too(cleaned, capsys):
    _, copy_dir, mapping = cleaned
    map_path = copy_dir.parent / f"{sick_fleet.RUN_ID}.private-map.json"
    assert stat.S_IMODE(map_path.stat().st_mode) == 0o600
    assert mapping.table("user") == {"alice": "user1", "bob": "user2", "carol@example.com": "user3",
                                     "verylon": "user4"}
    assert mapping.table("ipv4_network")["10.1.4"] == "10.0.1" and mapping.table("ipv4_network")["52.218.1"] == \
        "100.64.0"
    assert not any(path.name.endswith(".private-map.json") for path in copy_dir.rglob("*"))
    modes = {stat.S_IMODE(path.stat().st_mode) for path in [copy_dir, *copy_dir.rglob("*")]}
    assert modes == {0o700, 0o600}


def test_counts_per_kind_are_printed_with_the_mapping_and_the_report_command(tmp_path, capsys):
    sick_run(tmp_path / "runs")
    capsys.readouterr()

    assert clean(tmp_path / "runs", tmp_path / "out") == 0

    screen = capsys.readouterr().out
    counts = {match["label"].strip(): (int(match["replaced"]), int(match["items"])) for match in re.finditer(
        r"^  (?P<label>[a-zA-Z0-9 ]+?) +(?P<replaced>\d+) +(?P<items>\d+)$", screen, re.MULTILINE)}
    assert counts["user names"][1] == 4 and counts["MAC addresses"] == (1, 1) and counts["IPv6 addresses"][1] == 3
    # 13 nodes, and the id the fixture's bundles all keep in instance_id.txt (tests/fixtures/bundles/healthy)
    assert counts["account ids"][1] == 1 and counts["S3 buckets"][1] == 1 and counts["instance ids"][1] == 14
    assert set(counts) == {"cluster names", "S3 buckets", "host names", "IPv4 addresses", "IPv6 addresses",
                           "MAC addresses", "account ids", "user names", "instance ids"}
    assert f"INVOKE_HYPERPOD_RUNS_DIR={tmp_path / 'out'} invoke report --cluster cluster-1 --run-id " \
           f"{sick_fleet.RUN_ID}" in screen
    assert "never share it" in screen


def test_keep_instance_ids_leaves_them_and_still_replaces_the_rest(tmp_path):
    run = sick_run(tmp_path / "runs")

    assert clean(tmp_path / "runs", tmp_path / "out", keep=["instance-ids"]) == 0

    copy_dir = tmp_path / "out" / "cluster-1" / sick_fleet.RUN_ID
    assert sorted(path.name for path in (copy_dir / "results").iterdir()) == \
        sorted(path.name for path in (run.run_dir / "results").iterdir())
    state = json.loads((copy_dir / "state.json").read_text())
    assert state["nodes"]["i-0a000000000000001"]["hostname"] == "ip-10-0-1-1"
    texts = every_text(copy_dir)
    assert [text for where, text in leaks(texts) if not text.startswith("i-")] == []


def test_a_later_run_of_the_cluster_keeps_its_stand_ins_and_another_cluster_gets_its_own(tmp_path):
    sick_run(tmp_path / "runs")
    sick_fleet.build(tmp_path / "runs", run_id="20261123_080000")
    other = RunBuilder(tmp_path / "runs", cluster="hp-other")
    other.add_node("i-0d0000000000000001", "ip-10-9-0-1", changed_files(hostname="ip-10-9-0-1"))
    other.write()
    output = tmp_path / "out"

    assert clean(tmp_path / "runs", output) == 0
    assert clean(tmp_path / "runs", output, run_id="20261123_080000") == 0
    assert clean(tmp_path / "runs", output, run_id=other.run_id, cluster="hp-other") == 0

    first, later = (json.loads((output / "cluster-1" / f"{run_id}.private-map.json").read_text())["stand_ins"]
                    for run_id in (sick_fleet.RUN_ID, "20261123_080000"))
    assert later["instance_id"] == first["instance_id"] and later["ipv4_network"] == first["ipv4_network"]
    assert later["user"] == first["user"]  # kept, though the later run names no user
    other_map = json.loads((output / "cluster-2" / f"{other.run_id}.private-map.json").read_text())
    assert other_map["stand_ins"]["cluster"] == {"hp-other": "cluster-2"}


def test_a_binary_file_is_left_out_and_a_damaged_bundle_stays_damaged(tmp_path, capsys):
    run = RunBuilder(tmp_path / "runs")
    files = changed_files(hostname="ip-10-1-4-1")
    files["core.bin"] = b"\x7fELF\x00\x00ip-10-1-4-1 10.1.4.1\x00"
    run.add_node("i-0a1b2c3d4e5f60001", "ip-10-1-4-1", files)
    run.add_node("i-0a1b2c3d4e5f60002", "ip-10-1-4-2", changed_files(hostname="ip-10-1-4-2"))
    run.write()
    damaged = run.run_dir / "results" / "worker-group-1_i-0a1b2c3d4e5f60002.tar.gz"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 2 // 3])
    capsys.readouterr()

    assert clean(tmp_path / "runs", tmp_path / "out", run_id=run.run_id, cluster="hp-test") == 0

    screen = capsys.readouterr().out
    assert "left out (binary, cannot be cleaned): worker-group-1_i-00000000000000001.tar.gz:" \
           "hyperpod_report_worker-group-1_i-00000000000000001_20261122_110000/core.bin" in screen
    copy_dir = tmp_path / "out" / "cluster-1" / run.run_id
    original = build_report(run.run_dir, run.state())
    copy = build_report(copy_dir, json.loads((copy_dir / "state.json").read_text()))
    damage = [f for f in copy["findings"] if f["rule"] == "collect.bundle_missing"]
    assert [f["id"] for f in damage] == [f["id"] for f in original["findings"] if f["rule"] == "collect.bundle_missing"]
    assert damage and damage[0]["nodes"][0]["instance_id"] == "i-00000000000000002"
    assert leaks(every_text(copy_dir)) == []


@pytest.mark.parametrize("keep, message", [(["cluster"], "--keep cluster: only instance-ids can be kept")])
def test_what_cannot_be_kept_a_copy_inside_the_run_and_a_run_not_downloaded_are_refused(tmp_path, keep, message):
    run = RunBuilder(tmp_path / "runs")
    run.add_node("i-0a1b2c3d4e5f60001", "ip-10-1-4-1", None)
    run.write()
    with pytest.raises(UsageError, match=message):
        clean(tmp_path / "runs", tmp_path / "out", run_id=run.run_id, cluster="hp-test", keep=keep)
    with pytest.raises(UsageError, match="is inside the run it would copy"):
        clean(tmp_path / "runs", run.run_dir / "copy", run_id=run.run_id, cluster="hp-test")
    state = json.loads((run.run_dir / "state.json").read_text())
    state["stages"] = {}
    (run.run_dir / "state.json").write_text(json.dumps(state))
    (run.run_dir / "results").rmdir()
    with pytest.raises(UsageError, match="is not downloaded"):
        clean(tmp_path / "runs", tmp_path / "out", run_id=run.run_id, cluster="hp-test")


@pytest.mark.parametrize("text", KEPT + ["Version=23.11.10 NodeAddr=", "0000:53:00.0 3D controller",
                                         "12:34:56.789 [INFO]", "Mon Jan 12 03:14:15 UTC 2026"])
def test_look_alikes_are_not_learned(text):
    inventory = Inventory()
    inventory.learn_text(text.encode(), "syslog")
    assert {kind: values for kind, values in inventory.found.items() if values} == {}
    assert inventory.node_networks == set()
