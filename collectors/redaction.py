"""Files written on this machine redacted by the nodes' own catalogue (bash/redact.sh), through bash.

One catalogue for everything the tool ships: the node script runs these functions on every item's
files, and a bundle built here (the cluster stage's API answers and CloudWatch lines) goes through
the same ones, with the operator's `--redact-pattern`s, rather than through a second set of rules.
A file the catalogue could not finish is removed, never shipped unredacted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from collectors.nodescript import BASH_DIR

REDACT_TIMEOUT_S = 300
# bash/redact.sh as a node runs it: check the operator's patterns, prepare the rules, redact the list.
SCRIPT = ('source "$1/lib.sh"; source "$1/redact.sh"; HPC_REDACT_PATTERNS=$3; hpc_check_redact_patterns; '
          'hpc_prepare_redaction "$2"; hpc_redact_files "$2" "$2/list" "$2/done"')


class RedactionError(Exception):
    """The catalogue did not run (bash missing, a bad pattern, out of time); nothing was redacted."""


def redact_files(paths: list[Path], work: Path, patterns: tuple[str, ...] = ()) -> dict[Path, int]:
    """Redacts PATHS in place; returns each finished file's count of redactions. Files it did not
    finish are deleted (and absent from the answer). WORK is an empty folder for the catalogue."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    (work / "list").write_bytes(b"".join(os.fsencode(path) + b"\0" for path in paths))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)}
    try:
        result = subprocess.run(["bash", "-c", SCRIPT, "redact", str(BASH_DIR), str(work), "\n".join(patterns)],
                                capture_output=True, text=True, timeout=REDACT_TIMEOUT_S, env=env,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        remove_all(paths)
        raise RedactionError(f"the redaction catalogue did not run: {exc}") from None
    if result.returncode != 0:
        remove_all(paths)
        raise RedactionError(f"the redaction catalogue failed: {last_line(result.stderr)}")
    counts = finished(work / "done")
    remove_all([path for path in paths if path not in counts])
    return counts


def finished(done: Path) -> dict[Path, int]:
    if not done.exists():
        return {}
    entries = [entry.split(b"\t", 1) for entry in done.read_bytes().split(b"\0") if entry]
    return {Path(os.fsdecode(name)): int(count) for count, name in entries}


def remove_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error text"
