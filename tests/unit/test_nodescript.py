"""compose(): which parts, in which order, node options baked in, operator commands kept literal."""

import subprocess

import pytest

from collectors.nodescript import BASH_DIR, NodeOptions, compose, node_options

TRICKY = [
    "df -h",
    "echo 'single' \"double\"",
    "echo $(id -u) `hostname` $HOME ${PATH}",
    "printf 'line1\\nline2'\nsecond physical line",
    "it's; rm -rf / # not run here",
    "back\\slash \t tab",
    "",
    "ünïcode ✓",
]


def part(name: str) -> str:
    return (BASH_DIR / name).read_text()


def definitions(script: str) -> str:
    """Everything before collect.sh: functions and the generated block, nothing that runs."""
    assert script.endswith(part("collect.sh"))
    return script[: -len(part("collect.sh"))]


def commands_back_through_bash(cluster_type: str, commands: list[str]) -> list[str]:
    """Run the definitions in real bash; print the array back."""
    printer = 'for c in "${HPC_USER_COMMANDS[@]}"; do printf "%s\\0" "$c"; done\n'
    script = definitions(compose(cluster_type, commands)) + printer
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1] if out else []


OPTION_NAMES = ["HPC_SINCE", "HPC_FILE_CAP_MB", "HPC_BUNDLE_CAP_MB", "HPC_NVIDIA_BUG_REPORT", "HPC_UPLOAD_MODE",
                "HPC_S3_DESTINATION", "HPC_EKS_COLLECTOR", "HPC_EKS_COLLECTOR_SHA256", "HPC_REDACT_PATTERNS"]


def options_through_bash(options: NodeOptions, env: dict[str, str] | None = None) -> dict[str, str]:
    """The node options the generated block leaves set, in real bash, with `env` as the environment."""
    printer = "".join(f'printf "%s\\0" "${{{name}}}"\n' for name in OPTION_NAMES)
    script = definitions(compose("eks", options=options)) + printer
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env=env or {}).stdout
    return dict(zip(OPTION_NAMES, out.decode().split("\0")[:-1], strict=True))


def test_bash_dir_holds_the_parts():
    assert BASH_DIR.name == "bash" and BASH_DIR.is_absolute()
    for name in ("lib.sh", "redact.sh", "common.sh", "eks.sh", "slurm.sh", "collect.sh"):
        assert (BASH_DIR / name).is_file()


@pytest.mark.parametrize("cluster_type, chosen, other", [("eks", "eks.sh", "slurm.sh"),
                                                         ("slurm", "slurm.sh", "eks.sh")])
def test_parts_in_order_for_each_cluster_type(cluster_type, chosen, other):
    script = compose(cluster_type, ["uptime"])
    assert script.startswith("#!/usr/bin/env bash\n# ")
    header = script.split("\n", 3)[:3]
    assert "generated" in header[1] and cluster_type in header[1]
    assert f"bash/{chosen}" in header[2] and f"bash/{other}" not in header[2]
    positions = [script.index(part(name)) for name in ("lib.sh", "redact.sh", "common.sh", chosen)]
    positions.append(script.index("hpc_default HPC_SINCE "))
    positions.append(script.index("HPC_USER_COMMANDS=("))
    positions.append(script.index(part("collect.sh")))
    assert positions == sorted(positions)
    assert part(other) not in script
    assert script.endswith(part("collect.sh"))


def test_commands_survive_exactly_through_real_bash():
    assert commands_back_through_bash("eks", TRICKY) == TRICKY


def test_no_commands_gives_an_empty_array():
    assert "HPC_USER_COMMANDS=()" in compose("slurm")
    assert commands_back_through_bash("slurm", []) == []


def test_commands_are_never_expanded_while_defining_them(tmp_path):
    marker = tmp_path / "ran"
    commands = [f"touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]
    assert commands_back_through_bash("eks", commands) == commands
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["EKS", "k8s", "", " eks"])
def test_unknown_cluster_type_is_a_value_error(bad):
    with pytest.raises(ValueError, match="eks"):
        compose(bad)


