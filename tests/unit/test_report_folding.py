"""One fault, one finding: consequences fold under their cause on the same node (and GPU), and a
node Slurm or HyperPod keeps out of service is never counted healthy, whatever the severity."""

from __future__ import annotations

import pytest

from collectors.errors import UsageError
from collectors.report import catalog as catalog_module
from collectors.report.engine import build_report
from tests.fixtures.bundles.builder import HOSTNAME, INSTANCE_ID, RunBuilder, changed_files

XID = "Nov 22 10:0{minute}:00 ip-10-1-4-1 kernel: NVRM: Xid (PCI:0000:{bus}:00): {code}, pid=1, name=python"
REMAP_PENDING = ("GPU 00000000:{bus}:00.0\n    Remapped Rows\n        Correctable Error                 : 0\n"
                 "        Uncorrectable Error               : 1\n        Pending                           : Yes\n"
                 "        Remapping Failure Occurred        : No")


def report(tmp_path, append=None, replace=None, peers=0, **state):
    run = RunBuilder(tmp_path)
    run.add_node(INSTANCE_ID, HOSTNAME, changed_files(append, replace), **state)
    for number in range(peers):
        name = f"ip-10-1-4-{number + 2}"
        run.add_node(f"i-0a1b2c3d4e5f6010{number}", name, changed_files(hostname=name))
    return build_report(run.write(), run.state(), workers=1)


def by_id(doc):
    return {finding["id"]: finding for finding in doc["findings"]}


def test_a_double_bit_error_is_one_finding_with_its_remap_under_it(tmp_path):
    kern = "\n".join([XID.format(minute=1, bus="86", code=48), XID.format(minute=1, bus="86", code=63)])
    doc = report(tmp_path, append={"kern.log": kern, "nvidia_smi_q.txt": REMAP_PENDING.format(bus="86")})
    findings = by_id(doc)
    assert "gpu.xid:63" not in findings and "gpu.remap_pending" not in findings
    (node,) = findings["gpu.xid:48"]["nodes"]
    assert {item["id"] for item in node["also_seen"]} == {"gpu.xid:63", "gpu.remap_pending"}
    assert node["gpus"] == ["0000:86:00"]
    summary = {item["id"]: item["node_set"] for item in findings["gpu.xid:48"]["also_seen"]}
    assert summary == {"gpu.xid:63": HOSTNAME, "gpu.remap_pending": HOSTNAME}
    assert findings["gpu.xid:48"]["severity"] == "critical"


def test_a_consequence_on_another_gpu_is_its_own_finding(tmp_path):
    kern = "\n".join([XID.format(minute=1, bus="86", code=48), XID.format(minute=2, bus="53", code=63)])
    doc = report(tmp_path, append={"kern.log": kern, "nvidia_smi_q.txt": REMAP_PENDING.format(bus="53")})
    findings = by_id(doc)
    assert "also_seen" not in findings["gpu.xid:48"]["nodes"][0]
    # The remap on 53 follows the Xid 63 of that GPU, not the 48 of another one.
    assert [item["id"] for item in findings["gpu.xid:63"]["nodes"][0]["also_seen"]] == ["gpu.remap_pending"]


def test_chains_fold_to_their_root_and_loops_end(tmp_path):
    kern = "\n".join([XID.format(minute=1, bus="86", code=45), XID.format(minute=2, bus="86", code=154)])
    findings = by_id(report(tmp_path, append={"kern.log": kern}))
    # 45 and 154 each follow "any Xid": one of them stands, the other is under it, neither is lost.
    assert len([f for f in findings if f.startswith("gpu.xid:")]) == 1
    (standing,) = [f for f in findings.values() if f["rule"] == "gpu.xid"]
    assert len(standing["nodes"][0]["also_seen"]) == 1


def test_no_space_is_the_full_disk_not_a_second_fault(tmp_path):
    doc = report(tmp_path, replace={"disk_usage.txt": "Filesystem Size Used Avail Use% Mounted on\n"
                                                      "/dev/root 485G 485G 0 100% /\n"},
                 append={"syslog": "Nov 22 10:01:02 ip-10-1-4-1 python[50211]: OSError: [Errno 28] No space left "
                                   "on device: '/tmp/x'"})
    findings = by_id(doc)
    assert "disk.enospc" not in findings
    assert [item["id"] for item in findings["disk.full:/"]["nodes"][0]["also_seen"]] == ["disk.enospc"]


def test_thermal_slowdown_is_one_finding_per_cause_naming_every_gpu(tmp_path):
    sections = "".join(f"GPU 00000000:{bus}:00.0\n    Clocks Event Reasons\n"
                       f"        HW Slowdown                       : Active\n"
                       f"            HW Thermal Slowdown           : Active\n" for bus in ("53", "64"))
    doc = report(tmp_path, replace={"nvidia_smi_q.txt": sections})
    thermal = [f for f in doc["findings"] if f["rule"] == "gpu.thermal_power"]
    assert [f["key"] for f in thermal] == ["HW thermal slowdown, active"]
    assert thermal[0]["nodes"][0]["gpus"] == ["0000:53:00", "0000:64:00"]
    assert thermal[0]["nodes"][0]["count"] == 2


def test_a_drained_node_is_never_healthy_even_for_an_info_reason(tmp_path):
    own = ("NodeName=ip-10-1-4-1 Arch=x86_64\n   State=IDLE+DRAIN ThreadsPerCore=2\n"
           "   Reason=waiting for the new NIC [alice@2026-11-22T09:58:12]\n")
    doc = report(tmp_path, replace={"scontrol_show_node.txt": own}, peers=1)
    reason = by_id(doc)["slurm.reason:waiting for the new NIC"]
    assert reason["severity"] == "info"
    assert doc["nodes"]["healthy"] == 1 and doc["nodes"]["unavailable"] == 1
    assert doc["nodes"]["unavailable_set"] == HOSTNAME
    # The state itself is folded under the reason that explains it.
    assert [item["id"] for item in reason["nodes"][0]["also_seen"]] == ["slurm.state:drained"]


def test_a_node_in_a_maintenance_reservation_is_out_of_service(tmp_path):
    sinfo = ("PARTITION AVAIL TIMELIMIT NODES STATE NODELIST\ndev* up infinite 1 idle ip-10-1-4-2\n"
             "dev* up infinite 1 maint ip-10-1-4-1\n")
    doc = report(tmp_path, replace={"sinfo.txt": sinfo}, peers=1)
    assert by_id(doc)["slurm.state:maintenance"]["severity"] == "info"
    assert doc["nodes"]["healthy"] == 1


@pytest.mark.parametrize("causes, message", [
    (["gpu.nope"], "names no other rule"),
    (["not a rule"], "must list finding ids"),
    ({"63": "gpu.xid:48"}, "must list finding ids"),
])
def test_a_broken_consequence_is_refused(causes, message):
    rule = {"id": "gpu.test", "title": "t", "severity": "info", "files": ["kern.log"], "pattern": "x",
            "meaning": "m", "action": "a", "consequence_of": causes}
    with pytest.raises(UsageError, match=message):
        catalog_module.parse({"version": 1, "rules": [rule]})


def test_every_cause_the_catalog_names_exists():
    catalog = catalog_module.load()
    assert any(rule.consequence_of for rule in catalog.rules)
    assert catalog.rule("gpu.xid").consequences("63") == ("gpu.xid:48", "gpu.xid:94", "gpu.xid:95", "gpu.xid:140")
    assert catalog.rule("gpu.xid").consequences("79") == ()
