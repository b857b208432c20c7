"""When the sandbox's session plugin drops a session: early, mid-script, or only the next K times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.sandbox.plugin import EARLY_DROP_WINDOW_S, session_faults
from collectors.sandbox.faults import NODE_FAULT_DEFAULTS, SCENARIO_FAULT_DEFAULTS

NODE = "i-0123456789abcdef0"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "nodes" / NODE).mkdir(parents=True)
    return tmp_path


def arm(root: Path, scenario: dict | None = None, node: dict | None = None) -> None:
    """Write ROOT/faults.json as the sandbox server does."""
    faults = {"faults": {**SCENARIO_FAULT_DEFAULTS, **(scenario or {})},
              "nodes": {NODE: {**NODE_FAULT_DEFAULTS, **node}} if node else {}}
    (root / "faults.json").write_text(json.dumps(faults))


def test_mid_session_drops_fall_in_their_window_and_early_ones_in_the_first_seconds(root):
    arm(root, {"mid_session_drop_rate": 1, "mid_session_drop_window": [10, 20]})
    assert all(10 <= session_faults(root, NODE).drop_after_s <= 20 for _ in range(50))
    arm(root, {"session_drop_rate": 1, "mid_session_drop_rate": 1})
    low, high = EARLY_DROP_WINDOW_S
    assert all(low <= session_faults(root, NODE).drop_after_s <= high for _ in range(50))
    arm(root)
    assert session_faults(root, NODE).drop_after_s is None


def test_a_counted_drop_ends_only_the_next_sessions_and_counts_afresh_when_the_faults_change(root):
    arm(root, node={"session_drop_after": 4, "session_drops": 2})
    assert [session_faults(root, NODE).drop_after_s for _ in range(4)] == [4, 4, None, None]
    arm(root, node={"session_drop_after": 5, "session_drops": 1})
    assert [session_faults(root, NODE).drop_after_s for _ in range(2)] == [5, None]
    arm(root, node={"session_drop_after": 3})  # no count: every session drops
    assert [session_faults(root, NODE).drop_after_s for _ in range(3)] == [3, 3, 3]
