"""The catalog reads only what the node script writes: every file glob of every node rule and fact
matches a file that an item of the node script produces, on EKS or Slurm nodes. And the registry of
checks written in Python (collectors/report/checks/) holds only what some rule's `test:` names.

The list of files is derived from the item declarations themselves (`hpc_item NAME OUTPUT ...` in
bash/common.sh, eks.sh and slurm.sh) and from what collect.sh and lib.sh write into the report
folder, never kept by hand: a rule whose file no item writes (a DCGM rule reading `dcgm*` when no
item collected DCGM) fails here.
"""

from __future__ import annotations

import fnmatch
import re

import pytest

from collectors.nodescript import BASH_DIR
from collectors.report.catalog import SOURCES, load
from collectors.report.checks import TESTS

ITEM_RE = re.compile(r"^\s*hpc_item\s+(\w+)\s+(\S+)", re.MULTILINE)
# Files lib.sh and collect.sh write straight into the report folder (manifest.tsv, ...).
REPORT_FILE_RE = re.compile(r'>"\$HPC_REPORT_DIR/([\w.]+)"')
# The operator's commands: command_NN_<safe text>.txt (collect.sh hpc_run_user_commands).
USER_COMMAND_RE = re.compile(r"printf -v name '(command_)%02d'")
CLUSTER_PARTS = {"eks": ("common.sh", "eks.sh"), "slurm": ("common.sh", "slurm.sh")}


def item_outputs(part: str) -> list[str]:
    return [output for _, output in ITEM_RE.findall((BASH_DIR / part).read_text())]


def produced(cluster_type: str) -> list[str]:
    """Sample paths of what a node of this cluster type can write: files as named, a folder item as
    a file under the folder and its `.log`."""
    paths = []
    for part in CLUSTER_PARTS[cluster_type]:
        for output in item_outputs(part):
            paths += [f"{output}file", f"{output.rstrip('/')}.log"] if output.endswith("/") else [output]
    for part in ("lib.sh", "collect.sh"):
        text = (BASH_DIR / part).read_text()
        paths += REPORT_FILE_RE.findall(text)
        paths += [f"{prefix}01_cat_proc_meminfo.txt" for prefix in USER_COMMAND_RE.findall(text)]
    return paths


PRODUCED = {cluster_type: produced(cluster_type) for cluster_type in CLUSTER_PARTS}


def matched(glob: str, cluster_type: str) -> bool:
    return any(fnmatch.fnmatchcase(path, glob) for path in PRODUCED[cluster_type])


def readers():
    catalog = load()
    yield from ((f"rule {rule.id}", rule.files) for rule in catalog.rules_from("node"))
    yield from ((f"fact {fact.name}", fact.files) for fact in catalog.facts)


def test_the_file_list_is_derived_from_the_item_declarations():
    # Items of both cluster types, of one only, folders, the manifest and the operator's commands.
    for cluster_type in CLUSTER_PARTS:
        assert {"systemd_failed.txt", "nvidia_smi_q.txt", "dcgm_health.txt", "manifest.tsv"} <= set(
            PRODUCED[cluster_type])
        assert matched("command_*", cluster_type) and matched("rotated_logs/*", cluster_type)
    assert matched("sinfo_R.txt", "slurm") and not matched("sinfo_R.txt", "eks")
    assert matched("kubelet_journal.txt", "eks") and not matched("kubelet_journal.txt", "slurm")
    assert not matched("dcgm*.json", "eks")


@pytest.mark.parametrize("reader, globs", list(readers()), ids=[name for name, _ in readers()])
def test_every_glob_of_every_reader_matches_a_file_an_item_writes(reader, globs):
    dead = [glob for glob in globs if not any(matched(glob, cluster_type) for cluster_type in CLUSTER_PARTS)]
    assert not dead, f"{reader} reads {dead}, which no item of bash/common.sh, eks.sh or slurm.sh writes"


@pytest.mark.parametrize("cluster_type", sorted(CLUSTER_PARTS))
def test_each_cluster_type_has_its_rules(cluster_type):
    """Rules of one orchestrator read only that orchestrator's files; every other rule reads something
    both write."""
    for rule in load().rules_from("node"):
        applies = any(matched(glob, cluster_type) for glob in rule.files)
        if rule.id.startswith("slurm."):
            assert applies == (cluster_type == "slurm"), rule.id
        else:
            assert applies, f"{rule.id} reads nothing an {cluster_type} node writes: {rule.files}"


def test_every_check_in_the_registry_is_named_by_a_rule_of_its_source():
    """A check no rule names is dead code (the catalog's load already refuses a name not registered)."""
    named = {(rule.source, rule.test) for rule in load().rules if rule.test}
    registered = {(source, name) for source, tests in TESTS.items() for name in tests}
    assert set(TESTS) <= set(SOURCES)
    assert registered - named == set(), "registered checks no rule of catalog.yaml names"
