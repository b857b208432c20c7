"""upload: put the rendered script under the run's S3 prefix, where nodes fetch it.

When the script was rendered to run the AWS EKS log collector, the collector is fetched here
from its configured URL, kept only if its sha256 is the configured one, and put under the run's
prefix too: nodes often have no internet, and get it from there through a presigned URL that
the run stage hands them in HPC_EKS_COLLECTOR_URL (`node_downloads`). A collector that cannot be
had is a warning, never a failed run: the nodes then record that item as not run.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

from collectors import buckets, console
from collectors.aws import describe_aws_error
from collectors.context import StageContext
from collectors.errors import StageError
from collectors.layout import EKS_COLLECTOR_NAME, SCRIPT_NAME, RunLocation
from collectors.loopback import is_loopback_url

EKS_COLLECTOR_ENV = "HPC_EKS_COLLECTOR_URL"
# The real collector is about 60 KB; anything this big is not it.
EKS_COLLECTOR_MAX_BYTES = 5 * 1024 * 1024
FETCH_TIMEOUT = 60


def execute(ctx: StageContext) -> None:
    state = ctx.state
    render = state.require_stage("render", "upload")
    location = buckets.run_location(ctx.state, ctx.settings, ctx.aws)
    key = RunLocation.from_dict(location).key(SCRIPT_NAME)
    s3 = buckets.run_client(ctx.aws, location)
    put_file(s3, render["script_path"], location["bucket"], key)
    state.data["s3"] = location
    downloads = {}
    collector_key = upload_eks_collector(ctx, s3, location)
    if collector_key:
        downloads[EKS_COLLECTOR_ENV] = collector_key
    state.mark_stage("upload", "done", script_key=key, sha256=render["sha256"], node_downloads=downloads)
    console.log(f"upload: s3://{location['bucket']}/{key}")


def put_file(s3, path: str, bucket: str, key: str) -> None:
    try:
        s3.upload_file(path, bucket, key, ExtraArgs={"ContentType": "text/x-shellscript"})
    except Exception as exc:  # noqa: BLE001 - say which bucket failed and why, in one line
        raise StageError(f"upload: cannot write s3://{bucket}/{key}: {describe_aws_error(exc)}") from None


def upload_eks_collector(ctx: StageContext, s3, location: dict[str, str]) -> str | None:
    """The S3 key of the verified collector, or None (with a warning) when the nodes go without."""
    baked = ctx.state.data["stages"]["render"].get("node_options", {})
    if not baked.get("eks_log_collector"):
        return None
    url, expected = ctx.settings.eks_log_collector_url, baked.get("eks_log_collector_sha256", "")
    try:
        body = fetch_pinned(url, expected, sandbox=ctx.settings.sandbox)
    except StageError as exc:
        console.log(f"warning: {exc}; nodes will record the EKS log collector as not run")
        return None
    key = RunLocation.from_dict(location).key(EKS_COLLECTOR_NAME)
    try:
        s3.put_object(Bucket=location["bucket"], Key=key, Body=body, ContentType="text/x-shellscript")
    except Exception as exc:  # noqa: BLE001 - as above: the nodes go without it
        console.log(f"warning: cannot write s3://{location['bucket']}/{key}: {describe_aws_error(exc)}; "
                    "nodes will record the EKS log collector as not run")
        return None
    console.log(f"upload: s3://{location['bucket']}/{key} (EKS log collector, sha256 {expected[:12]}…)")
    return key


def fetch_pinned(url: str | None, expected_sha256: str, *, sandbox: bool) -> bytes:
    """GET `url`; its body only if its sha256 is `expected_sha256`. Sandbox mode: loopback URLs only."""
    if not url or not url.startswith(("https://", "http://")):
        raise StageError(f"the EKS log collector URL {url!r} is not an http(s) URL")
    if sandbox and not is_loopback_url(url):
        raise StageError(f"sandbox mode: refusing to fetch the EKS log collector from {url} (not loopback)")
    # Sandbox: straight to loopback, never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if sandbox else urllib.request.build_opener()
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT) as response:
            body = response.read(EKS_COLLECTOR_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StageError(f"cannot fetch the EKS log collector from {url}: {exc}") from None
    if len(body) > EKS_COLLECTOR_MAX_BYTES:
        raise StageError(f"the EKS log collector at {url} is larger than {EKS_COLLECTOR_MAX_BYTES} bytes")
    digest = hashlib.sha256(body).hexdigest()
    if digest != expected_sha256:
        raise StageError(f"the EKS log collector at {url} has sha256 {digest}, not the configured {expected_sha256}")
    return body
