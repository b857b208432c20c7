"""The sandbox's `systemctl` stand-in honours the options the node script passes, as systemd 252 does.

The stand-in (a POSIX sh script and awk) runs here as nodes run it, over the unit data a disk_full
EKS node gets (its logrotate.service has failed), rendered by content.py. Real systemctl takes options
before or after the verb (getopt), leaves inactive units out of list-units unless --all or a --state
asks for them, and prints ● before failed units (systemctl-list-units.c).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from collectors.sandbox import packs
from collectors.sandbox.content import ClusterFacts, Node, node_units, nodes_table, write_systemctl_data

NODE = Node("i-0123456789abcdef0", "worker-group-1", "ml.g5.8xlarge", "127.10.0.10", "ip-127-10-0-10.ec2.internal",
            pack="disk_full", os="ubuntu-22.04")
CLUSTER = ClusterFacts("hp", "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcdefghijkl", "us-west-2", "eks",
                       [NODE])


@pytest.fixture(scope="module")
def systemctl(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bin")
    packs.copy_stand_ins(folder, with_nvidia_smi=False, with_df=False)
    (folder / ".sandbox" / "nodes.tsv").write_text(nodes_table(CLUSTER))
    write_systemctl_data(folder / ".sandbox", CLUSTER, NODE)
    return folder / "systemctl"


def run(systemctl: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(systemctl), *args], capture_output=True, text=True, timeout=30)


def listed(output: str) -> list[str]:
    """Unit names of a list-units table."""
    return [line[2:].split()[0] for line in output.splitlines()[1:] if re.match(r"^(  |● )\S+\.\w+ ", line)]


def units(*, active: str | None = None, suffix: str | None = None, hide_inactive: bool = False) -> list[str]:
    return [name for name, _, state, _, _ in node_units(NODE, CLUSTER.type)
            if (active is None or state == active) and (suffix is None or name.endswith(suffix))
            and not (hide_inactive and state == "inactive")]


def test_the_node_scripts_calls_list_what_they_ask_for(systemctl):
    services = run(systemctl, "list-units", "--type=service", "--all", "--no-pager")
    failed = run(systemctl, "list-units", "--failed", "--all", "--no-pager")
    assert services.returncode == failed.returncode == 0
    assert listed(services.stdout) == units(suffix=".service") and "logrotate.timer" not in services.stdout
    assert listed(failed.stdout) == units(active="failed") == ["logrotate.service"]
    assert failed.stdout.splitlines()[1].startswith("● logrotate.service ")
    assert failed.stdout.endswith("\n1 loaded units listed.\nTo show all installed unit files use "
                                  "'systemctl list-unit-files'.\n")
    assert f"\n{len(units(suffix='.service'))} loaded units listed.\n" in services.stdout


def test_options_before_the_verb_mean_the_same(systemctl):
    after = run(systemctl, "list-units", "--type", "service", "--all")
    before = run(systemctl, "--all", "-t", "service", "list-units")
    assert after.stdout == before.stdout and listed(after.stdout) == units(suffix=".service")


def test_without_all_inactive_units_are_left_out(systemctl):
    shown = run(systemctl, "list-units").stdout
    assert listed(shown) == units(hide_inactive=True)
    assert "loaded units listed. Pass --all to see loaded but inactive units, too." in shown
    inactive = run(systemctl, "list-units", "--state=inactive").stdout
    assert listed(inactive) == units(active="inactive") and "Pass --all" not in inactive


def test_types_patterns_legend_and_marker(systemctl):
    assert listed(run(systemctl, "list-units", "--type=timer,socket", "--all").stdout) == \
        units(suffix=".socket") + units(suffix=".timer")
    assert listed(run(systemctl, "list-units", "--all", "systemd-*d.service").stdout) == \
        [name for name in units(suffix=".service") if re.fullmatch(r"systemd-.*d\.service", name)]
    assert listed(run(systemctl, "list-units", "kubelet").stdout) == ["kubelet.service"]  # mangled, as systemctl does
    plain = run(systemctl, "list-units", "--failed", "--no-legend", "--plain").stdout
    assert plain.splitlines() == [line for line in plain.splitlines() if line.startswith("logrotate.service ")]
    assert len(plain.splitlines()) == 1


def test_unknown_options_and_verbs_fail_as_systemctl_does(systemctl):
    bad = run(systemctl, "list-units", "--bogus")
    assert bad.returncode == 1 and bad.stderr == "systemctl: unrecognized option '--bogus'\n"
    verb = run(systemctl, "frobnicate")
    assert verb.returncode == 1 and verb.stderr == "Unknown command verb 'frobnicate'.\n"


def test_status_exit_codes_are_systemds(systemctl):
    running = run(systemctl, "status", "kubelet", "--no-pager")
    assert running.returncode == 0 and running.stdout.startswith("● kubelet.service - Kubernetes Kubelet\n")
    assert "Loaded: loaded (/etc/systemd/system/kubelet.service; enabled; vendor preset: enabled)" in running.stdout
    assert run(systemctl, "status", "logrotate.service").returncode == 3  # not active
    missing = run(systemctl, "--no-pager", "status", "nope")
    assert missing.returncode == 4 and missing.stderr == "Unit nope.service could not be found.\n"


def test_the_stand_in_is_posix_sh(systemctl):
    if shutil.which("dash") is None:
        pytest.skip("no dash here to run it with")
    result = subprocess.run(["dash", str(systemctl), "list-units", "--failed"], capture_output=True, text=True)
    assert result.returncode == 0 and listed(result.stdout) == ["logrotate.service"]
