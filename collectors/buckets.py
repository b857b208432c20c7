"""The run's bucket as S3 sees it: where it lives, whether we may write to it, and the clients to use it.

What S3 accepts decides whether a node can deliver at all, and nodes only hold presigned URLs:
- SigV4 only. S3 refuses SigV2 in every region opened since 2014 and for buckets created since
  June 2020 (docs.aws.amazon.com/AmazonS3/latest/API/sigv2-retirement.html), and botocore presigns
  with SigV2 unless told otherwise (collectors/aws.py tells it).
- Signed for the bucket's own region, and sent to that region's endpoint: a signature for another
  region is refused (AuthorizationQueryParametersError), and a node cannot follow a redirect with a
  URL whose signature names the wrong region. So the region is asked of S3 before anything is signed.
- Valid at most 7 days (X-Amz-Expires <= 604800, docs.aws.amazon.com/AmazonS3/latest/API/
  sigv4-query-string-auth.html).
- Virtual-hosted style where the name allows it: path-style requests are being retired, and a name
  with dots breaks TLS as a host name (docs.aws.amazon.com/AmazonS3/latest/userguide/VirtualHosting.html).
"""

from __future__ import annotations

import re
from typing import Any

import botocore.exceptions

from collectors.aws import Aws, describe_aws_error, error_code
from collectors.errors import UsageError
from collectors.layout import RunLocation
from collectors.settings import Settings
from collectors.state import RunState, cluster_dir_name

REGION_HEADER = "x-amz-bucket-region"
# A bucket name that can be a single DNS label under the regional endpoint (no dots: TLS).
VIRTUAL_HOSTABLE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
WRITE_CHECK_NAME = ".hyperpod-collect-write-check"
NOT_FOUND_CODES = ("404", "NoSuchBucket", "NotFound")
DENIED_CODES = ("403", "AccessDenied", "AllAccessDisabled")


def addressing_style(bucket: str) -> str:
    return "virtual" if VIRTUAL_HOSTABLE_RE.match(bucket) else "path"


def region_of(aws: Aws, bucket: str) -> str:
    """The bucket's region, from HeadBucket's x-amz-bucket-region (given even with 301 and 403),
    else GetBucketLocation. UsageError naming the bucket when it is missing or not ours to see."""
    try:
        response = aws.client("s3", s3_addressing=addressing_style(bucket)).head_bucket(Bucket=bucket)
        region = _region_header(response)
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code in NOT_FOUND_CODES:
            raise UsageError(f"bucket {bucket} does not exist (NoSuchBucket)") from None
        region = _region_header(exc.response)
        if not region and code not in DENIED_CODES:
            raise UsageError(f"cannot reach bucket {bucket}: {describe_aws_error(exc)}") from None
    return region or _location_constraint(aws, bucket)


def _region_header(response: dict[str, Any]) -> str | None:
    return response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(REGION_HEADER)


def _location_constraint(aws: Aws, bucket: str) -> str:
    try:
        constraint = aws.client("s3").get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except botocore.exceptions.ClientError as exc:
        raise UsageError(f"cannot find the region of bucket {bucket}: {describe_aws_error(exc)} (you need "
                         "s3:ListBucket or s3:GetBucketLocation on it)") from None
    # The API's two legacy answers: none for us-east-1, "EU" for eu-west-1.
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint)


def client_for(aws: Aws, bucket: str, region: str) -> Any:
    """The S3 client for this bucket: its region, its endpoint, SigV4 (presigned URLs included)."""
    return aws.client("s3", region=region, s3_addressing=addressing_style(bucket))


def run_client(aws: Aws, location: dict[str, Any]) -> Any:
    """The client for a run's recorded S3 location (a run recorded before regions were kept: asked now)."""
    if not location.get("region"):
        location["region"] = region_of(aws, location["bucket"])
    return client_for(aws, location["bucket"], location["region"])


def run_location(state: RunState, settings: Settings, aws: Aws) -> dict[str, Any]:
    """The run's S3 location (layout.RunLocation as a dict), fixed once chosen: every node of a run
    writes under the same prefix, so another --s3-path later is refused."""
    recorded = state.data.get("s3")
    if recorded and not settings.s3_path:
        return recorded
    path = settings.require_s3_path()
    cluster = cluster_dir_name(state.cluster.get("name") or state.cluster["requested"])
    location = RunLocation.for_run(path.bucket, path.prefix, cluster, state.run_id).as_dict()
    if recorded and {k: recorded.get(k) for k in location if k != "region"} != \
            {k: v for k, v in location.items() if k != "region"}:
        raise UsageError(f"run {state.run_id} already uses s3://{recorded['bucket']}/{recorded['run_prefix']}; "
                         "start a new run (invoke collect / invoke discover) to use another S3 path")
    location["region"] = region_of(aws, path.bucket)
    return location


def store_run_file(aws: Aws, state: RunState, path: Any, name: str, content_type: str) -> tuple[str | None, str | None]:
    """Puts a run file (a stage's bundle) under the run's S3 prefix as NAME: (its s3:// URI, None), or
    (None, why not) — the local copy stands either way."""
    location = state.data.get("s3")
    if not location:
        return None, "the run has no S3 prefix yet (run `invoke upload` first); the file is kept locally only"
    where = RunLocation.from_dict(location)
    key = where.key(name)
    try:
        run_client(aws, location).upload_file(str(path), where.bucket, key, ExtraArgs={"ContentType": content_type})
    except Exception as exc:  # noqa: BLE001 - the local copy stands; say why S3 failed, in one line
        return None, f"not uploaded to {where.uri(key)}: {describe_aws_error(exc)}"
    return where.uri(key), None


def preflight(aws: Aws, bucket: str, prefix: str) -> str:
    """The bucket exists, and we may write and read under `prefix`: checked before a run starts, so a run
    that cannot deliver is never begun. Returns the bucket's region."""
    region = region_of(aws, bucket)
    s3 = client_for(aws, bucket, region)
    key = f"{prefix}/{WRITE_CHECK_NAME}"
    _check(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b""), bucket, key, "s3:PutObject")
    _check(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read(), bucket, key, "s3:GetObject")
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError:
        pass  # not needed for a run; an empty object is left, and the next run writes it again
    return region


def _check(call, bucket: str, key: str, permission: str) -> None:
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in DENIED_CODES:
            raise UsageError(f"bucket {bucket}: access denied to s3://{bucket}/{key} (you need {permission} "
                             f"under s3://{bucket}/{key.rsplit('/', 1)[0]}/)") from None
        raise UsageError(f"bucket {bucket}: {describe_aws_error(exc)} on s3://{bucket}/{key}") from None


def presign(s3, operation: str, bucket: str, key: str, expiry: int) -> str:
    return s3.generate_presigned_url(operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry)
