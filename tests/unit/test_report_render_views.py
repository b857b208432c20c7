"""What report.html's pictures are drawn from: log stamps in UTC, the nodes with their findings, the
GPU matrix and the timeline, on the sick fleet's report (tests/fixtures/sick_fleet.py) as the real
engine makes it."""

from __future__ import annotations

import datetime as dt

import pytest

from collectors.report import logtime
from collectors.report.engine import build_report
from collectors.report.fleetview import (NODE_WIDE, bus_id, gpu_matrices, node_views, outcome_counts,
                                         timeline_events)
from tests.fixtures import sick_fleet

UTC = dt.timezone.utc
COLLECTED = dt.datetime(2026, 11, 22, 11, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    run = sick_fleet.build(tmp_path_factory.mktemp("runs"))
    return build_report(run.run_dir, run.state(), workers=1)


@pytest.fixture(scope="module")
def views(doc):
    return node_views(doc)


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


# -- log stamps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, offset, expected, zone_known", [
    # journalctl -o short-iso writes its offset without a colon (systemd issue 26639); RFC 3339 with one.
    ("2026-11-22T12:15:09+0200 ip-10-1-4-4 kernel: NVRM: Xid", None, at(2026, 11, 22, 10, 15, 9), True),
    ("2026-11-22T05:15:09-05:00 host rsyslogd: x", None, at(2026, 11, 22, 10, 15, 9), True),
    ("2026-11-20T07:48:22.155Z INFO [ClusterAgent] Starting", None, at(2026, 11, 20, 7, 48, 22), True),
    # dmesg -T and syslog carry no zone: the node's offset (from its journal) converts them ...
    ("[Sun Nov 22 12:15:09 2026] NVRM: Xid", dt.timedelta(hours=2), at(2026, 11, 22, 10, 15, 9), True),
    ("Nov 22 12:15:09 ip-10-1-4-4 kernel: [181234.5] NVRM", dt.timedelta(hours=2), at(2026, 11, 22, 10, 15, 9), True),
    # ... and without one they are taken as UTC, and said to be.
    ("Nov  2 08:30:00 host kernel: [1.5] Out of memory", None, at(2026, 11, 2, 8, 30), False),
    ("[Mon Nov  2 08:30:00 2026] x", None, at(2026, 11, 2, 8, 30), False),
    # A syslog date after the collection is from the year before (RFC 3164 stamps have no year).
    ("Dec 31 23:59:59 host kernel: x", None, at(2025, 12, 31, 23, 59, 59), False),
    ("[2026-11-22T09:58:12.123] error: slurmd: Kill task failed", None, at(2026, 11, 22, 9, 58, 12), False),
])
def test_a_line_stamp_becomes_utc(line, offset, expected, zone_known):
    found = logtime.line_time(line, offset, COLLECTED)
    assert found == logtime.LineTime(expected, zone_known)


@pytest.mark.parametrize("line", ["\t Link 17: <inactive>", "/dev/root 485G 475G 9.8G 98% /",
                                  "Feb 30 10:00:00 host x", "[Sun Xyz 22 10:00:00 2026] x", ""])
def test_a_line_without_a_stamp_has_no_time(line):
    assert logtime.line_time(line, None, COLLECTED) is None


def test_the_offset_is_read_only_from_a_zoned_stamp():
    assert logtime.zone_offset("2026-11-22T12:15:09+0200 host kernel: x") == dt.timedelta(hours=2)
    assert logtime.zone_offset("2026-11-22T12:15:09-0330 host kernel: x") == -dt.timedelta(hours=3, minutes=30)
    assert logtime.zone_offset("[Sun Nov 22 12:15:09 2026] x") is None
    assert logtime.zone_offset("2026-11-22T12:15:09 no zone") is None


@pytest.mark.parametrize("text, expected", [
    ("NVRM: Xid (PCI:0000:53:00): 79, pid=1", "0000:53:00"),
    ("3, 00000000:86:00.0, NVIDIA H100 80GB HBM3", "0000:86:00"),
    ("Unable to determine the device handle for GPU0000:CA:00.0: Unknown Error", "0000:ca:00"),
    ("Nov 22 10:01:02 ip-10-1-4-1 kernel: [181234.5] 2026-11-22T10:01:02", None),
    ("MAC 0a:1b:2c:3d:4e:5f", None),
])
def test_a_pci_address_is_found_in_text(text, expected):
    assert bus_id(text) == expected


# -- nodes ---------------------------------------------------------------------------------------------

def test_every_node_of_the_run_is_one_view_with_its_findings_worst_first(doc, views):
    assert sorted(view.key for view in views) == sorted(doc["node_index"])
    by_name = {view.name: view for view in views}
    # Natural order inside a group: what the eye expects of ip-10-1-4-2 and ip-10-1-4-10.
    assert [view.name for view in views if view.group == "worker-group-1"] == [f"ip-10-1-4-{n}" for n in range(1, 9)]
    sick = by_name["ip-10-1-4-7"]
    assert [finding.severity for finding in sick.findings] == ["critical", "high"]  # the full disk, then the OOM
    assert by_name["ip-10-1-4-6"].status == "unreachable" and not by_name["ip-10-1-4-6"].read
    assert by_name["ip-10-1-4-8"].findings == [] and by_name["ip-10-1-4-8"].read
    for view in views:  # each finding's nodes, and only those, carry it
        for finding in view.findings:
            listed = doc["findings"][finding.number]["nodes"]
            assert view.key in {node["instance_id"] or node["hostname"] for node in listed}


