"""run: one session per node to launch the node script; nodes fetch it, collect, and upload.

Detached mode (the default): a session only launches the script, which survives the session;
completion is read from a small status object each node puts in S3, found by listing the
run's `status/` prefix (one List call per 1000 nodes per poll). Attached mode waits in the
session, as the earlier tool did.

Which nodes: those not finished yet (pending, running, interrupted), plus the failed ones with
`--retry-failed`. A node that already ended ok is never collected twice; a node whose script
is still running from an earlier invocation is waited for, not started again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as random_tokens
import time
from collections import Counter
from pathlib import Path
from typing import Any

from collectors import buckets, console, transports
from collectors.aws import describe_aws_error, error_code
from collectors.context import StageContext
from collectors.errors import EXIT_NODES_FAILED, EXIT_OK, Interrupted, UsageError
from collectors.layout import (
    NODE_ALREADY_RUNNING, NODE_ITEM_ERRORS, NODE_OK, NODE_UPLOAD_FAILED, RunLocation, node_deadline_seconds,
    ssm_target)
from collectors.nodes import match_names
from collectors.pacing import AdaptiveRate
from collectors.progress import Progress
from collectors.runner import FINAL, LAUNCHED, RETRY, THROTTLED, Callbacks, Engine, Launch
from collectors.state import (
    FAILED, FAILURE_STATUSES, INTERRUPTED, OK, OK_WITH_ERRORS, RESULTS_DIR, RUNNING, SKIPPED, SUCCESS_STATUSES,
    TIMEOUT, UNFINISHED_STATUSES, UNREACHABLE, utc_now)
from collectors.transports.base import (
    SESSION_EXITED_EARLY, SESSION_FETCH_FAILED, SESSION_INTERRUPTED, SESSION_LAUNCHED, SESSION_OK,
    SESSION_THROTTLED, SESSION_TIMEOUT, SESSION_UNREACHABLE, NodeJob, SessionResult, Transport, TransportNeeds)

# Outcome fields cleared when a node is collected again. Its launches (`launches`, the ids this run
# gave it, and `launch_id`, the latest) are kept: a late result of an earlier launch is still known.
OUTCOME_FIELDS = ("error_kind", "error", "s3_key", "bytes", "sha256", "items", "failed_items", "kept", "pid",
                  "session_id", "launched", "launched_epoch", "finished", "elapsed", "output",
                  "awaits_earlier_launch")
# What a status object found in S3 means for the launch a node is waiting on.
ACCEPT, DEFER, IGNORE = "accept", "defer", "ignore"


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("upload", "run")
    if ctx.settings.transport == "ssm" and not state.cluster.get("id"):
        # Read on the head node without resource_config.json: no cluster id, so no SSM target.
        raise UsageError(f"run {state.run_id} has no cluster id for SSM targets (its nodes were read on the head "
                         "node); collect them with --transport ssh")
    nodes = nodes_to_run(ctx)
    skip_unhealthy(nodes)
    runnable = [n for n in nodes if n["status"] != SKIPPED]
    if not runnable:
        console.log("run: nothing to retry: every selected node was collected" if ctx.options.get("retry_failed") else
                    "run: nothing to do (every selected node already ended; use --retry-failed to retry failures)")
        state.mark_stage("run", "done")
        return EXIT_OK
    collector = NodeCollector(ctx, runnable)
    via = "ssh" if ctx.settings.transport == "ssh" else ctx.settings.session.client
    state.mark_stage("run", "running", started=utc_now(), planned=len(runnable), mode=collector.mode, client=via)
    console.log(f"run: {len(runnable)} node(s), {collector.mode} sessions via {via}, "
                f"at most {ctx.settings.max_workers} open and {ctx.settings.session.rate:g} starts/s")
    try:
        collector.run()
    except KeyboardInterrupt:
        state.mark_stage("run", "interrupted")
        raise Interrupted(f"interrupted: the state is saved; `invoke run --cluster {state.cluster['name']} "
                          f"--run-id {state.run_id}` resumes the unfinished nodes") from None
    finally:
        collector.progress.close()
        state.save()
    state.mark_stage("run", "done", throttles=collector.rate.throttles)
    return end_result(state, runnable, retry_hint=not ctx.options.get("summarize_follows"))


def end_result(state, nodes: list[dict[str, Any]], retry_hint: bool) -> int:
    """One line of what this invocation achieved (shown with --quiet too), and its exit code:
    1 when a node it tried was not collected, as for every stage that collects."""
    counts = Counter(node["status"] for node in nodes)
    failed = len(nodes) - sum(counts[status] for status in SUCCESS_STATUSES)
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    console.log(f"run: {len(nodes) - failed} of {len(nodes)} node(s) collected ({parts})")
    if failed and retry_hint:  # else the summary, next, gives it
        console.log(f"run: {failed} node(s) not collected; retry them with: invoke run --cluster "
                    f"{state.cluster['name']} --run-id {state.run_id} --retry-failed")
    return EXIT_NODES_FAILED if failed else EXIT_OK


def nodes_to_run(ctx: StageContext) -> list[dict[str, Any]]:
    wanted = set(UNFINISHED_STATUSES)
    if ctx.options.get("retry_failed"):
        wanted |= set(FAILURE_STATUSES)
    nodes = list(ctx.state.nodes.values())
    names = ctx.options.get("nodes") or []
    if names:
        nodes, unmatched = match_names(nodes, names)
        if unmatched:
            raise UsageError(f"run {ctx.state.run_id} has no node {', '.join(unmatched)}")
    return [node for node in nodes if node.get("status") in wanted]


def skip_unhealthy(nodes: list[dict[str, Any]]) -> None:
    """HyperPod already says these nodes cannot serve a session: report them, do not spend time on them.
    A node read from the head node has no HyperPod status (None): it is tried."""
    for node in nodes:
        if node["hyperpod_status"] not in ("Running", None) and node.get("status") != RUNNING:
            node.update(status=SKIPPED, error_kind="not_running", finished=utc_now(),
                        error=f"HyperPod status is {node['hyperpod_status']}; not collected")


class NodeCollector:
    """Callbacks for the engine: launch (worker threads), poll and record (main thread)."""

    def __init__(self, ctx: StageContext, nodes: list[dict[str, Any]]):
        self.ctx = ctx
        self.settings = ctx.settings
        self.state = ctx.state
        self.nodes = {node["instance_id"]: node for node in nodes}
        self.detached = ctx.settings.session.mode == "detached"
        self.mode = ctx.settings.session.mode
        self.s3 = buckets.run_client(ctx.aws, self.state.data["s3"])
        self.location = RunLocation.from_dict(self.state.data["s3"])
        self.bucket = self.location.bucket
        self.script_key = self.state.data["stages"]["upload"]["script_key"]
        self.transport = self.make_transport()
        self.rate = AdaptiveRate(ctx.settings.session.rate)
        self.progress = Progress(len(nodes), quiet=bool(ctx.options.get("quiet")), rate=ctx.settings.session.rate,
                                 as_json=bool(ctx.options.get("json")))
        self.seen_status: dict[str, str] = {}
        # Nodes whose current launch found an earlier one still running (the poll thread's own).
        self.deferring: set[str] = set()
        self.last_save = 0.0

    def make_transport(self) -> Transport:
        return transports.make(TransportNeeds(
            self.settings, self.ctx.aws, self.state.cluster, list(self.state.nodes.values()),
            script=Path(self.state.data["stages"]["render"]["script_path"]),
            results_dir=self.state.run_dir / RESULTS_DIR, store_tarball=self.store_pulled_tarball))

    def run(self) -> None:
        to_launch, waiting = [], {}
        earlier = self.earlier_launch_reports()
        for iid, node in self.nodes.items():
            if self.detached and node.get("status") == RUNNING and node.get("launched_epoch"):
                waiting[iid] = self.deadline_from_epoch(node["launched_epoch"])
                self.progress.launched(node)
            elif not self.take_earlier_launch(node, earlier.get(iid), waiting):
                self.reset(node)
                to_launch.append(iid)
        engine = Engine(
            Callbacks(prepare=self.prepare, launch=self.launch, poll=self.poll, on_launched=self.on_launched,
                      on_final=self.on_final, give_up=self.give_up, crashed=self.crashed),
            rate=self.rate, max_sessions=self.settings.max_workers, max_attempts=self.settings.session.attempts,
            run_deadline=time.monotonic() + self.settings.timeouts.run, poll_interval=self.settings.poll_interval,
            cancel=self.ctx.cancel)
        try:
            engine.run(to_launch, waiting)
        finally:
            # The SSH transport keeps one jump-host connection per worker thread across nodes.
            self.transport.close()

    def reset(self, node: dict[str, Any]) -> None:
        for key in OUTCOME_FIELDS:
            node.pop(key, None)
        node.update(status="pending", attempts=0, started=None)

    def earlier_launch_reports(self) -> dict[str, dict[str, Any]]:
        """Status objects of earlier launches of this run, for the nodes about to be launched again
        (retried, or resumed after a crash): what they say decides whether to launch at all."""
        relaunched = [iid for iid, node in self.nodes.items() if node.get("launches")
                      and not (self.detached and node.get("status") == RUNNING and node.get("launched_epoch"))]
        if not relaunched:
            return {}
        wanted = {self.status_key(self.nodes[iid]): iid for iid in relaunched}
        reports = {}
        for obj in self.list_objects(self.location.status_prefix):
            iid = wanted.get(obj["Key"])
            if iid is not None:
                self.seen_status[obj["Key"]] = obj["ETag"]
                reports[iid] = self.read_status(obj["Key"])
        return reports

    def take_earlier_launch(self, node: dict[str, Any], report: dict[str, Any] | None,
                            waiting: dict[str, float]) -> bool:
        """An earlier launch's result is read as what it is: a good tarball collects the node, a script
        still at work is waited for. False when the node is to be launched again."""
        if not report or report.get("launch_id") not in node.get("launches", ()):
            return False
        if report.get("state") == "done":
            outcome = self.judge_report(node, report, self.uploaded_size(node))
            if outcome["status"] not in SUCCESS_STATUSES:
                return False
            self.reset(node)
            self.on_final(node["instance_id"], dict(outcome, launch_id=report["launch_id"]))
            console.log(f"run: {node['instance_id']} was collected by its earlier launch {report['launch_id']}")
            return True
        started = parse_utc(report.get("started")) if report.get("state") == "running" else None
        if started is None or started + self.settings.timeouts.node_script <= time.time():
            return False
        self.reset(node)
        node.update(status=RUNNING, launch_id=report["launch_id"], launched_epoch=started)
        waiting[node["instance_id"]] = self.deadline_from_epoch(started)
        self.progress.launched(node)
        return True

    def prepare(self, iid: str, attempt: int) -> None:
        """Main thread, before the session opens: the launch's id is in the state file before anything is
        typed on the node, so a run resumed after a crash knows this node may run a script of ours."""
        node = self.nodes[iid]
        node["launch_id"] = f"{attempt}.{random_tokens.token_hex(4)}"
        node.setdefault("launches", []).append(node["launch_id"])
        self.state.save()
        self.last_save = time.monotonic()

    # -- worker threads ----------------------------------------------------------------------
    def launch(self, iid: str, attempt: int) -> Launch:
        node = self.nodes[iid]
        started = time.monotonic()
        result = self.transport.run(self.job(node), self.ctx.cancel)
        outcome = {"attempts": attempt, "session_id": result.session_id}
        if result.kind in (SESSION_LAUNCHED, SESSION_OK) and (result.kind == SESSION_LAUNCHED or
                                                              result.rc == NODE_ALREADY_RUNNING):
            # Already running (rc 5): an earlier launch of this run still collects on the node, and its
            # result is the one to wait for; its status object says when it ends, as for a detached launch.
            return Launch(LAUNCHED, dict(outcome, pid=result.pid, launched=utc_now(), launched_epoch=time.time(),
                                         awaits_earlier_launch=result.rc == NODE_ALREADY_RUNNING,
                                         deadline=time.monotonic() + self.settings.timeouts.node_script))
        if result.kind == SESSION_OK:
            return Launch(FINAL, dict(outcome, **self.attached_outcome(node, result),
                                      elapsed=round(time.monotonic() - started, 2)))
        outcome.update(session_failure(result))
        if result.kind == SESSION_THROTTLED:
            return Launch(THROTTLED, outcome)
        if result.kind in (SESSION_UNREACHABLE, SESSION_INTERRUPTED, SESSION_FETCH_FAILED, SESSION_EXITED_EARLY):
            return Launch(FINAL, outcome)
        if result.kind == SESSION_TIMEOUT and result.step == "script":
            return Launch(FINAL, outcome)  # the node had its whole time budget: another try would not help
        return Launch(RETRY, outcome)

    def job(self, node: dict[str, Any]) -> NodeJob:
        """URLs are signed just before each attempt, so they stay within the credentials' lifetime."""
        cluster = self.state.cluster
        return NodeJob(
            instance_id=node["instance_id"],
            target=ssm_target(cluster["id"], node),
            env={"INSTANCE_GROUP": node["group"], "INSTANCE_ID": node["instance_id"],
                 "CLUSTER_TYPE": cluster["type"], "HPC_RUN_ID": self.state.run_id, "HPC_LAUNCH_ID": node["launch_id"],
                 "HPC_DEADLINE_SECONDS": str(node_deadline_seconds(self.settings.timeouts.node_script))},
            secrets=self.presigned_urls(node),
            transcript=self.state.run_dir / "transcripts" / f"{node['instance_id']}.log",
            detached=self.detached)

    def presigned_urls(self, node: dict[str, Any]) -> dict[str, str]:
        urls = {"HPC_SCRIPT_URL": self.presign("get_object", self.script_key),
                "HPC_UPLOAD_URL": self.presign("put_object", self.tarball_key(node)),
                "HPC_STATUS_URL": self.presign("put_object", self.status_key(node))}
        # Other objects the upload stage put in S3 for the nodes (env var name -> key), e.g. a pinned
        # EKS log collector: nodes often have no internet, so they fetch it from the run's prefix.
        for name, key in self.state.data["stages"]["upload"].get("node_downloads", {}).items():
            urls[name] = self.presign("get_object", key)
        return urls

    def presign(self, operation: str, key: str) -> str:
        return buckets.presign(self.s3, operation, self.bucket, key, self.settings.presign_expiry)

    def tarball_key(self, node: dict[str, Any]) -> str:
        return self.location.tarball_key(node)

    def status_key(self, node: dict[str, Any]) -> str:
        return self.location.status_key(node)

    def store_pulled_tarball(self, iid: str, path: Path) -> None:
        """A tarball pulled back over SSH goes to S3 like the others: later stages look for it there."""
        try:
            self.s3.upload_file(str(path), self.bucket, self.tarball_key(self.nodes[iid]))
        except Exception as exc:  # noqa: BLE001 - judged as not uploaded, with the local copy kept
            console.log(f"warning: {path} was pulled over SSH but not stored in S3: {describe_aws_error(exc)}")

    def attached_outcome(self, node: dict[str, Any], result: SessionResult) -> dict[str, Any]:
        report = dict(result.result, rc=result.rc)
        outcome = {"output": result.output}
        outcome.update(self.judge_report(node, report, self.uploaded_size(node)))
        return outcome

    def uploaded_size(self, node: dict[str, Any]) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self.tarball_key(node))["ContentLength"]
        except Exception as exc:  # noqa: BLE001 - a missing object is an outcome, not a crash
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    # -- main thread -------------------------------------------------------------------------
    def poll(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Finished nodes among `keys`: one List of status/ (and of instances/ when some finished).

        Every status object names the launch that wrote it: only the result of the launch a node waits
        on counts, or that of an earlier one when the node said that one was still running."""
        wanted = {self.status_key(self.nodes[iid]): iid for iid in keys}
        reports = {}
        for obj in self.list_objects(self.location.status_prefix):
            iid = wanted.get(obj["Key"])
            if iid is None or self.seen_status.get(obj["Key"]) == obj["ETag"]:
                continue
            self.seen_status[obj["Key"]] = obj["ETag"]
            report = self.read_status(obj["Key"])
            node = self.nodes[iid]
            reading = reading_of(report, node, deferring=node.get("awaits_earlier_launch") or iid in self.deferring)
            if reading == DEFER:
                self.deferring.add(iid)
            elif reading == ACCEPT:
                reports[iid] = report
        if not reports:
            return {}
        sizes = {obj["Key"]: obj["Size"] for obj in self.list_objects(self.location.instances_prefix)}
        return {iid: self.judge_report(self.nodes[iid], report, sizes.get(self.tarball_key(self.nodes[iid])))
                for iid, report in reports.items()}

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def read_status(self, key: str) -> dict[str, Any]:
        try:
            return json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except (ValueError, UnicodeDecodeError):
            return {}  # half-written or foreign: look again at the next poll

    def judge_report(self, node: dict[str, Any], report: dict[str, Any], found: int | None) -> dict[str, Any]:
        """A node script's report (HPC_RESULT line or status object) against what S3 really holds."""
        rc = int(report.get("rc", -1)) if str(report.get("rc", "")).lstrip("-").isdigit() else None
        status = report.get("status")
        kept = report.get("kept")
        if status not in ("ok", "ok_with_errors") or rc not in (NODE_OK, NODE_ITEM_ERRORS, None):
            kind = "upload_failed" if status == "upload_failed" or rc == NODE_UPLOAD_FAILED else "script_failed"
            where = f"; the tarball is kept on the node at {kept}" if kept else ""
            said = f": {report['error']}" if report.get("error") else ""
            where += f"; its log is on the node at {report['log']}" if report.get("log") else ""
            return {"status": FAILED, "error_kind": kind, "kept": kept,
                    "error": f"node script ended {status or 'without a result'} (rc {rc}){said}{where}"}
        claimed = int(report.get("bytes", -1))
        if found != claimed:
            return {"status": FAILED, "error_kind": "upload_failed",
                    "error": f"node reported {claimed} bytes uploaded, S3 has {found if found is not None else 'nothing'}"}
        items, failed_items = int(report.get("items", 0)), int(report.get("failed_items", 0))
        outcome = {"s3_key": self.tarball_key(node), "bytes": claimed, "sha256": report.get("sha256"),
                   "items": items, "failed_items": failed_items, "status": OK, "error_kind": None, "error": None}
        if status == "ok_with_errors" or failed_items:
            outcome.update(status=OK_WITH_ERRORS, error_kind="item_errors",
                           error=f"{failed_items} of {items} items failed (see manifest.tsv)")
        return outcome

    def on_launched(self, iid: str, outcome: dict[str, Any]) -> None:
        node = self.nodes[iid]
        node.update({k: v for k, v in outcome.items() if k != "deadline"}, status=RUNNING)
        node["started"] = node.get("started") or outcome["launched"]
        self.progress.launched(node)
        self.save_soon()

    def on_final(self, iid: str, outcome: dict[str, Any]) -> None:
        node = self.nodes[iid]
        node.update(outcome, finished=utc_now())
        if "elapsed" not in outcome:
            node["elapsed"] = self.elapsed(node)
        self.progress.finished(node)
        self.save_soon()

    def elapsed(self, node: dict[str, Any]) -> float | None:
        if node.get("launched_epoch"):
            return round(time.time() - node["launched_epoch"], 2)
        return None

    def give_up(self, iid: str, last: Launch | None, why: str) -> dict[str, Any]:
        if why == "attempts" and last is not None:
            return dict(last.outcome)
        if why == "node_deadline":
            return {"status": TIMEOUT, "error_kind": "timeout_script",
                    "error": f"no result from the node within {self.settings.timeouts.node_script}s of its launch"}
        if last is not None and last.kind == THROTTLED:
            return dict(last.outcome, error=f"still throttled when the run's deadline passed: {last.outcome['error']}")
        return {"status": TIMEOUT, "error_kind": "timeout_run",
                "error": f"not launched before the run's deadline ({self.settings.timeouts.run}s)"}

    def crashed(self, iid: str, text: str) -> dict[str, Any]:
        return {"status": FAILED, "error_kind": "internal_error", "error": text}

    def deadline_from_epoch(self, launched_epoch: float) -> float:
        remaining = launched_epoch + self.settings.timeouts.node_script - time.time()
        return time.monotonic() + max(0.0, remaining)

    def save_soon(self) -> None:
        """At most one state write per second: 1000 nodes finishing must not mean 1000 full rewrites."""
        now = time.monotonic()
        if now - self.last_save >= 1.0:
            self.state.save()
            self.last_save = now


def reading_of(report: dict[str, Any], node: dict[str, Any], deferring: bool) -> str:
    """ACCEPT a status object as the node's result, DEFER to an earlier launch, or IGNORE it."""
    launch, state = report.get("launch_id"), report.get("state")
    if launch is None:  # a node script from before launch ids: its result is the only one there is
        return ACCEPT if state == "done" else IGNORE
    if launch == node.get("launch_id"):
        return ACCEPT if state == "done" else DEFER if state == "already_running" else IGNORE
    if deferring and state == "done" and launch in node.get("launches", ()):
        return ACCEPT
    return IGNORE


def parse_utc(text: Any) -> float | None:
    """Epoch seconds of an ISO 8601 UTC time a node wrote (2026-12-02T10:00:00Z), or None."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def session_failure(result: SessionResult) -> dict[str, Any]:
    status = {
        SESSION_UNREACHABLE: UNREACHABLE,
        SESSION_THROTTLED: "throttled",
        SESSION_TIMEOUT: TIMEOUT,
        SESSION_INTERRUPTED: INTERRUPTED,
    }.get(result.kind, FAILED)
    kind = f"timeout_{result.step}" if result.kind == SESSION_TIMEOUT else result.kind
    return {"status": status, "error_kind": kind, "error": result.error, "output": result.output}
