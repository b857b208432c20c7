"""upload: put the rendered script under the run's S3 prefix, where nodes fetch it."""

from __future__ import annotations

from collectors import console
from collectors.aws import describe_aws_error
from collectors.context import StageContext
from collectors.errors import StageError, UsageError
from collectors.settings import S3Path
from collectors.state import RunState, cluster_dir_name


def execute(ctx: StageContext) -> None:
    state = ctx.state
    render = state.require_stage("render", "upload")
    location = run_location(ctx)
    key = f"{location['run_prefix']}/collector_script.sh"
    s3 = ctx.aws.client("s3")
    try:
        s3.upload_file(render["script_path"], location["bucket"], key,
                       ExtraArgs={"ContentType": "text/x-shellscript"})
    except Exception as exc:  # noqa: BLE001 - say which bucket failed and why, in one line
        raise StageError(f"upload: cannot write s3://{location['bucket']}/{key}: {describe_aws_error(exc)}") from None
    state.data["s3"] = location
    state.mark_stage("upload", "done", script_key=key, sha256=render["sha256"])
    console.log(f"upload: s3://{location['bucket']}/{key}")


def run_location(ctx: StageContext) -> dict[str, str]:
    """The run's S3 prefix is fixed once chosen: every node of a run writes under the same one."""
    recorded = ctx.state.data.get("s3")
    if recorded and not ctx.settings.s3_path:
        return recorded
    path = ctx.settings.require_s3_path()
    location = location_for(ctx.state, path)
    if recorded and recorded != location:
        raise UsageError(f"run {ctx.state.run_id} already uses s3://{recorded['bucket']}/{recorded['run_prefix']}; "
                         "start a new run (invoke collect / invoke discover) to use another S3 path")
    return location


def location_for(state: RunState, path: S3Path) -> dict[str, str]:
    cluster = cluster_dir_name(state.cluster.get("name") or state.cluster["requested"])
    return {"bucket": path.bucket, "prefix": path.prefix, "run_prefix": f"{path.prefix}/{cluster}/{state.run_id}"}
