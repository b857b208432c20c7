"""cluster: what HyperPod itself recorded about the cluster and the run's nodes, into cluster_api.tar.gz.

The nodes we most need to understand are often the ones no session reaches; HyperPod's control plane
still knows what it did to them. Collected, each answer whole as JSON (collectors/cluster_api.py
names the files):
- DescribeCluster; every page of ListClusterNodes; DescribeClusterNode for each selected node that is
  not Running;
- every page of ListClusterEvents in the run's `--since` window, filtered by the API to the selected
  instance groups or nodes where the run selected some (the whole cluster otherwise, or when more
  nodes were named than PER_NODE_QUERIES_MAX); DescribeClusterEvent for each Error event;
- the selected nodes' streams of the cluster's CloudWatch log group (lifecycle scripts, health
  monitoring agent), found with DescribeLogStreams and read newest first with GetLogEvents back to the
  window's start or the node script's per-file cap (`file_cap_mb`), whichever comes first: a long
  stream keeps its last lines, as a node's file keeps its last bytes.

Everything is redacted by the nodes' own catalogue (collectors/redaction.py) and packed with a
manifest.tsv (file, IAM action, status, calls, seconds, bytes, redactions, note) into
cluster_api.tar.gz in the run folder and under the run's S3 prefix.

A call that fails (a missing permission above all) is recorded and named, never raised: the rest is
still collected and the stage ends `incomplete` (exit 1), naming each denied action. Cluster events
exist only for clusters whose NodeProvisioningMode is Continuous; for others that part is recorded as
not available, which is not a failure.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import botocore.exceptions

from collectors import buckets, console
from collectors.aws import describe_aws_error, error_code
from collectors.cluster_api import (
    ACCESS_DENIED_CODES,
    DENIED,
    DESCRIBE_CLUSTER,
    EVENTS_FOLDER,
    FAILED,
    LIST_CLUSTER_EVENTS,
    LIST_CLUSTER_NODES,
    LOG_STREAMS,
    MANIFEST,
    MANIFEST_COLUMNS,
    NODES_FOLDER,
    NOT_AVAILABLE,
    OK,
    TARBALL,
    TOP_FOLDER,
    log_group_name,
    stream_file,
    stream_node,
    utc_stamp,
    window_start,
)
from collectors.context import StageContext
from collectors.errors import EXIT_OK
from collectors.redaction import RedactionError, redact_files
from collectors.state import utc_now

STAGE = "cluster"
PER_NODE_QUERIES_MAX = 10  # more named nodes than this: one listing of the cluster, filtered here
EVENTS_PAGE = 100  # ListClusterEvents' most per page
STREAMS_PAGE = 50  # DescribeLogStreams' most per page
EVENT_DETAILS_MAX = 200  # DescribeClusterEvent calls at most: the newest Error events
LOG_PAGES_MAX = 10_000  # a stream read back page by page; a token that never repeats ends here
NOT_FOUND_CODES = ("ResourceNotFoundException", "ResourceNotFound")


@dataclass
class Entry:
    """One manifest row: a file of the bundle and the calls that made it."""

    file: str
    action: str
    status: str = OK
    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0
    redactions: int = 0
    note: str = ""
    answered: bool = True  # False: no answer at all (no route, timeout), not a refusal


@dataclass
class Bundle:
    """The bundle being written: its folder and what each call gave."""

    folder: Path
    entries: list[Entry] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fetch(self, file: str, action: str, read: Callable[[Entry], Any], as_text: bool = False) -> Any:
        """Runs READ (which counts its calls in the entry), writes what it returns to FILE, and records
        how it went; an AWS error is recorded, never raised. Returns the data, None when it failed."""
        entry = Entry(file, action)
        started = time.monotonic()
        try:
            data = read(entry)
        except botocore.exceptions.ClientError as exc:
            entry.calls += 1  # the call that was refused
            entry.status = DENIED if error_code(exc) in ACCESS_DENIED_CODES else FAILED
            entry.note = describe_aws_error(exc)
            data = None
        except botocore.exceptions.BotoCoreError as exc:
            entry.status, entry.note, entry.answered, data = FAILED, str(exc), False, None
        entry.seconds = time.monotonic() - started
        if data is not None:
            entry.bytes = self.write(file, data if as_text else json.dumps(data, indent=1, default=json_value) + "\n")
        with self.lock:
            self.entries.append(entry)
        return data

    def note(self, file: str, action: str, status: str, note: str) -> None:
        with self.lock:
            self.entries.append(Entry(file, action, status, note=note))

    def write(self, file: str, text: str) -> int:
        path = self.folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path.stat().st_size


def json_value(value: Any) -> str:
    """boto3 gives timestamps as datetimes: ISO 8601 in UTC, as the report reads them."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def answer(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "ResponseMetadata"}


