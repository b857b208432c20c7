"""The report on evidence we did not write: excerpts of real output from public bug reports and
vendor documents (tests/fixtures/realworld/, one file each, with its source address and versions).

Each excerpt goes into the healthy bundle where the node script would have put it (`file`,
appended or replacing the file), and the report must raise what a good engineer would, one
finding per fault (`expect`, finding id: severity; `folded`, consequence: the finding it is
shown under), nothing else worse than info, and for the healthy look-alikes nothing of `absent`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml

from collectors.report.engine import TROUBLE, build_report
from tests.fixtures.bundles.builder import HOSTNAME, INSTANCE_ID, RunBuilder, changed_files

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "realworld"
EXCERPTS = sorted(CORPUS.glob("*.yaml"))
KEYS = {"source", "versions", "note", "file", "how", "text", "remove", "extra", "node", "expect", "folded", "absent"}
# The fault classes of issue 16 and the finding ids that are theirs: each needs excerpts that raise
# it and healthy look-alikes that must not.
CLASSES = {
    "failed services": ("svc.*", "gpu.fabricmgr"),
    "file systems": ("fs.*", "disk.nvme_*", "disk.ioerr"),
    "Slurm drains": ("slurm.*",),
    "PCIe": ("gpu.pcie*",),
    "EFA and NCCL": ("efa.*", "nccl.*"),
    "thermal and power": ("gpu.thermal_power*",),
    "DCGM": ("gpu.dcgm*",),
    "GPU memory and Xids": ("gpu.xid*", "gpu.remap*", "gpu.retired*", "gpu.smi*"),
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def report_on(tmp_path: Path, excerpt: dict) -> dict:
    mode = excerpt.get("how", "append")
    change = {excerpt["file"]: excerpt["text"], **(excerpt.get("extra") or {})}
    files = changed_files(append=change if mode == "append" else None,
                          replace=change if mode == "replace" else None, remove=excerpt.get("remove"))
    run = RunBuilder(tmp_path)
    run.add_node(INSTANCE_ID, HOSTNAME, files)
    return build_report(run.write(), run.state(), workers=1)


def folded_ids(finding: dict) -> set[str]:
    return {item["id"] for node in finding["nodes"] for item in node.get("also_seen", [])}


def test_the_corpus_is_large_and_every_excerpt_says_where_it_is_from():
    assert len(EXCERPTS) >= 60
    for path in EXCERPTS:
        excerpt = load(path)
        assert set(excerpt) <= KEYS, path.name
        assert excerpt["source"].startswith("https://"), path.name
        assert excerpt["versions"] and excerpt["file"] and excerpt["text"].strip(), path.name


@pytest.mark.parametrize("path", EXCERPTS, ids=[path.stem for path in EXCERPTS])
def test_the_report_on_a_real_excerpt_is_what_an_engineer_would_say(tmp_path, path):
    excerpt = load(path)
    doc = report_on(tmp_path, excerpt)
    findings = {finding["id"]: finding for finding in doc["findings"]}
    node = excerpt.get("node", HOSTNAME)
    for finding_id, severity in (excerpt.get("expect") or {}).items():
        assert finding_id in findings, (finding_id, sorted(findings))
        assert findings[finding_id]["severity"] == severity, findings[finding_id]
        hosts = [row["hostname"] for row in findings[finding_id]["nodes"]]
        assert node == "any" or node in hosts, (node, hosts)
    for consequence, cause in (excerpt.get("folded") or {}).items():
        assert consequence not in findings and consequence in folded_ids(findings[cause]), (consequence, cause)
    # One fault, one finding: nothing else worse than info.
    others = [fid for fid, finding in findings.items() if finding["severity"] in TROUBLE
              and fid not in (excerpt.get("expect") or {})]
    assert others == [], others
    reported = set(findings) | {fid for finding in findings.values() for fid in folded_ids(finding)}
    for pattern in excerpt.get("absent") or []:
        assert not fnmatch.filter(reported, pattern), (pattern, sorted(reported))


@pytest.mark.parametrize("name, patterns", CLASSES.items(), ids=list(CLASSES))
def test_every_fault_class_has_real_positives_and_look_alikes(name, patterns):
    raised, spared = set(), set()
    for path in EXCERPTS:
        excerpt = load(path)
        said = list(excerpt.get("expect") or {}) + list(excerpt.get("folded") or {})
        if any(fnmatch.fnmatch(fid, pattern) for fid in said for pattern in patterns):
            raised.add(path.stem)
        if any(fnmatch.fnmatch(absent.rstrip("*") or "x", pattern) or fnmatch.fnmatch(pattern, absent)
               for absent in excerpt.get("absent") or [] for pattern in patterns):
            spared.add(path.stem)
    assert raised, f"no real excerpt raises a {name} finding"
    assert spared, f"no healthy look-alike for {name}"
