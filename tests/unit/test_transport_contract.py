"""The contract every registered transport keeps, whatever it is (transports/__init__.py):

- it declares its task flags as settings that exist, and `make(needs)` builds it from a run's needs;
- `run(job, cancel)` turns a node it cannot reach into an outcome (a SessionResult), never an exception,
  and says which step failed; `close()` may be called at any time, twice.

Each transport is built for real and tried against a node nobody answers for: a closed loopback port.
The integration tests (test_pipeline.py, test_ssh_transport.py) show the same tarballs either way.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from collectors import transports
from collectors.settings import KEYS_BY_PATH, Session, Settings, Ssh, Timeouts
from collectors.transports.base import (
    SESSION_START_FAILED, SESSION_TIMEOUT, SESSION_UNREACHABLE, NodeJob, SessionResult, TransportNeeds)
from tests.conftest import closed_port

NODE = {"instance_id": "i-0123456789abcdef0", "group": "worker-group-1", "hostname": "ip-127-0-0-1", "ip": "127.0.0.1"}
CLUSTER = {"id": "abc123def456", "name": "hp", "type": "slurm"}


class LoopbackAws:
    """What a transport asks of collectors.aws.Aws, pointed at a port that refuses every connection."""

    region = "us-west-2"

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self, service: str, retries: int = 5, **_):
        import boto3
        import botocore.config

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint,
                            aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x",
                            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2))

    def cli_env(self) -> dict[str, str]:
        import os

        return dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
                    AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION=self.region, AWS_EC2_METADATA_DISABLED="true")


def needs_for(name: str, tmp_path: Path) -> TransportNeeds:
    port = closed_port()
    settings = Settings(transport=name, timeouts=Timeouts(session_prompt=5),
                        session=Session(client="cli"),  # the AWS CLI, as engineers run it (no plugin needed)
                        ssh=Ssh(port=port, known_hosts="off"))
    return TransportNeeds(settings, LoopbackAws(f"http://127.0.0.1:{port}"), CLUSTER, [NODE],
                          script=tmp_path / "collector_script.sh", results_dir=tmp_path / "results",
                          store_tarball=lambda iid, path: None)


@pytest.mark.parametrize("name", sorted(transports.REGISTRY))
def test_every_transport_declares_flags_that_are_settings(name):
    module = transports.REGISTRY[name]
    assert module.FLAGS and all(path in KEYS_BY_PATH for path in module.FLAGS)
    assert callable(module.make)


@pytest.mark.parametrize("name", sorted(transports.REGISTRY))
def test_a_node_no_one_answers_for_is_an_outcome_and_close_is_safe(name, tmp_path):
    transport = transports.make(needs_for(name, tmp_path))
    job = NodeJob(NODE["instance_id"], f"sagemaker-cluster:{CLUSTER['id']}_{NODE['group']}-{NODE['instance_id']}",
                  env={"INSTANCE_ID": NODE["instance_id"]}, secrets={"HPC_UPLOAD_URL": "http://127.0.0.1:9/x"},
                  transcript=tmp_path / "transcript.log")
    try:
        result = transport.run(job, threading.Event())
    finally:
        transport.close()
        transport.close()
    assert isinstance(result, SessionResult)
    assert result.kind in (SESSION_UNREACHABLE, SESSION_START_FAILED, SESSION_TIMEOUT), result
    assert result.step and result.error
    assert "http://127.0.0.1:9/x" not in result.error + result.output