# ---------------------------------------------------------------------------------------------
# The stage


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("discover", STAGE)
    if state.cluster.get("discovered_from"):
        # The nodes were read on the head node because the SageMaker API was out of reach (or not
        # to be used): HyperPod's own record of them cannot be had, which is no fault of the run.
        console.log(f"cluster: skipped; the nodes were read from the {state.cluster['discovered_from']}, not the "
                    "SageMaker API, so HyperPod's events and logs are not collected")
        state.mark_stage(STAGE, "skipped", reason="nodes read on the head node")
        return EXIT_OK
    started = time.monotonic()
    since = state.options.get("node_options", {}).get("since") or ctx.settings.since
    start = window_start(since, datetime.now(timezone.utc))
    # Staged in the run folder, not /tmp: a thousand nodes' log streams add up.
    with tempfile.TemporaryDirectory(prefix=".cluster-", dir=state.run_dir) as scratch:
        bundle = Bundle(Path(scratch) / TOP_FOLDER)
        bundle.folder.mkdir()
        with ThreadPoolExecutor(max_workers=ctx.settings.api_workers,
                                thread_name_prefix="cluster") as pool:
            reader = Reader(ctx, bundle, pool, start)
            reader.collect()
        redaction_error = redact_bundle(ctx, bundle, Path(scratch) / "redact")
        write_manifest(bundle)
        tarball = state.run_dir / TARBALL
        pack(bundle.folder, tarball)
    s3_uri, upload_error = buckets.store_run_file(ctx.aws, ctx.state, tarball, TARBALL, "application/gzip")
    return record(ctx, bundle, reader, tarball, s3_uri, [e for e in (redaction_error, upload_error) if e],
                  round(time.monotonic() - started, 2), since)


