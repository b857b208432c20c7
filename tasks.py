"""hyperpod-collect's tasks, for `invoke` in a checkout: the command's own (collectors/cli.py) and the
project's development tasks."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from invoke import Exit, task

from collectors.cli import check_environment, namespace

PROJECT_DIR = Path(__file__).resolve().parent


@task(help={"args": "extra pytest arguments, e.g. \"-k discover -x\""})
def test(ctx, args=""):
    """Run the whole test suite (unit, bash, integration against the sandbox); as root on Debian or Ubuntu
    it first installs the Debian packages the tests need (tests/machine.py)."""
    from tests import machine

    machine.ensure()
    result = subprocess.run([sys.executable, "-m", "pytest", *shlex.split(args)], cwd=PROJECT_DIR)
    if result.returncode:
        raise Exit(code=result.returncode)


check_environment()
ns = namespace()
ns.add_task(test)
