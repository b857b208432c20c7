"""The installed command: `pip install .` (a wheel, not the checkout), then `hyperpod-collect` from a folder
that knows nothing of the checkout: it finds its node scripts, its report catalog and its sandbox inside
the installed package, and leaves the run under that folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require, require_namespaces

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def command(tmp_path_factory) -> Path:
    """`hyperpod-collect` in a new venv holding the project's wheel (its dependencies seen from this
    Python's site-packages, so that nothing is downloaded but the build's own setuptools)."""
    work = tmp_path_factory.mktemp("command")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "wheel"),
                            str(PROJECT)], capture_output=True, text=True, timeout=600)
    require(built.returncode == 0, f"cannot build the wheel (pip wheel needs setuptools from PyPI): {built.stderr}")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    wheel = next((work / "wheel").glob("hyperpod_collect-*.whl"))
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    return venv / "bin" / "hyperpod-collect"


def run(command: Path, folder: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "INVOKE_", "PYTHONPATH"))} | extra
    return subprocess.run([str(command), *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_command_runs_from_anywhere_with_what_it_ships(command, tmp_path):
    assert run(command, tmp_path, "--version").stdout.strip().startswith("hyperpod-collect ")
    listed = run(command, tmp_path, "--list").stdout
    assert all(f"  {name} " in listed for name in ("collect", "run", "report", "demo", "sandbox.up"))
    python = command.parent / "python"
    where = subprocess.run([str(python), "-c", "import collectors, collectors.nodescript as n; "
                            "print(collectors.__file__); print(n.BASH_DIR)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(str(PROJECT) not in path and "site-packages" in path for path in where), where
    assert (Path(where[1]) / "collect.sh").is_file()


def test_typed_flags_and_their_help(command, tmp_path):
    assert "--max-workers=INT" in run(command, tmp_path, "run", "--help").stdout
    assert "--session-rate=FLOAT" in run(command, tmp_path, "run", "--help").stdout
    bad = run(command, tmp_path, "run", "--cluster", "x", "--max-workers", "many")
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: --max-workers takes a whole number, not 'many'")


def test_config_is_read_from_the_users_config_then_the_working_folder(command, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "hyperpod-collect").mkdir(parents=True)
    (home / ".config" / "hyperpod-collect" / "config.yaml").write_text("hyperpod:\n  max_workers: mine\n")
    folder = tmp_path / "work"
    folder.mkdir()
    result = run(command, folder, "run", "--cluster", "x", HOME=str(home))
    assert result.returncode == 2 and "got 'mine'" in result.stderr
    (folder / "invoke.yaml").write_text("hyperpod:\n  max_workers: checkout\n")
    assert "got 'checkout'" in run(command, folder, "run", "--cluster", "x", HOME=str(home)).stderr
    (folder / "hyperpod-collect.yaml").write_text("hyperpod:\n  max_workers: project\n")
    assert "got 'project'" in run(command, folder, "run", "--cluster", "x", HOME=str(home)).stderr


def test_the_demo_leaves_its_run_under_the_folder_it_ran_in(command, tmp_path):
    require_namespaces()
    require(os.geteuid() == 0, "the sandbox needs root (its nodes mount over /var/log, /opt and /tmp)")
    result = run(command, tmp_path, "demo", "--nodes", "2")
    assert result.returncode == 0, result.stderr
    results = tmp_path / "runs" / "hp-sandbox" / "latest" / "results"
    assert len(list(results.glob("*.tar.gz"))) == 2
