"""run: one session per node; each node fetches the script, collects, and uploads its own tarball.

Which nodes: those not finished yet (pending or interrupted), plus the failed ones with
`--retry-failed`. A node that already ended ok is never collected twice.
"""

from __future__ import annotations

import random
import time
from typing import Any

from collectors import console
from collectors.aws import describe_aws_error, error_code
from collectors.context import StageContext
from collectors.errors import Interrupted, UsageError
from collectors.runner import fan_out
from collectors.state import (
    FAILED, FAILURE_STATUSES, INTERRUPTED, OK, OK_WITH_ERRORS, SKIPPED, THROTTLED, TIMEOUT, UNFINISHED_STATUSES,
    UNREACHABLE, utc_now)
from collectors.nodes import match_names
from collectors.transports.base import (
    SESSION_INTERRUPTED, SESSION_OK, SESSION_THROTTLED, SESSION_TIMEOUT, SESSION_UNREACHABLE,
    NodeJob, SessionResult)
from collectors.transports.ssm import SsmCliTransport

# Node script exit codes (bash/collect.sh).
RC_OK, RC_BAD_INPUT, RC_ITEM_ERRORS, RC_UPLOAD_FAILED = 0, 2, 3, 4
# The node stops collecting this long before our own timeout so that it still packages and uploads.
NODE_DEADLINE_MARGIN = 60
BACKOFF_BASE, BACKOFF_CAP = 1.0, 30.0


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("upload", "run")
    nodes = nodes_to_run(ctx)
    skipped = [n for n in nodes if n["hyperpod_status"] != "Running"]
    for node in skipped:
        node.update(status=SKIPPED, error_kind="not_running", finished=utc_now(),
                    error=f"HyperPod status is {node['hyperpod_status']}; not collected")
    runnable = [n for n in nodes if n["hyperpod_status"] == "Running"]
    state.mark_stage("run", "running", started=utc_now(), planned=len(runnable), skipped=len(skipped))
    if not runnable:
        console.log("run: nothing to do (every selected node already ended; use --retry-failed to retry failures)")
        state.mark_stage("run", "done")
        return 0
    console.log(f"run: collecting from {len(runnable)} node(s), {ctx.settings.max_workers} at a time"
                + (f"; {len(skipped)} skipped (not Running)" if skipped else ""))
    collector = NodeCollector(ctx)
    progress = Progress(len(runnable))

    def record(node: dict[str, Any], outcome: dict[str, Any]) -> None:
        node.update(outcome)
        state.save()
        progress.report(node)

    try:
        fan_out(runnable, collector.collect, max_workers=ctx.settings.max_workers, on_result=record,
                on_crash=collector.crashed, cancel=ctx.cancel)
    except KeyboardInterrupt:
        state.mark_stage("run", "interrupted")
        raise Interrupted(f"interrupted: the state is saved; `invoke run --cluster {state.cluster['name']} "
                          f"--run-id {state.run_id}` resumes the unfinished nodes") from None
    state.mark_stage("run", "done")
    return 0


def nodes_to_run(ctx: StageContext) -> list[dict[str, Any]]:
    wanted = set(UNFINISHED_STATUSES)
    if ctx.options.get("retry_failed"):
        wanted |= set(FAILURE_STATUSES)
    nodes = list(ctx.state.nodes.values())
    names = ctx.options.get("nodes") or []
    if names:
        nodes = nodes_named(nodes, names, ctx.state.run_id)
    return [node for node in nodes if node.get("status") in wanted]


def nodes_named(nodes: list[dict[str, Any]], names: list[str], run_id: str) -> list[dict[str, Any]]:
    chosen, unmatched = match_names(nodes, names)
    if unmatched:
        raise UsageError(f"run {run_id} has no node {', '.join(unmatched)}")
    return chosen