def test_outcomes_are_counted_per_instance_group(views):
    counts = outcome_counts(views)
    assert counts["worker-group-1"] == {"ok": 7, "unreachable": 1}
    assert counts["worker-group-2"] == {"ok": 1, "ok_with_errors": 1, "skipped": 1, "timeout": 1}


# -- the GPU matrix ------------------------------------------------------------------------------------

def test_each_gpu_cell_has_its_worst_finding_and_its_xids_the_first_first(doc, views):
    matrix = gpu_matrices(doc, views)["worker-group-1"]
    cells = {view.name: row for view, row in matrix.rows}
    assert set(cells) == {"ip-10-1-4-1", "ip-10-1-4-2", "ip-10-1-4-3", "ip-10-1-4-4", "ip-10-1-4-5"}
    xid79 = cells["ip-10-1-4-1"]["0000:53:00"]
    assert xid79.severity == "critical" and xid79.codes[:2] == ["79", "13"]  # 13 came after 79 on that GPU
    assert set(cells["ip-10-1-4-1"]) <= {"0000:53:00", NODE_WIDE}  # nothing on the node's other GPUs
    assert cells["ip-10-1-4-2"]["0000:64:00"].codes[:2] == ["48", "63"]
    assert cells["ip-10-1-4-4"]["0000:75:00"].codes == ["74"] and cells["ip-10-1-4-3"]["0000:86:00"].codes == ["74"]
    # nvidia-smi's CSV row of the ECC fault names the GPU's index; the other columns say only their address.
    assert matrix.index_of.get("0000:64:00") == 1 and "0000:53:00" not in matrix.index_of
    assert matrix.columns[:4] == ["0000:53:00", "0000:64:00", "0000:75:00", "0000:86:00"]
    assert "controller-machine" not in gpu_matrices(doc, views)  # no GPU finding there: no matrix


def test_an_nvswitch_and_a_gpu_finding_without_an_address_are_node_wide():
    doc = {"findings": [
        {"rule": "gpu.sxid", "key": "Fatal", "severity": "critical", "title": "NVSwitch fatal SXid", "id": "gpu.sxid:Fatal",
         "nodes": [{"instance_id": "i-1", "hostname": "h1", "group": "g", "count": 1, "evidence": [
             {"file": "dmesg_T.txt", "line": 3, "text": "nvidia-nvswitch2: SXid (PCI:0000:c8:00.0): 24007, Fatal"}]}]},
        {"rule": "gpu.nvlink_inactive", "key": None, "severity": "critical", "title": "NVLink down",
         "id": "gpu.nvlink_inactive", "nodes": [{"instance_id": "i-2", "hostname": "h2", "group": "g", "count": 1,
                                                 "evidence": [{"file": "x", "line": 1, "text": "Link 17: <inactive>"}]}]}],
        "node_index": {"i-1": {"hostname": "h1", "group": "g", "status": "ok", "read": True},
                       "i-2": {"hostname": "h2", "group": "g", "status": "ok", "read": True}}, "nodes": {}}
    matrix = gpu_matrices(doc, node_views(doc))["g"]
    assert matrix.columns == [NODE_WIDE]
    assert [(view.name, list(cells)) for view, cells in matrix.rows] == [("h1", [NODE_WIDE]), ("h2", [NODE_WIDE])]


# -- the timeline --------------------------------------------------------------------------------------

def test_the_timeline_has_each_fault_at_its_first_moment_in_utc(doc, views):
    events = timeline_events(doc, views)
    assert [event.utc for event in events] == sorted(event.utc for event in events)
    assert all(event.severity != "info" for event in events)
    xid74 = {event.node.name: event.utc for event in events if event.finding_id == "gpu.xid:74"}
    # The fleet-wide event: three nodes within a minute, though ip-10-1-4-4 writes its clock in UTC+2.
    assert xid74 == {"ip-10-1-4-3": at(2026, 11, 22, 10, 15, 3), "ip-10-1-4-4": at(2026, 11, 22, 10, 15, 9),
                     "ip-10-1-4-5": at(2026, 11, 22, 10, 15, 41)}
    first = events[0]
    assert (first.node.name, first.utc, first.zone_known) == ("ip-10-1-4-7", at(2026, 11, 22, 8, 30), True)
    # A node whose only stamps are in its disk table has no event for it.
    assert not any(event.finding_id == "disk.full:/" for event in events)


def test_without_a_journal_line_the_zone_is_said_to_be_assumed(doc, views):
    only_dmesg = {"findings": [{**doc["findings"][0], "nodes": [
        {**node, "evidence": [item for item in node["evidence"] if item["file"] == "dmesg_T.txt"]}
        for node in doc["findings"][0]["nodes"]]}], "node_index": doc["node_index"], "run_id": doc["run_id"],
        "generated": doc["generated"], "nodes": doc["nodes"]}
    events = timeline_events(only_dmesg, node_views(only_dmesg))
    assert events and not any(event.zone_known for event in events)
    assert {event.utc.hour for event in events} >= {10}  # taken as written