class Reader:
    """The calls, in order: the cluster, its nodes, its events, its logs."""

    def __init__(self, ctx: StageContext, bundle: Bundle, pool: ThreadPoolExecutor, start: datetime | None):
        self.ctx, self.bundle, self.pool, self.start = ctx, bundle, pool, start
        self.sagemaker = ctx.aws.client("sagemaker")
        self.logs = ctx.aws.client("logs")
        self.cluster = dict(ctx.state.cluster)
        self.nodes = ctx.state.nodes
        self.events: list[dict[str, Any]] = []
        self.streams: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return self.cluster.get("arn") or self.cluster.get("name") or self.cluster["requested"]

    def collect(self) -> None:
        described = self.bundle.fetch(DESCRIBE_CLUSTER, "sagemaker:DescribeCluster", self.describe_cluster)
        if described is None and not self.bundle.entries[-1].answered:
            return  # the API does not answer (a run discovered from the head node): every call would wait as long
        if described:
            self.cluster.update(arn=described["ClusterArn"], name=described["ClusterName"])
        listed = self.bundle.fetch(LIST_CLUSTER_NODES, "sagemaker:ListClusterNodes", self.list_cluster_nodes)
        self.describe_nodes(listed)
        self.collect_events(described)
        self.collect_logs()

    def describe_cluster(self, entry: Entry) -> dict[str, Any]:
        described = answer(self.sagemaker.describe_cluster(ClusterName=self.name))
        entry.calls += 1
        return described

    def list_cluster_nodes(self, entry: Entry) -> list[dict[str, Any]]:
        pages = []
        for page in self.sagemaker.get_paginator("list_cluster_nodes").paginate(
                ClusterName=self.name, PaginationConfig={"PageSize": 100}):
            entry.calls += 1
            pages.append(answer(page))
        return pages

    def describe_nodes(self, listed: list[dict[str, Any]] | None) -> None:
        """The nodes that are not Running now (by this listing, else by discover's)."""
        now = {s["InstanceId"]: (s.get("InstanceStatus") or {}).get("Status")
               for page in listed or [] for s in page.get("ClusterNodeSummaries", [])}
        wanted = [iid for iid, node in self.nodes.items() if now.get(iid, node.get("hyperpod_status")) != "Running"]

        def describe(iid: str) -> None:
            def call(entry: Entry) -> dict[str, Any]:
                described = answer(self.sagemaker.describe_cluster_node(ClusterName=self.name, NodeId=iid))
                entry.calls += 1
                return described

            self.bundle.fetch(f"{NODES_FOLDER}/{iid}.json", "sagemaker:DescribeClusterNode", call)

        list(self.pool.map(describe, wanted))

    # -- events ----------------------------------------------------------------------------

    def collect_events(self, described: dict[str, Any] | None) -> None:
        mode = (described or {}).get("NodeProvisioningMode")
        if described is not None and mode != "Continuous":
            self.bundle.note(LIST_CLUSTER_EVENTS, "sagemaker:ListClusterEvents", NOT_AVAILABLE,
                             f"HyperPod keeps cluster events only for clusters whose NodeProvisioningMode is "
                             f"Continuous; this one's is {mode or 'not set'}")
            return
        listing = self.bundle.fetch(LIST_CLUSTER_EVENTS, "sagemaker:ListClusterEvents", self.list_events)
        if listing is None:
            return
        self.events = [event for query in listing for page in query["pages"] for event in page.get("Events", [])]
        errors = [event for event in self.events if event.get("EventLevel") == "Error"]
        errors.sort(key=lambda event: str(event.get("EventTime")), reverse=True)
        list(self.pool.map(self.describe_event, errors[:EVENT_DETAILS_MAX]))

    def list_events(self, entry: Entry) -> list[dict[str, Any]]:
        """Every page of every query, each once; events outside the selection dropped (a listing of
        the whole cluster when more nodes were named than the per-node queries are for)."""
        seen: set[str] = set()
        listing = []
        for query in event_queries(self.ctx.state.options, self.nodes):
            if self.start is not None:
                query = dict(query, EventTimeAfter=self.start)
            pages = []
            for page in self.sagemaker.get_paginator("list_cluster_events").paginate(
                    ClusterName=self.name, SortOrder="Ascending", **query,
                    PaginationConfig={"PageSize": EVENTS_PAGE}):
                entry.calls += 1
                page = answer(page)
                page["Events"] = [event for event in page.get("Events", [])
                                  if event["EventId"] not in seen and self.selected(event)]
                seen.update(event["EventId"] for event in page["Events"])
                pages.append(page)
            listing.append({"query": query, "pages": pages})
        return listing

    def selected(self, event: dict[str, Any]) -> bool:
        if event.get("InstanceId"):
            return event["InstanceId"] in self.nodes
        group = event.get("InstanceGroupName")
        return group is None or group in {node.get("group") for node in self.nodes.values()}

    def describe_event(self, event: dict[str, Any]) -> None:
        def call(entry: Entry) -> dict[str, Any]:
            described = answer(self.sagemaker.describe_cluster_event(ClusterName=self.name, EventId=event["EventId"]))
            entry.calls += 1
            return described

        self.bundle.fetch(f"{EVENTS_FOLDER}/{event['EventId']}.json", "sagemaker:DescribeClusterEvent", call)

    # -- logs ------------------------------------------------------------------------------

    @property
    def log_group(self) -> str | None:
        arn = self.cluster.get("arn")
        return log_group_name(self.cluster["name"], arn) if arn and self.cluster.get("name") else None

    def collect_logs(self) -> None:
        group = self.log_group
        if group is None:
            self.bundle.note(LOG_STREAMS, "logs:DescribeLogStreams", FAILED,
                             "the cluster's ARN is unknown (DescribeCluster failed), so is its log group")
            return
        listed = self.bundle.fetch(LOG_STREAMS, "logs:DescribeLogStreams", self.describe_streams)
        if listed is None:
            self.mark_missing_group(group)
            return
        start_ms = int(self.start.timestamp() * 1000) if self.start else 0
        self.streams = [s for s in listed["logStreams"] if s.get("lastEventTimestamp", 0) >= start_ms]
        list(self.pool.map(lambda stream: self.read_stream(group, stream, start_ms), self.streams))

    def describe_streams(self, entry: Entry) -> dict[str, Any]:
        """Every stream of the log group (pages of 50), the selected nodes' kept."""
        kept = []
        for page in self.logs.get_paginator("describe_log_streams").paginate(
                logGroupName=self.log_group, PaginationConfig={"PageSize": STREAMS_PAGE}):
            entry.calls += 1
            kept += [stream for stream in page.get("logStreams", []) if stream_node(stream["logStreamName"])
                     in self.nodes]
        return {"logGroupName": self.log_group, "logStreams": kept}

    def mark_missing_group(self, group: str) -> None:
        """A cluster whose nodes never wrote to CloudWatch has no log group: nothing to read, no failure."""
        with self.bundle.lock:
            entry = next(e for e in self.bundle.entries if e.file == LOG_STREAMS)
            if entry.status == FAILED and any(code in entry.note for code in NOT_FOUND_CODES):
                entry.status, entry.note = NOT_AVAILABLE, f"no log group {group}: {entry.note}"

    def read_stream(self, group: str, stream: dict[str, Any], start_ms: int) -> None:
        name = stream["logStreamName"]
        cap = self.ctx.settings.file_cap_mb * 1024 * 1024

        def read(entry: Entry) -> str:
            lines, cut = newest_lines(self.logs, group, name, start_ms, cap, entry)
            if cut:
                entry.note = f"cut to its last {self.ctx.settings.file_cap_mb} MB (file_cap_mb)"
            return "".join(lines)

        self.bundle.fetch(stream_file(name), "logs:GetLogEvents", read, as_text=True)


