"""Helpers for tests that talk to sandbox nodes the way operators do: the real `aws ssm start-session`
driven by pexpect, and boto3 clients that can only reach the sandbox."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pexpect

from collectors.sandbox import sandbox_client

PROMPT = r"[#$] $"
MARKER = 'S=__x_; T=y__; echo "$S$T"'  # prints __x_y__, which its own echo does not contain
MARKER_OUTPUT = "__x_y__"
EXIT_BANNER = r"Exiting session with sessionId: (\S+)\."


def client(status: dict, service: str):
    return sandbox_client(service, status["endpoint"], status["region"], Path(status["root"]))


def ssm_target(status: dict, node: dict) -> str:
    return f"sagemaker-cluster:{status['cluster_id']}_{node['group']}-{node['instance_id']}"


def emu(status: dict, path: str, method: str = "GET"):
    request = urllib.request.Request(status["endpoint"] + path, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def start_session(env: dict, target: str, timeout: float = 30) -> pexpect.spawn:
    session = pexpect.spawn("aws", ["ssm", "start-session", "--target", target], env=dict(os.environ, **env),
                            encoding="utf-8", codec_errors="replace", timeout=timeout)
    session.expect(r"Starting session with SessionId: (\S+)")
    session.expect(PROMPT)
    return session


def run_in_session(session: pexpect.spawn, command: str, prompt: str = PROMPT) -> str:
    """Output of `command` (without the echo of the typed line), up to the marker printed after it."""
    session.sendline(f"{command}; {MARKER}")
    session.expect_exact(MARKER_OUTPUT)
    output = session.before.split("\n", 1)[1]
    session.expect(prompt)
    return output


def end_session(session: pexpect.spawn) -> int:
    session.sendline("exit")
    session.expect(EXIT_BANNER)
    session.expect(pexpect.EOF)
    session.close()
    return session.exitstatus