def test_a_single_string_is_not_taken_for_a_list_of_commands():
    with pytest.raises(TypeError):
        compose("eks", "df -h")


def test_nul_in_a_command_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        compose("eks", ["echo a\0b"])


def test_same_inputs_same_text_and_inputs_matter():
    assert compose("eks", TRICKY) == compose("eks", list(TRICKY))
    assert compose("eks", TRICKY) != compose("eks", TRICKY[:-1])
    assert compose("eks") != compose("slurm")


def test_default_node_options_are_baked_in():
    assert options_through_bash(NodeOptions()) == {
        "HPC_SINCE": "3d", "HPC_FILE_CAP_MB": "50", "HPC_BUNDLE_CAP_MB": "2048", "HPC_NVIDIA_BUG_REPORT": "1",
        "HPC_UPLOAD_MODE": "presigned", "HPC_S3_DESTINATION": "", "HPC_EKS_COLLECTOR": "0",
        "HPC_EKS_COLLECTOR_SHA256": "", "HPC_REDACT_PATTERNS": ""}
    assert compose("eks") == compose("eks", options=NodeOptions())


def test_chosen_node_options_reach_bash_literally():
    patterns = ("it's $(touch /tmp/x) `id`", "[0-9]{4}-secret", "a\\b")
    options = NodeOptions(since="2026-01-02T03:04:05Z", file_cap_mb=7, bundle_cap_mb=300, nvidia_bug_report=False,
                          upload_mode="awscli", s3_destination="s3://bucket/p/c/run/instances/",
                          eks_log_collector=True, eks_log_collector_sha256="ab" * 32, redact_patterns=patterns)
    assert options_through_bash(options) == {
        "HPC_SINCE": "2026-01-02T03:04:05Z", "HPC_FILE_CAP_MB": "7", "HPC_BUNDLE_CAP_MB": "300",
        "HPC_NVIDIA_BUG_REPORT": "0", "HPC_UPLOAD_MODE": "awscli", "HPC_S3_DESTINATION": "s3://bucket/p/c/run/instances/",
        "HPC_EKS_COLLECTOR": "1", "HPC_EKS_COLLECTOR_SHA256": "ab" * 32, "HPC_REDACT_PATTERNS": "\n".join(patterns)}


def test_the_environment_overrides_baked_options():
    seen = options_through_bash(NodeOptions(since="7d", file_cap_mb=9), env={"HPC_SINCE": "1h"})
    assert seen["HPC_SINCE"] == "1h" and seen["HPC_FILE_CAP_MB"] == "9"


@pytest.mark.parametrize("values", [
    {"since": "3 days"}, {"since": "yesterday"}, {"since": "3d; rm -rf /"}, {"since": ""},
    {"file_cap_mb": 0}, {"bundle_cap_mb": True}, {"file_cap_mb": "50"},
    {"upload_mode": "scp"}, {"s3_destination": "s3://bucket/no-slash"},
    {"eks_log_collector": True}, {"eks_log_collector": True, "eks_log_collector_sha256": "AB" * 32},
    {"redact_patterns": ("",)}, {"redact_patterns": ("a\tb",)}, {"redact_patterns": ("a\nb",)},
])
def test_bad_node_options_are_value_errors(values):
    with pytest.raises(ValueError):
        NodeOptions(**values)


@pytest.mark.parametrize("since", ["all", "30m", "12h", "3d", "2w", "2026-01-02", "2026-01-02T03:04",
                                   "2026-01-02 03:04:05", "2026-01-02T03:04:05.123+01:00"])
def test_since_accepts_durations_iso_times_and_all(since):
    assert NodeOptions(since=since).since == since


def test_node_options_round_trip_through_the_run_state():
    options = NodeOptions(since="1w", redact_patterns=["a", "b"])
    recorded = options.as_dict()
    assert recorded["redact_patterns"] == ["a", "b"]
    assert node_options({**recorded, "something_else": 1}) == options
