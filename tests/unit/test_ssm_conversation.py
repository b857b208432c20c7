"""The SSM conversation against a real shell on a real pty (pexpect), standing in for a session."""

import re
import threading
from pathlib import Path

from collectors.settings import Timeouts
from collectors.transports.base import SESSION_FETCH_FAILED, NodeJob
from collectors.transports.ssm import converse, spawn
from tests.conftest import require_tool

# A session whose shell loses the first line typed into it (typed while it was still starting).
LOSES_FIRST_LINE = "echo 'Starting session with SessionId: s-0123'; read -r lost; exec sh"


def test_a_first_line_lost_by_a_starting_shell_is_typed_again_before_the_prompt_timeout(tmp_path):
    require_tool("curl", "curl")
    job = NodeJob("i-0123", "target", {"INSTANCE_ID": "i-0123"}, {"HPC_SCRIPT_URL": "http://127.0.0.1:9/none"},
                  tmp_path / "transcript.log", detached=True)
    theirs = tmp_path / "theirs"  # a `d` the node's shell already had is not our folder to remove
    theirs.mkdir()
    shell_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "d": str(theirs)}
    result = converse(lambda: spawn(["sh", "-c", LOSES_FIRST_LINE], shell_env), job, Timeouts(session_prompt=20),
                      threading.Event(), keepalive=30.0)
    # Past the shell step: the launch itself fails, since nothing serves the script's URL.
    assert (result.kind, result.step) == (SESSION_FETCH_FAILED, "launch"), result
    assert result.session_id == "s-0123"
    # The node's private folder, with the presigned URLs in its env file, is not left behind.
    folder = re.search(r"__hpc_ready_\w+__:(/tmp/hpc-run\.\w+)", job.transcript.read_text()).group(1)
    assert not Path(folder).exists() and theirs.is_dir()
