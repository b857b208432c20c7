import re

import pytest

from collectors.report.catalog import load
from collectors.report.literals import required_literals


@pytest.mark.parametrize("pattern, literals", [
    (rb"NVRM: Xid \((?P<bdf>[^)]+)\): (?P<code>\d+),", (b"NVRM: Xid (",)),
    (rb"Out of memory: Kill|invoked oom-killer", (b"Out of memory: Kill", b"invoked oom-killer")),
    (rb"^\s*Pending\s*:\s*Yes", (b"Pending",)),
    (rb"(?:ip|nf)_conntrack: table full", (b"_conntrack: table full",)),
    (rb"(?:blk_update_request|I/O error).*dev (\w+)", (b"I/O error", b"blk_update_request")),
    (rb"(?:abc)+ and", (b" and",)),
    (rb"x(?:long literal inside)+y", (b"long literal inside",)),
    (rb"\s(?P<pct>\d+)%\s", (b"%",)),
])
def test_every_match_holds_one_of_the_literals(pattern, literals):
    assert required_literals(re.compile(pattern)) == literals


@pytest.mark.parametrize("pattern", [
    rb"(?i)error",  # case-insensitive: no byte string is certain
    rb"a|\d+",  # one branch has no literal: a match need not hold any
    rb"(?:x)?\d",  # optional
])
def test_no_literal_when_none_is_certain(pattern):
    assert required_literals(re.compile(pattern)) is None


def test_every_pattern_rule_of_the_catalog_has_a_prefilter():
    """Without one a rule runs its regex over every position of every log: fifty times slower."""
    missing = [rule.id for rule in load().rules if rule.pattern is not None and not rule.literals]
    assert missing == []