class NodeCollector:
    """Everything one node's collection needs; `collect` runs in a worker thread and never raises."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.state = ctx.state
        self.s3 = ctx.aws.client("s3")
        self.bucket = self.state.data["s3"]["bucket"]
        self.run_prefix = self.state.data["s3"]["run_prefix"]
        self.script_key = self.state.data["stages"]["upload"]["script_key"]
        self.ssm = ctx.aws.client("ssm")
        self.transport = SsmCliTransport(ctx.aws.region, ctx.settings.profile, ctx.settings.timeouts,
                                         ctx.aws.cli_env(), self.terminate_session)
        self.transcripts = self.state.run_dir / "transcripts"

    def collect(self, node: dict[str, Any]) -> dict[str, Any]:
        started, clock = utc_now(), time.monotonic()
        attempts, result = 0, None
        for attempts in range(1, 9):
            result = self.transport.run(self.job(node), self.ctx.cancel)
            if result.kind != SESSION_THROTTLED or not self.back_off(attempts):
                break
        outcome = self.judge(node, result)
        outcome.update(attempts=attempts, started=started, finished=utc_now(),
                       elapsed=round(time.monotonic() - clock, 2), transcript=str(self.transcript(node)))
        return outcome

    def terminate_session(self, session_id: str) -> None:
        try:
            self.ssm.terminate_session(SessionId=session_id)
        except Exception as exc:  # noqa: BLE001 - best effort; SSM ends idle sessions by itself
            console.log(f"warning: could not terminate SSM session {session_id}: {describe_aws_error(exc)}")

    def crashed(self, node: dict[str, Any], text: str) -> dict[str, Any]:
        return {"status": FAILED, "error_kind": "internal_error", "error": text, "finished": utc_now()}

    def back_off(self, attempt: int) -> bool:
        """Full-jitter exponential backoff; False when it is time to stop (cancelled)."""
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
        return not self.ctx.cancel.wait(delay)

    def tarball_key(self, node: dict[str, Any]) -> str:
        return f"{self.run_prefix}/instances/{node['group']}_{node['instance_id']}.tar.gz"

    def transcript(self, node: dict[str, Any]):
        return self.transcripts / f"{node['instance_id']}.log"

    def job(self, node: dict[str, Any]) -> NodeJob:
        """URLs are signed just before each attempt, so they stay within the credentials' lifetime."""
        expiry = self.ctx.settings.presign_expiry
        script_url = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.script_key}, ExpiresIn=expiry)
        upload_url = self.s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self.tarball_key(node)}, ExpiresIn=expiry)
        secrets = {"HPC_SCRIPT_URL": script_url, "HPC_UPLOAD_URL": upload_url}
        # Other objects the upload stage put in S3 for the nodes (env var name -> key), e.g. a pinned
        # EKS log collector: nodes often have no internet, so they fetch it from the run's prefix.
        for name, key in self.state.data["stages"]["upload"].get("node_downloads", {}).items():
            secrets[name] = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry)
        cluster = self.state.cluster
        return NodeJob(
            instance_id=node["instance_id"],
            target=f"sagemaker-cluster:{cluster['id']}_{node['group']}-{node['instance_id']}",
            env={"INSTANCE_GROUP": node["group"], "INSTANCE_ID": node["instance_id"],
                 "CLUSTER_TYPE": cluster["type"],
                 "HPC_DEADLINE_SECONDS": str(max(60, self.ctx.settings.timeouts.node_script - NODE_DEADLINE_MARGIN))},
            secrets=secrets,
            transcript=self.transcript(node))

    def judge(self, node: dict[str, Any], result: SessionResult) -> dict[str, Any]:
        base = {"output": result.output, "session_id": result.session_id}
        if result.kind != SESSION_OK:
            return dict(base, **session_failure(result))
        return dict(base, **self.script_outcome(node, result))

    def script_outcome(self, node: dict[str, Any], result: SessionResult) -> dict[str, Any]:
        report = result.result
        if result.rc not in (RC_OK, RC_ITEM_ERRORS) or not report:
            kind = "upload_failed" if result.rc == RC_UPLOAD_FAILED else "script_failed"
            return {"status": FAILED, "error_kind": kind,
                    "error": f"node script exited {result.rc}: {last_lines(result.output)}"}
        found = self.uploaded_size(node)
        claimed = int(report.get("bytes", -1))
        if found != claimed:
            return {"status": FAILED, "error_kind": "upload_failed",
                    "error": f"node reported {claimed} bytes uploaded, S3 has {found if found is not None else 'nothing'}"}
        failed_items = int(report.get("failed_items", 0))
        outcome = {"s3_key": self.tarball_key(node), "bytes": claimed, "sha256": report.get("sha256"),
                   "items": int(report.get("items", 0)), "failed_items": failed_items,
                   "status": OK, "error_kind": None, "error": None}
        if result.rc == RC_ITEM_ERRORS or failed_items:
            outcome.update(status=OK_WITH_ERRORS, error_kind="item_errors",
                           error=f"{failed_items} of {outcome['items']} items failed (see manifest.tsv)")
        return outcome

    def uploaded_size(self, node: dict[str, Any]) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self.tarball_key(node))["ContentLength"]
        except Exception as exc:  # noqa: BLE001 - a missing object is an outcome, not a crash
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise


def session_failure(result: SessionResult) -> dict[str, Any]:
    status = {
        SESSION_UNREACHABLE: UNREACHABLE,
        SESSION_THROTTLED: THROTTLED,
        SESSION_TIMEOUT: TIMEOUT,
        SESSION_INTERRUPTED: INTERRUPTED,
    }.get(result.kind, FAILED)
    kind = f"timeout_{result.step}" if result.kind == SESSION_TIMEOUT else result.kind
    return {"status": status, "error_kind": kind, "error": result.error}


def last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line for line in (text or "").splitlines()[-count:] if line.strip())


class Progress:
    """One plain line per finished node, with a running count."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def report(self, node: dict[str, Any]) -> None:
        self.done += 1
        detail = f"{node.get('elapsed', 0):.1f}s"
        if node.get("bytes"):
            detail += f" {console.human_bytes(node['bytes'])}"
        if node.get("error"):
            detail += f" - {node['error_kind']}: {node['error'].splitlines()[0][:160]}"
        console.log(f"[{self.done}/{self.total}] {node['status']:<14} {node['instance_id']} "
                    f"({node['group']}, {node.get('hostname') or '?'}) {detail}")
