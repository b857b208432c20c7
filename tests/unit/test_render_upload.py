"""render bakes the run's node options into the script; upload fetches a pinned EKS log collector.

The EKS log collector here is a tiny stand-in served from 127.0.0.1: the real script is never
downloaded in tests, nor copied into the repository.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from types import SimpleNamespace

import pytest

from collectors.context import StageContext
from collectors.errors import StageError, UsageError
from collectors.settings import Settings
from collectors.stages import render, upload
from collectors.state import RunState

FAKE_COLLECTOR = b"#!/bin/bash\necho fake eks log collector\n"
FAKE_SHA256 = hashlib.sha256(FAKE_COLLECTOR).hexdigest()


class FakeS3:
    """Records what the stages write; only the calls they make."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.objects: dict[str, bytes] = {}

    def upload_file(self, path, bucket, key, ExtraArgs=None):
        self.files[f"{bucket}/{key}"] = open(path).read()

    def put_object(self, Bucket, Key, Body, ContentType=None):
        self.objects[f"{Bucket}/{Key}"] = Body

    def head_bucket(self, Bucket):
        return {"ResponseMetadata": {"HTTPHeaders": {"x-amz-bucket-region": "us-west-2"}}}


@pytest.fixture
def served():
    """An HTTP server on 127.0.0.1 serving FAKE_COLLECTOR at /eks-log-collector.sh (404 elsewhere)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path == "/eks-log-collector.sh"
            body = FAKE_COLLECTOR if found else b"not here"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def context(tmp_path, cluster_type: str = "eks", **config) -> tuple[StageContext, FakeS3]:
    state = RunState.create(tmp_path / "runs", "hp")
    state.data["cluster"] = {"requested": "hp", "name": "hp", "type": cluster_type}
    state.mark_stage("discover", "done")
    settings = Settings.from_config({"s3_path": "s3://bucket/reports", "sandbox": True, **config})
    s3 = FakeS3()
    return StageContext(settings, state, SimpleNamespace(client=lambda name, **_: s3), {}), s3


def baked(ctx: StageContext) -> dict:
    return ctx.state.data["stages"]["render"]["node_options"]


def test_render_bakes_and_records_the_node_options(tmp_path):
    ctx, _ = context(tmp_path, "slurm", since="12h", file_cap_mb=5, nvidia_bug_report=False,
                     redact_patterns=["corp-[0-9]+"])
    render.execute(ctx)
    script = (ctx.state.run_dir / render.SCRIPT_NAME).read_text()
    assert "hpc_default HPC_SINCE 12h\n" in script and "hpc_default HPC_FILE_CAP_MB 5\n" in script
    assert "hpc_default HPC_NVIDIA_BUG_REPORT 0\n" in script
    assert "hpc_default HPC_REDACT_PATTERNS 'corp-[0-9]+'\n" in script
    assert baked(ctx) == ctx.state.options["node_options"]
    assert baked(ctx)["since"] == "12h" and baked(ctx)["redact_patterns"] == ["corp-[0-9]+"]
    assert baked(ctx)["eks_log_collector"] is False and baked(ctx)["upload_mode"] == "presigned"


def test_awscli_mode_fixes_the_run_prefix_at_render(tmp_path):
    ctx, s3 = context(tmp_path, upload_mode="awscli")
    render.execute(ctx)
    run_prefix = f"reports/hp/{ctx.state.run_id}"
    assert baked(ctx)["s3_destination"] == f"s3://bucket/{run_prefix}/instances/"
    upload.execute(ctx)  # the same prefix, no conflict
    assert f"bucket/{run_prefix}/collector_script.sh" in s3.files


def test_a_collector_url_without_its_sha256_is_refused(tmp_path, served):
    ctx, _ = context(tmp_path, eks_log_collector_url=f"{served}/eks-log-collector.sh")
    with pytest.raises(UsageError, match="eks_log_collector_sha256"):
        render.execute(ctx)


def test_the_pinned_collector_goes_to_the_run_prefix_for_the_nodes(tmp_path, served):
    ctx, s3 = context(tmp_path, eks_log_collector_url=f"{served}/eks-log-collector.sh",
                      eks_log_collector_sha256=FAKE_SHA256)
    render.execute(ctx)
    assert baked(ctx)["eks_log_collector"] is True and baked(ctx)["eks_log_collector_sha256"] == FAKE_SHA256
    upload.execute(ctx)
    key = f"reports/hp/{ctx.state.run_id}/eks-log-collector.sh"
    assert s3.objects == {f"bucket/{key}": FAKE_COLLECTOR}
    assert ctx.state.data["stages"]["upload"]["node_downloads"] == {"HPC_EKS_COLLECTOR_URL": key}


def test_the_collector_is_not_used_on_slurm(tmp_path, served):
    ctx, s3 = context(tmp_path, "slurm", eks_log_collector_url=f"{served}/eks-log-collector.sh",
                      eks_log_collector_sha256=FAKE_SHA256)
    render.execute(ctx)
    upload.execute(ctx)
    assert baked(ctx)["eks_log_collector"] is False and s3.objects == {}
    assert ctx.state.data["stages"]["upload"]["node_downloads"] == {}


@pytest.mark.parametrize("path, sha256", [("/eks-log-collector.sh", "0" * 64), ("/missing.sh", FAKE_SHA256)])
def test_a_collector_that_cannot_be_had_is_a_warning_not_a_failed_run(tmp_path, served, capsys, path, sha256):
    ctx, s3 = context(tmp_path, eks_log_collector_url=f"{served}{path}", eks_log_collector_sha256=sha256)
    render.execute(ctx)
    upload.execute(ctx)
    assert s3.objects == {} and ctx.state.data["stages"]["upload"]["node_downloads"] == {}
    assert ctx.state.stage_done("upload")
    assert "nodes will record the EKS log collector as not run" in capsys.readouterr().err


def test_fetch_checks_the_sha256_and_sandbox_mode_keeps_to_loopback(served):
    assert upload.fetch_pinned(f"{served}/eks-log-collector.sh", FAKE_SHA256, sandbox=True) == FAKE_COLLECTOR
    with pytest.raises(StageError, match=f"has sha256 {FAKE_SHA256}, not the configured"):
        upload.fetch_pinned(f"{served}/eks-log-collector.sh", "f" * 64, sandbox=True)
    with pytest.raises(StageError, match="not loopback"):
        upload.fetch_pinned("https://amazon-eks.s3.amazonaws.com/x.sh", FAKE_SHA256, sandbox=True)
    with pytest.raises(StageError, match="not an http"):
        upload.fetch_pinned("file:///etc/passwd", FAKE_SHA256, sandbox=False)
