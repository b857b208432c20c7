"""Every rule of the signature catalog fires on its positive fixture, and none fires on a healthy node.

The cases are data (tests/fixtures/bundles/positive.yaml): each changes the healthy bundle, the
node's state record or its Kubernetes objects, and says which finding must appear, how severe,
and on which node.
"""

from __future__ import annotations

import time

import pytest
import yaml

from collectors.errors import UsageError
from collectors.report import catalog as catalog_module
from collectors.report.engine import build_report
from tests.fixtures.bundles.builder import (
    HEALTHY,
    HOSTNAME,
    INSTANCE_ID,
    RunBuilder,
    changed_files,
    cluster_event,
    kube_node,
    kube_pod,
    positive_cases,
    write_cluster_api_bundle,
)

CASES = positive_cases()


def report_for_case(tmp_path, case: dict) -> dict:
    run = RunBuilder(tmp_path)
    files = None if case.get("no_bundle") else changed_files(case.get("append"), case.get("replace"),
                                                             remove=case.get("remove"))
    run.add_node(INSTANCE_ID, HOSTNAME, files, **case.get("state", {}))
    for number in range(case.get("peers", 0)):
        run.add_node(f"i-0a1b2c3d4e5f6010{number}", f"ip-10-1-4-{number + 2}",
                     changed_files(hostname=f"ip-10-1-4-{number + 2}"))
    add_kube(run, case.get("kube"))
    run_dir = run.write()
    if case.get("cluster_api"):
        api = case["cluster_api"]
        write_cluster_api_bundle(run_dir, [cluster_event(**event) for event in api.get("events", [])],
                                 api.get("streams", {}))
    return build_report(run_dir, run.state(), workers=1)


def add_kube(run: RunBuilder, kube: dict | None) -> None:
    if kube is None:
        return
    run.cluster_type = "eks"
    name = f"hyperpod-{INSTANCE_ID}"
    run.kube_nodes.append(kube_node(name, kube.get("labels"), kube.get("conditions")))
    for pod in kube.get("pods", []):
        run.kube_pods.append(kube_pod(pod["name"], name, pod.get("containers", []), pod.get("deleted_minutes_ago"),
                                      collected_at=time.time()))


@pytest.mark.parametrize("rule_id, case", CASES, ids=[f"{rule}-{i}" for i, (rule, _) in enumerate(CASES)])
def test_rule_fires_on_its_positive_fixture(tmp_path, rule_id, case):
    doc = report_for_case(tmp_path, case)
    expect = case["expect"]
    # A rule with same_as reports into the finding of the rule it names.
    finding_rule, key = catalog_module.load().rule(rule_id).same_as or (rule_id, expect.get("key"))
    if expect.get("absent"):
        assert not [f for f in doc["findings"] if f["rule"] in (rule_id, finding_rule)], doc["findings"]
        return
    if expect.get("folded_into"):
        # One fault, one finding: the rule fired, and its finding is shown under its cause's.
        (cause,) = [f for f in doc["findings"] if f["id"] == expect["folded_into"]]
        folded = [item for node in cause["nodes"] for item in node.get("also_seen", [])]
        assert finding_rule in {item["id"].split(":")[0] for item in folded}, cause
        assert not [f for f in doc["findings"] if f["rule"] == finding_rule], doc["findings"]
        return
    found = [f for f in doc["findings"] if f["rule"] == finding_rule and f["key"] == key]
    assert found, [(f["id"], f["node_set"]) for f in doc["findings"]]
    finding = found[0]
    assert finding["severity"] == expect["severity"]
    wanted = expect.get("nodes") or [expect.get("node", HOSTNAME)]
    assert [node["hostname"] for node in finding["nodes"]] == wanted
    evidence = finding["nodes"][0]["evidence"]
    assert evidence and all(item["text"] for item in evidence)
    assert finding["action"] and finding["meaning"]


def test_every_rule_has_a_positive_fixture():
    rules = {rule.id for rule in catalog_module.load().rules}
    assert rules - {rule_id for rule_id, _ in CASES} == set()
    assert {rule_id for rule_id, _ in CASES} - rules == set()


def test_healthy_nodes_give_no_finding_at_all(tmp_path):
    run = RunBuilder(tmp_path, cluster_type="eks")
    for number in range(3):
        hostname = f"ip-10-1-4-{number + 1}"
        run.add_node(f"i-0a1b2c3d4e5f6000{number}", hostname, changed_files(hostname=hostname))
        run.kube_nodes.append(kube_node(f"hyperpod-i-0a1b2c3d4e5f6000{number}"))
        run.kube_pods.append(kube_pod(f"trainer-{number}", f"hyperpod-i-0a1b2c3d4e5f6000{number}",
                                      [{"name": "pytorch"}]))
    doc = build_report(run.write(), run.state(), workers=1)
    assert doc["findings"] == []
    assert doc["nodes"]["healthy"] == 3 and doc["kubectl"]["read"]
    # The healthy bundle is realistic enough that every fact the fleet checks compare is read.
    assert set(doc["fleet"]["worker-group-1"]) == {"driver", "cuda", "kernel", "efa_installer", "efa_driver",
                                                   "gpus", "efa_devices"}
    assert doc["fleet"]["worker-group-1"]["gpus"] == {"8": 3}
    # Counters start from a known zero, so that a later run can say they grew.
    assert [counters["nvlink_errors"] for counters in doc["counters"].values()] == [0, 0, 0]


