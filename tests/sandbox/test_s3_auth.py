"""The sandbox's S3 refuses what S3 refuses, and takes what S3 takes (collectors/sandbox/s3auth.py).

The sandbox's AWS alone (its server, bucket and cluster in the API; no nodes, so no root needed).
Requests come from real clients: curl for what a node sends (presigned URLs, and raw requests signed
by botocore's signer), boto3 and the AWS CLI for what the tool sends. Each refusal is checked against
S3's real answer; docs/aws-fidelity.md names the page or public report each one comes from.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import boto3
import botocore.auth
import botocore.config
import botocore.credentials
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSRequest

from collectors.sandbox import Sandbox, SandboxSpec, sandbox_client
from collectors.sandbox.credentials import FAKE_CREDENTIALS
from tests.conftest import require_tool

OTHER_REGION = "eu-west-1"
OTHER_BUCKET = "hyperpod-sandbox-reports-eu"
SIGV2_REFUSAL = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """(sandbox, endpoint, spec): a sandbox's AWS with its bucket in us-west-2 and another in eu-west-1."""
    sandbox = Sandbox(tmp_path_factory.mktemp("s3auth") / "root")
    spec = SandboxSpec.simple(type="slurm", nodes=1)
    try:
        endpoint, _, _ = sandbox.start_aws(spec)
        sandbox.create_bucket(OTHER_BUCKET, OTHER_REGION)
        yield sandbox, endpoint, spec
    finally:
        sandbox.down()


def s3(aws, region: str | None = None):
    """The sandbox's own S3 client (SigV4), for `region` (default: the sandbox's)."""
    sandbox, endpoint, spec = aws
    return sandbox_client("s3", endpoint, region or spec.region, sandbox.root)


def plain_s3(aws, access_key: str = FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], **config):
    """A boto3 client configured only as given: what a caller gets without the sandbox's settings."""
    return boto3.client("s3", endpoint_url=aws[1], region_name=aws[2].region, aws_access_key_id=access_key,
                        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=botocore.config.Config(proxies={}, **config))


