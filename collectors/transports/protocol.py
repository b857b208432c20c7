"""The node protocol both transports speak: how a session fetches and starts the node script,
and what it reads back from the node (its result line, and why a session could not start).

The script's exit codes and the run's files are layout.py's.
"""

from __future__ import annotations

import re

from collectors.layout import SCRIPT_NAME
from collectors.transports.base import SESSION_START_FAILED, SESSION_THROTTLED, SESSION_UNREACHABLE, SessionResult

RESULT_LINE_RE = re.compile(r"^HPC_RESULT (.*)$", re.MULTILINE)
# The launch line's own code for a script the node could not fetch from S3 (no node script exit).
RC_FETCH_FAILED = 91
THROTTLING_RE = re.compile(r"Throttling|Rate exceeded|TooManyRequests")

# Runs on the node under sh. $1 is the private launch folder; its `env` file holds the node's
# inputs, presigned URLs included. It is read once and removed before the script starts, so no
# item ever finds it; the wrapper's own environment never holds them (they are sourced after
# exec) and the wrapper is replaced by the script, which removes them from its own environment
# before any item runs. The script removes the launch folder and its log when it ends
# (HPC_LAUNCH_DIR), keeping the log only when it could not report its result.
FETCH = ('(. "$d/env" && printf \'url = "%s"\\n\' "$HPC_SCRIPT_URL" | '
         f'curl -fsS --retry 3 -o "$d/{SCRIPT_NAME}" -K -)')
RUN_ATTACHED = f'. "$1/env"; rm -f "$1/env"; export HPC_LAUNCH_DIR="$1"; exec bash "$1/{SCRIPT_NAME}"'
RUN_DETACHED = ('. "$1/env"; rm -f "$1/env"; export HPC_LAUNCH_DIR="$1"; '
                f'exec bash "$1/{SCRIPT_NAME}" >"$1.log" 2>&1')


def classify_start_error(text: str) -> SessionResult:
    """What StartSession (or the CLI around it) said before giving up, as an outcome kind."""
    line = last_line(text) or "the session ended before it started"
    if "TargetNotConnected" in text:
        return SessionResult(SESSION_UNREACHABLE, step="session_start", output=text,
                             error=f"SSM agent not connected (TargetNotConnected): {line}")
    if THROTTLING_RE.search(text):
        return SessionResult(SESSION_THROTTLED, step="session_start", output=text, error=line)
    return SessionResult(SESSION_START_FAILED, step="session_start", output=text, error=line)


def parse_result_line(output: str) -> dict[str, str]:
    matches = RESULT_LINE_RE.findall(output)
    if not matches:
        return {}
    return dict(pair.split("=", 1) for pair in matches[-1].split() if "=" in pair)


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
