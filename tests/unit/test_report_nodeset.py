import pytest

from collectors.report.nodeset import expand, fold


@pytest.mark.parametrize("names, folded", [
    (["ip-10-1-4-1", "ip-10-1-4-2", "ip-10-1-4-3", "ip-10-1-4-9"], "ip-10-1-4-[1-3,9]"),
    (["ip-10-1-4-9", "ip-10-1-4-1"], "ip-10-1-4-[1,9]"),
    (["ip-10-1-4-7"], "ip-10-1-4-7"),
    (["ip-10-1-4-1", "ip-10-1-5-1", "ip-10-1-5-2"], "ip-10-1-4-1,ip-10-1-5-[1-2]"),
    (["node01", "node02", "node03", "node7"], "node7,node[01-03]"),
    (["login", "ip-10-1-4-2", "ip-10-1-4-1", "ip-10-1-4-1"], "login,ip-10-1-4-[1-2]"),
    ([], ""),
])
def test_fold(names, folded):
    assert fold(names) == folded


@pytest.mark.parametrize("hostlist, names", [
    ("ip-10-1-4-[1-3,9]", ["ip-10-1-4-1", "ip-10-1-4-2", "ip-10-1-4-3", "ip-10-1-4-9"]),
    ("ip-10-1-4-[1-2],ip-10-1-5-7", ["ip-10-1-4-1", "ip-10-1-4-2", "ip-10-1-5-7"]),
    ("node[01-02]", ["node01", "node02"]),
    ("ip-10-1-4-12", ["ip-10-1-4-12"]),
])
def test_expand_reads_slurm_hostlists(hostlist, names):
    assert expand(hostlist) == names


def test_fold_and_expand_round_trip():
    names = [f"ip-10-2-{third}-{fourth}" for third in (3, 4) for fourth in (1, 2, 3, 5, 8, 9, 10)]
    assert sorted(expand(fold(names))) == sorted(names)