def event_queries(options: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """ListClusterEvents' filters for the run's selection: the API takes one group or one node a call."""
    groups = options.get("instance_groups") or []
    if groups:
        chosen = sorted({node["group"] for node in nodes.values()})
        return [{"ResourceType": "Cluster"}] + [{"InstanceGroupName": group} for group in chosen]
    if options.get("nodes") and len(nodes) <= PER_NODE_QUERIES_MAX:
        chosen = sorted({node["group"] for node in nodes.values()})
        return ([{"ResourceType": "Cluster"}]
                + [{"ResourceType": "InstanceGroup", "InstanceGroupName": group} for group in chosen]
                + [{"NodeId": iid} for iid in sorted(nodes)])
    return [{}]


def newest_lines(logs: Any, group: str, stream: str, start_ms: int, cap: int, entry: Entry) -> tuple[list[str], bool]:
    """The stream's lines (UTC stamp, message) from the window's start, oldest first, at most CAP bytes:
    read newest first, page by page back, until the window's start, the cap or the stream's start."""
    newest_first: list[str] = []
    size, token = 0, None
    for _ in range(LOG_PAGES_MAX):
        request = {"logGroupName": group, "logStreamName": stream, "startFromHead": False, "startTime": start_ms}
        page = logs.get_log_events(**request, **({"nextToken": token} if token else {}))
        entry.calls += 1  # after the answer: a refused call is counted by Bundle.fetch
        for event in reversed(page.get("events", [])):
            line = f"{utc_stamp(event['timestamp'])} {event['message'].rstrip()}\n"
            size += len(line.encode())
            if size > cap:
                return newest_first[::-1], True
            newest_first.append(line)
        if page.get("nextBackwardToken") in (None, token):
            break
        token = page["nextBackwardToken"]
    return newest_first[::-1], False


# ---------------------------------------------------------------------------------------------
# Output


def redact_bundle(ctx: StageContext, bundle: Bundle, work: Path) -> str | None:
    """Every file through the nodes' catalogue; a file it did not finish is gone and says so."""
    files = {entry.file: bundle.folder / entry.file for entry in bundle.entries if entry.bytes}
    try:
        counts = redact_files(list(files.values()), work, ctx.settings.redact_patterns)
        problem = None
    except RedactionError as exc:
        counts, problem = {}, f"{exc}; the bundle holds none of the answers"
    for entry in bundle.entries:
        path = files.get(entry.file)
        if path is None:
            continue
        if path in counts:
            entry.redactions, entry.bytes = counts[path], path.stat().st_size
        else:
            entry.status, entry.bytes = FAILED, 0
            entry.note = "removed: redaction did not finish, so it is not shipped"
    return problem


def write_manifest(bundle: Bundle) -> None:
    rows = ["\t".join(MANIFEST_COLUMNS)]
    for e in sorted(bundle.entries, key=lambda e: e.file):
        cells = (e.file, e.action, e.status, str(e.calls), f"{e.seconds:.2f}", str(e.bytes), str(e.redactions),
                 " ".join(e.note.split()))
        rows.append("\t".join(cells))
    (bundle.folder / MANIFEST).write_text("\n".join(rows) + "\n")


def pack(folder: Path, tarball: Path) -> None:
    partial = tarball.with_name(tarball.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=TOP_FOLDER)
    partial.replace(tarball)


def rerun_command(ctx: StageContext) -> str:
    return f"invoke cluster --cluster {ctx.state.cluster['name']} --run-id {ctx.state.run_id}"


def record(ctx: StageContext, bundle: Bundle, reader: Reader, tarball: Path, s3_uri: str | None,
           problems: list[str], seconds: float, since: str) -> int:
    entries = bundle.entries
    denied = sorted({e.action for e in entries if e.status == DENIED})
    failed = [e for e in entries if e.status == FAILED]
    if denied:
        problems.insert(0, f"access denied to {', '.join(denied)} (README: IAM permissions)")
    problems += [f"{e.action} for {e.file} failed: {e.note}" for e in failed[:5]]
    if len(failed) > 5:
        problems.append(f"{len(failed) - 5} more call(s) failed (manifest.tsv)")
    details = {
        "tarball": str(tarball), "s3_uri": s3_uri, "seconds": seconds, "collected": utc_now(), "since": since,
        "events": len(reader.events), "log_streams": len(reader.streams), "denied": denied,
        "calls": sum(e.calls for e in entries),
        "not_available": [f"{e.action}: {e.note}" for e in entries if e.status == NOT_AVAILABLE],
    }
    size = console.human_bytes(tarball.stat().st_size)
    summary = (f"cluster: {len(reader.events)} event(s) since {since}, {len(reader.streams)} log stream(s), "
               f"{details['calls']} call(s) in {seconds:.1f} s; {tarball} ({size})"
               + (f" and {s3_uri}" if s3_uri else ""))
    console.log(summary)
    for note in details["not_available"]:
        console.log(f"cluster: not collected: {note}")
    if not problems:
        ctx.state.mark_stage(STAGE, "done", **details)
        return 0
    message = "; ".join(problems) + f"; then run: {rerun_command(ctx)}"
    console.log(f"cluster: INCOMPLETE: {message}")
    ctx.state.mark_stage(STAGE, "incomplete", error=message, **details)
    return 1