def curl(url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a request made with curl, as a node makes it."""
    require_tool("curl", "curl")
    with tempfile.NamedTemporaryFile("r", newline="") as head:
        result = subprocess.run(["curl", "-sS", "--noproxy", "*", "-D", head.name, *args, url],
                                capture_output=True, text=True, timeout=30, check=True)
        # The last response's head (curl also writes an interim `100 Continue` there).
        status_line, *header_lines = head.read().strip().split("\r\n\r\n")[-1].split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, result.stdout


def error(body: str) -> dict[str, str]:
    return {child.tag: child.text or "" for child in ElementTree.fromstring(body)}


def stats(aws, reset: bool = False) -> dict:
    request = urllib.request.Request(aws[1] + "/_emu/stats", method="DELETE" if reset else "GET")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
        return json.loads(response.read())


def put(aws, key: str, body: bytes = b"hello", bucket: str | None = None) -> None:
    s3(aws).put_object(Bucket=bucket or aws[2].bucket, Key=key, Body=body)


def presign(client, operation: str, bucket: str, key: str, expires: int = 300) -> str:
    return client.generate_presigned_url(operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


def header_signed(url: str, region: str, method: str = "GET", body: bytes = b"",
                  sent_body: bytes | None = None) -> list[str]:
    """curl arguments for a request signed in the Authorization header by botocore's S3 signer, for
    `body` (its hash signed in x-amz-content-sha256); `sent_body` is sent instead when given."""
    request = AWSRequest(method=method, url=url, data=body)
    credentials = botocore.credentials.Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                                   FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    botocore.auth.S3SigV4Auth(credentials, "s3", region).add_auth(request)
    args = ["-X", method] if method != "HEAD" else ["--head", "-o", os.devnull]
    for name, value in request.headers.items():
        args += ["-H", f"{name}: {value}"]
    sent = body if sent_body is None else sent_body
    return args + (["-H", "Content-Type: application/octet-stream", "--data-binary", sent.decode()] if sent else [])


def sign_in_the_past(monkeypatch) -> None:
    """From now on in this test, botocore signs as if it were two hours ago (a URL made then, used now)."""
    then = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: then)


# ---------------------------------------------------------------------------------------------
# What S3 takes


def test_a_node_fetches_and_uploads_with_sigv4_presigned_urls(aws):
    bucket = aws[2].bucket
    put(aws, "scripts/a b+c!.sh", b"#!/bin/bash\necho hi\n")
    status, _, body = curl(presign(s3(aws), "get_object", bucket, "scripts/a b+c!.sh"))
    assert (status, body) == (200, "#!/bin/bash\necho hi\n")
    status, _, _ = curl(presign(s3(aws), "put_object", bucket, "instances/n.tar.gz"), "-T", __file__)
    assert status == 200
    uploaded = s3(aws).head_object(Bucket=bucket, Key="instances/n.tar.gz")
    assert uploaded["ContentLength"] == Path(__file__).stat().st_size


def test_the_tools_own_calls_pass_with_boto3_and_the_aws_cli(aws, tmp_path):
    client, bucket = s3(aws), aws[2].bucket
    client.put_object(Bucket=bucket, Key="tool/summary.json", Body=b"{}")
    assert client.get_object(Bucket=bucket, Key="tool/summary.json")["Body"].read() == b"{}"
    assert client.head_object(Bucket=bucket, Key="tool/summary.json")["ContentLength"] == 2
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # over boto3's 8 MB threshold: a multipart upload
    client.upload_file(str(big), bucket, "tool/big.bin")
    assert client.head_object(Bucket=bucket, Key="tool/big.bin")["ContentLength"] == big.stat().st_size
    env = dict(os.environ, AWS_ENDPOINT_URL=aws[1], AWS_DEFAULT_REGION=aws[2].region, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true", **FAKE_CREDENTIALS)
    env.pop("AWS_PROFILE", None)
    cli = [sys.executable, "-m", "awscli", "s3", "cp", "--only-show-errors", str(big), f"s3://{bucket}/cli/big.bin"]
    subprocess.run(cli, env=env, check=True, timeout=120)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="cli/")["Contents"]
    assert [(item["Key"], item["Size"]) for item in listed] == [("cli/big.bin", big.stat().st_size)]


def test_botocores_region_redirector_finds_a_bucket_in_another_region(aws):
    """A client for us-west-2 is told the bucket's region and signs again for it, as against S3."""
    client = s3(aws)
    stats(aws, reset=True)
    client.put_object(Bucket=OTHER_BUCKET, Key="k", Body=b"x")
    assert client.get_object(Bucket=OTHER_BUCKET, Key="k")["Body"].read() == b"x"
    assert client.head_object(Bucket=OTHER_BUCKET, Key="k")["ContentLength"] == 1
    # The first call is refused (signed for us-west-2) and sent again; botocore then remembers the region.
    counts = stats(aws)
    assert [counts[f"s3 {method} {OTHER_BUCKET}"] for method in ("PUT", "GET", "HEAD")] == [2, 1, 1]
    assert client.get_bucket_location(Bucket=OTHER_BUCKET)["LocationConstraint"] == OTHER_REGION


# ---------------------------------------------------------------------------------------------
# What S3 refuses


def test_an_expired_presigned_url_is_refused_with_s3s_times(aws, monkeypatch):
    put(aws, "old.txt")
    sign_in_the_past(monkeypatch)
    status, _, body = curl(presign(s3(aws), "get_object", aws[2].bucket, "old.txt", expires=60))
    assert status == 403
    answer = error(body)
    assert (answer["Code"], answer["Message"], answer["X-Amz-Expires"]) == ("AccessDenied", "Request has expired", "60")
    expired_at = datetime.datetime.strptime(answer["Expires"], "%Y-%m-%dT%H:%M:%SZ")
    server_time = datetime.datetime.strptime(answer["ServerTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert datetime.timedelta(hours=1) < server_time - expired_at < datetime.timedelta(hours=3)


def test_a_presigned_url_valid_for_more_than_seven_days_is_refused(aws):
    put(aws, "week.txt")
    status, _, body = curl(presign(s3(aws), "get_object", aws[2].bucket, "week.txt", expires=604801))
    assert (status, error(body)["Code"]) == (400, "AuthorizationQueryParametersError")
    assert error(body)["Message"] == ("X-Amz-Expires must be less than a week (in seconds); that is, the given "
                                      "X-Amz-Expires must be less than 604800 seconds")
    assert curl(presign(s3(aws), "get_object", aws[2].bucket, "week.txt", expires=604800))[0] == 200


def test_sigv2_presigned_urls_are_refused(aws):
    put(aws, "v2.txt")
    url = presign(plain_s3(aws), "get_object", aws[2].bucket, "v2.txt")  # botocore's default: SigV2
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    for method in ([], ["-T", __file__]):
        status, _, body = curl(url, *method)
        assert (status, error(body)["Code"], error(body)["Message"]) == (400, "InvalidRequest", SIGV2_REFUSAL)


def test_sigv2_signed_headers_are_refused(aws):
    sigv2 = plain_s3(aws, signature_version="s3", retries={"max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        sigv2.put_object(Bucket=aws[2].bucket, Key="v2-header.txt", Body=b"x")
    assert refused.value.response["Error"] == {"Code": "InvalidRequest", "Message": SIGV2_REFUSAL}
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_url_presigned_for_another_region_names_the_buckets_region(aws):
    put(aws, "eu.txt", bucket=OTHER_BUCKET)
    status, _, body = curl(presign(s3(aws), "get_object", OTHER_BUCKET, "eu.txt"))
    assert (status, error(body)["Code"]) == (400, "AuthorizationQueryParametersError")
    assert error(body)["Region"] == OTHER_REGION
    assert error(body)["Message"] == ("Error parsing the X-Amz-Credential parameter; the region 'us-west-2' is wrong; "
                                      f"expecting '{OTHER_REGION}'")
    assert curl(presign(s3(aws, OTHER_REGION), "get_object", OTHER_BUCKET, "eu.txt"))[0] == 200


def test_a_header_signed_request_for_another_region_is_malformed_and_says_where_the_bucket_is(aws):
    put(aws, "eu-header.txt", bucket=OTHER_BUCKET)
    url = f"{aws[1]}/{OTHER_BUCKET}/eu-header.txt"
    status, headers, body = curl(url, *header_signed(url, "us-west-2"))
    assert (status, error(body)["Code"], error(body)["Region"]) == (400, "AuthorizationHeaderMalformed", OTHER_REGION)
    assert error(body)["Message"] == ("The authorization header is malformed; the region 'us-west-2' is wrong; "
                                      f"expecting '{OTHER_REGION}'")
    assert headers["x-amz-bucket-region"] == OTHER_REGION
    status, headers, _ = curl(url, *header_signed(url, "us-west-2", method="HEAD"))
    assert (status, headers["content-length"], headers["x-amz-bucket-region"]) == (400, "0", OTHER_REGION)  # no body
    assert curl(url, *header_signed(url, OTHER_REGION))[:3:2] == (200, "hello")


def test_a_wrong_signature_is_refused_with_what_s3_computed(aws):
    put(aws, "signed.txt")
    url = presign(s3(aws), "get_object", aws[2].bucket, "signed.txt")
    forged = url[:-1] + ("0" if url[-1] != "0" else "1")
    status, _, body = curl(forged)
    answer = error(body)
    assert (status, answer["Code"]) == (403, "SignatureDoesNotMatch")
    assert answer["CanonicalRequest"].startswith(f"GET\n/{aws[2].bucket}/signed.txt\nX-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert answer["SignatureProvided"] == forged.rsplit("=", 1)[1] and answer["AWSAccessKeyId"] == "testing"
    # Another host than the one signed for is another canonical request.
    assert curl(url.replace("127.0.0.1", "localhost"))[0] == 403


def test_an_unknown_access_key_is_refused(aws):
    unknown = plain_s3(aws, "AKIAIOSFODNN7EXAMPLE", signature_version="s3v4")
    status, _, body = curl(presign(unknown, "get_object", aws[2].bucket, "anything.txt"))
    assert (status, error(body)["Code"], error(body)["AWSAccessKeyId"]) == (
        403, "InvalidAccessKeyId", "AKIAIOSFODNN7EXAMPLE")
    assert error(body)["Message"] == "The AWS Access Key Id you provided does not exist in our records."


def test_an_anonymous_request_is_denied(aws):
    put(aws, "private.txt")
    status, _, body = curl(f"{aws[1]}/{aws[2].bucket}/private.txt")
    assert (status, error(body)["Code"], error(body)["Message"]) == (403, "AccessDenied", "Access Denied")


def test_a_body_that_is_not_the_signed_one_is_refused(aws):
    url = f"{aws[1]}/{aws[2].bucket}/swapped.txt"
    status, _, body = curl(url, *header_signed(url, aws[2].region, "PUT", b"signed body", sent_body=b"another body"))
    assert (status, error(body)["Code"]) == (400, "XAmzContentSHA256Mismatch")
    assert error(body)["ClientComputedContentSHA256"] == hashlib.sha256(b"signed body").hexdigest()
    assert error(body)["S3ComputedContentSHA256"] == hashlib.sha256(b"another body").hexdigest()
    assert curl(url, *header_signed(url, aws[2].region, "PUT", b"signed body"))[0] == 200
    assert s3(aws).get_object(Bucket=aws[2].bucket, Key="swapped.txt")["Body"].read() == b"signed body"


def test_a_header_signed_request_from_a_clock_far_off_is_refused(aws, monkeypatch):
    sign_in_the_past(monkeypatch)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        plain_s3(aws, signature_version="s3v4", retries={"max_attempts": 1}).head_bucket(Bucket=aws[2].bucket)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError, match="RequestTimeTooSkewed"):
        plain_s3(aws, signature_version="s3v4", retries={"max_attempts": 1}).list_objects_v2(Bucket=aws[2].bucket)


def test_upload_faults_still_come_after_authentication(aws):
    sandbox, _, spec = aws
    sandbox.set_faults(s3_put_failures=[{"key_contains": "flaky", "status": 503, "times": 1}])
    try:
        # An unsigned upload is refused by authentication, and does not use up the fault.
        assert curl(f"{aws[1]}/{spec.bucket}/flaky.tar.gz", "-T", __file__)[0] == 403
        url = presign(s3(aws), "put_object", spec.bucket, "flaky.tar.gz")
        status, _, body = curl(url, "-T", __file__)
        assert (status, error(body)["Code"]) == (503, "SlowDown")
        assert curl(url, "-T", __file__)[0] == 200
    finally:
        sandbox.set_faults(s3_put_failures=None)


# ---------------------------------------------------------------------------------------------
# The nodes' role, from the instance metadata service


def imds(aws, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    endpoint = json.loads((aws[0].root / "server.json").read_text())["imds_endpoint"]
    request = urllib.request.Request(endpoint + path.lstrip("/"), method=method, headers=headers or {})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, ""


def node_role_client(aws, credentials: dict, token: str | None = None):
    return boto3.client("s3", endpoint_url=aws[1], region_name=aws[2].region,
                        aws_access_key_id=credentials["AccessKeyId"],
                        aws_secret_access_key=credentials["SecretAccessKey"],
                        aws_session_token=token or credentials["Token"],
                        config=botocore.config.Config(signature_version="s3v4", retries={"max_attempts": 1}))


def test_the_node_role_comes_from_imdsv2_and_may_write_under_the_clusters_prefix_only(aws):
    assert imds(aws, "/latest/meta-data/iam/security-credentials/")[0] == 401  # no token: IMDSv2 only
    assert imds(aws, "/latest/api/token", "PUT")[0] == 400  # a token needs its TTL
    status, token = imds(aws, "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    with_token = {"X-aws-ec2-metadata-token": token}
    role = imds(aws, "/latest/meta-data/iam/security-credentials/", headers=with_token)[1]
    assert role == f"{aws[2].cluster}-execution-role"
    credentials = json.loads(imds(aws, f"/latest/meta-data/iam/security-credentials/{role}", headers=with_token)[1])
    assert credentials["Code"] == "Success" and credentials["AccessKeyId"].startswith("ASIA")

    client, bucket = node_role_client(aws, credentials), aws[2].bucket
    client.put_object(Bucket=bucket, Key=f"hyperpod-issue-reports/{aws[2].cluster}/run/instances/n.tar.gz", Body=b"t")
    for call in (lambda: client.put_object(Bucket=bucket, Key="elsewhere/n.tar.gz", Body=b"t"),
                 lambda: client.get_object(Bucket=bucket, Key=f"hyperpod-issue-reports/{aws[2].cluster}/run/x")):
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            call()
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidToken"):
        node_role_client(aws, credentials, token="not-the-session-token").put_object(
            Bucket=bucket, Key=f"hyperpod-issue-reports/{aws[2].cluster}/run/y", Body=b"t")
