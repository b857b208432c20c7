"""Stage order and prerequisites: run one stage, or all of them, and checkpoint the state.

Every stage module has the same `execute(ctx)` shape and returns an exit code (or None for 0).
AWS errors are turned into our own errors here, once, so stages stay about their one job.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import botocore.exceptions

from collectors import buckets, console
from collectors.aws import Aws, describe_aws_error
from collectors.context import StageContext
from collectors.errors import EXIT_OK, Interrupted, StageError, UsageError
from collectors.settings import Settings
from collectors.stages import clean, cluster, discover, download, kubectl, render, report, run, summarize, upload
from collectors.state import RunState

STAGES: dict[str, Callable[[StageContext], int | None]] = {
    "discover": discover.execute,
    "render": render.execute,
    "upload": upload.execute,
    "cluster": cluster.execute,
    "kubectl": kubectl.execute,
    "run": run.execute,
    "summarize": summarize.execute,
    "download": download.execute,
    "report": report.execute,
    "clean": clean.execute,
}
# Stages that only read the run folder: they need no AWS session (nor a region), so they work
# offline on any downloaded run; their StageContext.aws is None.
LOCAL_STAGES = ("report", "clean")
CONFIGURATION_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.TokenRetrievalError,
)


@contextmanager
def private_files() -> Iterator[None]:
    """What a run writes is private (folders 0700, files 0600) whatever the user's umask: bundles,
    transcripts and summaries name hosts and hold logs that are not for other users of the machine."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def run_stage(name: str, settings: Settings, options: dict[str, Any]) -> int:
    """One stage on the latest run of the cluster (or `--run-id`); discover starts a new run."""
    with private_files():
        return _run_stage(name, settings, options)


def _run_stage(name: str, settings: Settings, options: dict[str, Any]) -> int:
    cluster = settings.require_cluster()
    aws = None if name in LOCAL_STAGES else Aws(settings)
    run_id = options.get("run_id")
    if name == "discover" and not run_id:
        return _in_new_run(settings, aws, cluster, options, ["discover"])
    state = RunState.load(settings.runs_dir, cluster, run_id)
    with state.locked():
        return _execute(name, StageContext(settings, state, aws, options))


def collect(settings: Settings, options: dict[str, Any]) -> int:
    """All stages in order in a new run; the exit code is the worst of them."""
    with private_files():
        return _collect(settings, options)


def _collect(settings: Settings, options: dict[str, Any]) -> int:
    cluster = settings.require_cluster()
    # cluster after upload: its bundle goes under the run's S3 prefix, which upload fixes.
    order = ["discover", "render", "upload", "cluster", "kubectl", "run", "summarize"]
    options = dict(options, summarize_follows=True)
    if options.get("download", True):
        order += ["download", "report"]
    if options.get("run_id"):
        return _continue_run(settings, cluster, options, order)
    settings.require_s3_path()  # a malformed path fails before anything is created
    return _in_new_run(settings, Aws(settings), cluster, options, order)


def _continue_run(settings: Settings, cluster: str, options: dict[str, Any], order: list[str]) -> int:
    """`collect --run-id R`: the run's stages from its first unfinished one on (a stage before it that
    is over is not run again; every stage after it is, since what they read has changed)."""
    state = RunState.load(settings.runs_dir, cluster, options["run_id"])
    first = next((i for i, name in enumerate(order) if not state.stage_finished(name)), len(order))
    if first == len(order):
        console.log(f"collect: every stage of run {state.run_id} is over; `invoke run --retry-failed --run-id "
                    f"{state.run_id}` collects its failed nodes again")
        return EXIT_OK
    console.log(f"collect: continuing run {state.run_id} from its {order[first]} stage")
    with state.locked():
        ctx = StageContext(settings, state, Aws(settings), options)
        return max([EXIT_OK] + [_execute(name, ctx) for name in order[first:]])


def _in_new_run(settings: Settings, aws: Aws, cluster: str, options: dict[str, Any], order: list[str]) -> int:
    if settings.s3_path:
        _preflight(aws, settings)
    state = RunState.create(settings.runs_dir, cluster)
    with state.locked():
        ctx = StageContext(settings, state, aws, options)
        try:
            _execute("discover", ctx)
        except (UsageError, StageError):
            state.discard()  # nothing was collected; do not leave an empty run behind as "latest"
            raise
        state.adopt_cluster_name(state.cluster["name"])
        return max([EXIT_OK] + [_execute(name, ctx) for name in order[1:]])


def _preflight(aws: Aws, settings: Settings) -> None:
    """The bucket exists and takes our writes, before a run folder exists: a run that could not deliver
    is never begun."""
    path = settings.require_s3_path()
    try:
        buckets.preflight(aws, path.bucket, path.prefix)
    except CONFIGURATION_ERRORS as exc:
        raise UsageError(describe_aws_error(exc)) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StageError(f"preflight of bucket {path.bucket}: {exc}") from None


def _execute(name: str, ctx: StageContext) -> int:
    try:
        return STAGES[name](ctx) or EXIT_OK
    except KeyboardInterrupt:
        ctx.state.mark_stage(name, "interrupted")
        raise Interrupted(f"interrupted during {name}; the state is saved in {ctx.state.path}") from None
    except CONFIGURATION_ERRORS as exc:
        raise UsageError(describe_aws_error(exc)) from None
    except botocore.exceptions.ClientError as exc:
        ctx.state.mark_stage(name, "failed", error=describe_aws_error(exc))
        raise StageError(f"{name}: {describe_aws_error(exc)}") from None
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        ctx.state.mark_stage(name, "failed", error=str(exc))
        raise StageError(f"{name}: {exc}") from None
