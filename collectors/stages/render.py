"""render: compose bash/ into the one `collector_script.sh` every node runs.

Node options that are the same for every node (window, caps, nvidia-bug-report, upload mode,
redaction patterns, EKS log collector) come from the settings and flags of this render and are
baked into the script; they are recorded in the run state next to the script's sha256.
"""

from __future__ import annotations

import hashlib

from collectors import buckets, console, nodescript
from collectors.context import StageContext
from collectors.errors import UsageError
from collectors.layout import SCRIPT_NAME, RunLocation


def execute(ctx: StageContext) -> None:
    state = ctx.state
    state.require_stage("discover", "render")
    commands = ctx.options.get("commands")
    if commands is None:  # re-rendering keeps the commands the run was started with
        commands = state.options.get("commands", [])
    options = node_options(ctx)
    text = nodescript.compose(state.cluster["type"], commands, options=options)
    path = state.run_dir / SCRIPT_NAME
    path.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    state.options["commands"] = list(commands)
    state.options["node_options"] = options.as_dict()
    state.mark_stage("render", "done", script_path=str(path), sha256=digest, bytes=len(text.encode()),
                     node_options=options.as_dict())
    extra = f" with {len(commands)} extra command(s)" if commands else ""
    console.log(f"render: {path} ({state.cluster['type']}{extra}, window {options.since}, "
                f"upload {options.upload_mode}, sha256 {digest[:12]}…)")


def node_options(ctx: StageContext) -> nodescript.NodeOptions:
    """The run's node options from the settings; a value they cannot take is the user's to fix."""
    settings = ctx.settings
    destination, region = awscli_destination(ctx)
    try:
        return nodescript.NodeOptions(
            since=settings.since, file_cap_mb=settings.file_cap_mb, bundle_cap_mb=settings.bundle_cap_mb,
            nvidia_bug_report=settings.nvidia_bug_report, dcgm_diag=settings.dcgm_diag,
            upload_mode=settings.upload_mode,
            s3_destination=destination, s3_region=region, eks_log_collector=wants_eks_log_collector(ctx),
            eks_log_collector_sha256=settings.eks_log_collector_sha256 or "",
            redact_patterns=settings.redact_patterns)
    except ValueError as exc:
        raise UsageError(f"render: {exc}") from None


def wants_eks_log_collector(ctx: StageContext) -> bool:
    """Only a pinned collector is ever run: a URL without its sha256 is refused, not run unchecked."""
    settings = ctx.settings
    if not settings.eks_log_collector_url:
        return False
    if not settings.eks_log_collector_sha256:
        raise UsageError("eks_log_collector_url is set without eks_log_collector_sha256: "
                         "set the sha256 the script must have (it is never run unchecked)")
    return ctx.state.cluster["type"] == "eks"


def awscli_destination(ctx: StageContext) -> tuple[str, str]:
    """In awscli mode nodes write to s3://bucket/<run prefix>/instances/ themselves, in the bucket's
    region, so the run's S3 prefix is fixed now (the upload stage keeps it). ("", "") otherwise."""
    if ctx.settings.upload_mode != "awscli":
        return "", ""
    location = buckets.run_location(ctx.state, ctx.settings, ctx.aws)
    ctx.state.data["s3"] = location
    where = RunLocation.from_dict(location)
    return where.uri(where.instances_prefix), location["region"]