def test_evidence_names_file_and_line(tmp_path):
    case = {"append": {"kern.log": "Nov 22 10:01:02 ip-10-1-4-1 kernel: NVRM: Xid (PCI:0000:53:00): 79, pid=1"}}
    doc = report_for_case(tmp_path, case)
    (finding,) = [f for f in doc["findings"] if f["id"] == "gpu.xid:79"]
    (item,) = finding["nodes"][0]["evidence"]
    healthy_lines = len((HEALTHY / "kern.log").read_text().splitlines())
    assert (item["file"], item["line"]) == ("kern.log", healthy_lines + 1)
    assert item["text"].endswith("NVRM: Xid (PCI:0000:53:00): 79, pid=1")


def test_the_same_kernel_line_in_three_logs_counts_once(tmp_path):
    line = "NVRM: Xid (PCI:0000:53:00): 79, pid=1, GPU has fallen off the bus."
    doc = report_for_case(tmp_path, {"append": {"kern.log": line, "dmesg_T.txt": line, "journal_kernel.txt": line}})
    (finding,) = [f for f in doc["findings"] if f["id"] == "gpu.xid:79"]
    assert finding["nodes"][0]["count"] == 1
    assert len(finding["nodes"][0]["evidence"]) == 1  # the same text from three files is one line of proof


@pytest.mark.parametrize("change, message", [
    ({"severity": "urgent"}, "severity must be one of"),
    ({"pattern": "Xid (("}, "not a valid regex"),
    ({"key": "nope"}, "key 'nope' is not a named group"),
    ({"title": "Xid {pid}"}, "may only use"),
    ({"when": {"code": "about 5"}}, "needs a named capture and a test"),
    ({"test": "pcie_width"}, "exactly one of pattern, csv, test"),
    ({"action": ""}, "needs a non-empty `action`"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"first_per_gpu": "gpu"}, "first_per_gpu needs a pattern with a key and a named group"),
])
def test_a_broken_rule_is_refused_with_its_id(change, message):
    rule = {"id": "gpu.test", "title": "Xid {code}", "severity": "critical", "files": ["kern.log"],
            "pattern": r"Xid \((?P<bdf>[^)]+)\): (?P<code>\d+)", "key": "code", "meaning": "m", "action": "a"}
    rule.update(change)
    with pytest.raises(UsageError, match=r"rule gpu\.test: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        catalog_module.parse({"version": 1, "rules": [rule]})


def test_a_fault_seen_in_two_files_is_one_finding_with_both_proofs(tmp_path):
    case = {"append": {"dmesg_T.txt": "[Sun Nov 22 10:01:02 2026] NVRM: GPU 0000:53:00.0: GPU has fallen off the bus.",
                       "kern.log": "Nov 22 10:01:02 ip-10-1-4-1 kernel: NVRM: Xid (PCI:0000:53:00): 79, pid=1"}}
    doc = report_for_case(tmp_path, case)
    assert [f["id"] for f in doc["findings"]] == ["gpu.xid:79"]
    files = {item["file"] for item in doc["findings"][0]["nodes"][0]["evidence"]}
    assert files == {"dmesg_T.txt", "kern.log"}


def test_evidence_from_another_nodes_bundle_says_whose(tmp_path):
    line = "Not responding                                               slurm     2026-11-22T09:12:45 ip-10-1-4-2"
    doc = report_for_case(tmp_path, {"append": {"sinfo_R.txt": line}})
    (finding,) = [f for f in doc["findings"] if f["rule"] == "slurm.reason"]
    assert finding["nodes"][0]["hostname"] == "ip-10-1-4-2"
    assert finding["nodes"][0]["evidence"][0]["bundle"] == HOSTNAME
    own = report_for_case(tmp_path / "own", {"append": {"kern.log": "NVRM: Xid (PCI:0000:53:00): 79, pid=1"}})
    assert own["findings"][0]["nodes"][0]["evidence"][0]["bundle"] is None


@pytest.mark.parametrize("same_as, message", [("gpu.nope", "must be another rule"), ("a.b", "must be another rule")])
def test_same_as_must_name_another_rule_without_one(same_as, message):
    rule = {"id": "a.b", "title": "t", "severity": "info", "files": ["x"], "pattern": "x", "meaning": "m",
            "action": "a", "same_as": same_as}
    with pytest.raises(UsageError, match=message):
        catalog_module.parse({"version": 1, "rules": [rule]})


def test_duplicate_rule_ids_and_unknown_tests_are_refused():
    rule = {"id": "a.b", "title": "t", "severity": "info", "source": "state", "test": "hyperpod_status",
            "meaning": "m", "action": "a"}
    with pytest.raises(UsageError, match="used twice"):
        catalog_module.parse({"version": 1, "rules": [rule, rule]})
    with pytest.raises(UsageError, match="unknown state test 'nope'"):
        catalog_module.parse({"version": 1, "rules": [dict(rule, test="nope")]})
    with pytest.raises(UsageError, match="integer `version`"):
        catalog_module.parse({"rules": []})


def test_catalog_file_is_versioned_yaml_with_meaning_and_action_everywhere():
    raw = yaml.safe_load(catalog_module.CATALOG_PATH.read_text())
    assert isinstance(raw["version"], int)
    catalog = catalog_module.load()
    xid = catalog.rule("gpu.xid")
    assert {code: xid.describe(code)["severity"] for code in ("79", "119", "13", "31", "43", "48")} == {
        "79": "critical", "119": "critical", "13": "warning", "31": "warning", "43": "info", "48": "critical"}
