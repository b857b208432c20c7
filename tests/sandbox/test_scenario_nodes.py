"""The scenario format's node distributions, Session Manager preferences and session drops (docs/scenarios.md)."""

from __future__ import annotations

import pytest

from collectors.errors import SandboxError
from collectors.sandbox import SandboxSpec
from collectors.sandbox.faults import check_fault_change
from collectors.sandbox.scenario import load_scenario


def scenario(**extra) -> dict:
    groups = extra.pop("groups", [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 1}])
    return {"cluster": "hp", "type": "eks", "instance_groups": groups, **extra}


def node(spec: SandboxSpec, group: str = "worker-group-1") -> dict:
    return spec.node_settings_for(group, 0)


def test_each_distribution_brings_its_own_shell_and_logging():
    assert {key: node(SandboxSpec.from_scenario(scenario()))[key] for key in ("os", "rsyslog", "shell")} == \
        {"os": "ubuntu-20.04", "rsyslog": True, "shell": "sh"}
    assert {key: node(SandboxSpec.from_scenario(scenario(os="al2023")))[key] for key in ("os", "rsyslog", "shell")} == \
        {"os": "al2023", "rsyslog": False, "shell": "bash"}  # AL2023 ships without rsyslog: journald only


def test_a_group_overrides_the_clusters_distribution_and_the_shell_setting_overrides_both():
    groups = [{"name": "slurm-workers", "instance_type": "ml.g5.8xlarge", "count": 1},
              {"name": "eks-like", "instance_type": "ml.g5.8xlarge", "count": 1, "os": "al2023", "rsyslog": True}]
    spec = SandboxSpec.from_scenario(scenario(os="ubuntu-22.04", groups=groups))
    assert (node(spec, "slurm-workers")["os"], node(spec, "eks-like")["os"]) == ("ubuntu-22.04", "al2023")
    assert node(spec, "eks-like")["rsyslog"] is True
    assert node(SandboxSpec.from_scenario(scenario(os="al2023", shell="sh")))["shell"] == "sh"
    assert SandboxSpec.from_scenario(spec.as_scenario()).node_settings_for("eks-like", 0) == node(spec, "eks-like")


@pytest.mark.parametrize("bad, message", [
    (scenario(os="centos-7"), "os: must be one of ubuntu-20.04, ubuntu-22.04, al2023"),
    (scenario(faults={"run_as": "root"}), "faults.run_as: Session Manager does not support root as the Run-As user"),
    (scenario(faults={"mid_session_drop_window": [30, 5]}), "faults.mid_session_drop_window: must end after it starts"),
    (scenario(faults={"mid_session_drop_window": [5]}), "faults.mid_session_drop_window: must be [from, to]"),
    (scenario(nodes={"worker-group-1/0": {"faults": {"session_drops": 0}}}),
     "nodes.worker-group-1/0.faults.session_drops: must be an integer at least 1"),
])
def test_what_the_real_services_refuse_is_refused(bad, message):
    with pytest.raises(SandboxError, match="scenario: " + message.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(bad)


def test_preferences_and_drops_change_at_run_time_and_reset_with_null():
    change = check_fault_change({"faults": {"run_as": "ssm-user", "shell_profile": "cd /tmp", "mid_session_drop_rate": 0.1},
                                 "nodes": {"i-1": {"session_drop_after": 3, "session_drops": 1}}}, {"i-1"})
    assert change["faults"] == {"run_as": "ssm-user", "shell_profile": "cd /tmp", "mid_session_drop_rate": 0.1}
    assert change["nodes"]["i-1"] == {"session_drop_after": 3, "session_drops": 1}
    assert check_fault_change({"faults": {"run_as": None}}, set())["faults"] == {"run_as": None}
