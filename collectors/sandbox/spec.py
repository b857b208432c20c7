"""What a sandbox is to be: its cluster, instance groups and per-node settings, from flags
(`SandboxSpec.simple`) or a scenario file (`SandboxSpec.from_scenario`, docs/scenarios.md), checked
by the scenario rules either way."""

from dataclasses import dataclass, field
from pathlib import Path

from collectors.errors import SandboxError
from collectors.sandbox.faults import SCENARIO_FAULT_DEFAULTS
from collectors.sandbox.scenario import DEFAULT_DISTRIBUTION, check_scenario, load_scenario, node_settings


@dataclass
class GroupSpec:
    name: str
    instance_type: str
    count: int
    role: str = "worker"  # Slurm: "controller" for the group whose node runs slurmctld
    fixture: str = "healthy"  # the fixture pack of the group's nodes (docs/scenarios.md)
    os: str | None = None  # its nodes' distribution and logging; None: the cluster's
    rsyslog: bool | None = None


def default_groups() -> list[GroupSpec]:
    return [GroupSpec("worker-group-1", "ml.g5.8xlarge", 2), GroupSpec("worker-group-2", "ml.p5.48xlarge", 2)]


@dataclass
class SandboxSpec:
    cluster: str = "hp-sandbox"
    type: str = "eks"
    groups: list[GroupSpec] = field(default_factory=default_groups)
    bucket: str = "hyperpod-sandbox-reports"
    region: str = "us-west-2"
    shell: str | None = None  # None: each distribution's own
    os: str = DEFAULT_DISTRIBUTION
    rsyslog: bool | None = None  # None: as the distribution ships
    # Per-node settings of a scenario, keyed "<group>/<index>", and its scenario-wide faults.
    node_settings: dict[str, dict] = field(default_factory=dict)
    faults: dict = field(default_factory=lambda: dict(SCENARIO_FAULT_DEFAULTS))

    @classmethod
    def simple(cls, type: str = "eks", nodes: int = 4) -> "SandboxSpec":
        """`nodes` spread over a g5 group and a p5 group (one group for a single node)."""
        if nodes < 1:
            raise SandboxError(f"a sandbox needs at least one node, not {nodes}")
        if nodes == 1:
            return cls(type=type, groups=[GroupSpec("worker-group-1", "ml.g5.8xlarge", 1)])
        first = (nodes + 1) // 2
        groups = [
            GroupSpec("worker-group-1", "ml.g5.8xlarge", first),
            GroupSpec("worker-group-2", "ml.p5.48xlarge", nodes - first),
        ]
        return cls(type=type, groups=groups)

    @classmethod
    def from_scenario(cls, source: "str | Path | dict") -> "SandboxSpec":
        """A spec from a scenario file (docs/scenarios.md) or its parsed dict; SandboxError when bad."""
        scenario = load_scenario(source)
        groups = [
            GroupSpec(group["name"], group["instance_type"], group["count"], group.get("role", "worker"),
                      group.get("fixture", "healthy"), group.get("os"), group.get("rsyslog"))
            for group in scenario["instance_groups"]
        ]
        optional = {key: scenario[key] for key in ("region", "shell", "bucket", "os", "rsyslog") if key in scenario}
        return cls(cluster=scenario["cluster"], type=scenario["type"], groups=groups,
                   node_settings=scenario["nodes"], faults=scenario["faults"], **optional)

    def as_scenario(self) -> dict:
        """The spec in the scenario format, so flags and files are checked by the same rules."""
        def set_only(settings: dict) -> dict:
            return {key: value for key, value in settings.items() if value is not None}

        return set_only({
            "cluster": self.cluster, "type": self.type, "region": self.region, "shell": self.shell,
            "os": self.os, "rsyslog": self.rsyslog,
            "bucket": self.bucket, "nodes": self.node_settings, "faults": self.faults,
            "instance_groups": [
                set_only({"name": group.name, "instance_type": group.instance_type, "count": group.count,
                          "role": group.role, "fixture": group.fixture, "os": group.os, "rsyslog": group.rsyslog})
                for group in self.groups
            ],
        })

    def validate(self) -> None:
        check_scenario(self.as_scenario())

    def node_settings_for(self, group_name: str, index: int) -> dict:
        group = next(group for group in self.groups if group.name == group_name)
        distribution = {"os": group.os or self.os, "shell": self.shell,
                        "rsyslog": self.rsyslog if group.rsyslog is None else group.rsyslog}
        return node_settings(self.node_settings, {"name": group.name, "fixture": group.fixture, **distribution}, index)
