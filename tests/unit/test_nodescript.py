"""compose(): which parts, in which order, and operator commands kept literal."""

import subprocess

import pytest

from collectors.nodescript import BASH_DIR, compose

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


def commands_back_through_bash(cluster_type: str, commands: list[str]) -> list[str]:
    """Run everything before collect.sh (definitions only) in real bash; print the array back."""
    script = compose(cluster_type, commands)
    assert script.endswith(part("collect.sh"))
    definitions = script[: -len(part("collect.sh"))]
    printer = 'for c in "${HPC_USER_COMMANDS[@]}"; do printf "%s\\0" "$c"; done\n'
    out = subprocess.run(["bash", "-c", definitions + printer], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1] if out else []


def test_bash_dir_holds_the_parts():
    assert BASH_DIR.name == "bash" and BASH_DIR.is_absolute()
    for name in ("lib.sh", "common.sh", "eks.sh", "slurm.sh", "collect.sh"):
        assert (BASH_DIR / name).is_file()


@pytest.mark.parametrize("cluster_type, chosen, other", [("eks", "eks.sh", "slurm.sh"),
                                                         ("slurm", "slurm.sh", "eks.sh")])
def test_parts_in_order_for_each_cluster_type(cluster_type, chosen, other):
    script = compose(cluster_type, ["uptime"])
    assert script.startswith("#!/usr/bin/env bash\n# ")
    header = script.split("\n", 3)[:3]
    assert "generated" in header[1] and cluster_type in header[1]
    assert f"bash/{chosen}" in header[2] and f"bash/{other}" not in header[2]
    positions = [script.index(part(name)) for name in ("lib.sh", "common.sh", chosen)]
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
