"""The run's bucket: its region as S3 tells it, the preflight's verdicts, and the URLs nodes get.

S3's answers are stubbed with botocore's Stubber in the shapes S3 gives them (HeadBucket's
x-amz-bucket-region header comes even with a 403 or 301: docs.aws.amazon.com/AmazonS3/latest/API/
API_HeadBucket.html); the integration tests run the same code against the sandbox.
"""

from __future__ import annotations

import io
import urllib.parse

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from collectors import buckets
from collectors.aws import Aws
from collectors.errors import UsageError
from collectors.settings import Settings


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return Aws(Settings(region="us-west-2"))


def stubbed(client) -> Stubber:
    stubber = Stubber(client)
    stubber.activate()
    return stubber


def region_header(region: str) -> dict:
    return {"HTTPHeaders": {"x-amz-bucket-region": region}, "HTTPStatusCode": 200}


def test_the_region_comes_from_head_bucket(aws):
    stubber = stubbed(aws.client("s3", s3_addressing="virtual"))
    stubber.add_response("head_bucket", {"ResponseMetadata": region_header("eu-central-1")}, {"Bucket": "reports"})
    assert buckets.region_of(aws, "reports") == "eu-central-1"
    stubber.assert_no_pending_responses()


def test_a_403_still_names_the_region(aws):
    stubber = stubbed(aws.client("s3", s3_addressing="virtual"))
    stubber.add_client_error("head_bucket", "403", http_status_code=403,
                             response_meta={"HTTPHeaders": {"x-amz-bucket-region": "ap-south-1"}})
    assert buckets.region_of(aws, "reports") == "ap-south-1"


@pytest.mark.parametrize("constraint, region", [(None, "us-east-1"), ("EU", "eu-west-1"), ("sa-east-1", "sa-east-1")])
def test_without_the_header_get_bucket_location_answers(aws, constraint, region):
    head = stubbed(aws.client("s3", s3_addressing="virtual"))
    head.add_client_error("head_bucket", "403", http_status_code=403)
    location = stubbed(aws.client("s3"))
    location.add_response("get_bucket_location", {"LocationConstraint": constraint} if constraint else {},
                          {"Bucket": "reports"})
    assert buckets.region_of(aws, "reports") == region


def test_a_missing_bucket_is_bad_input_naming_it(aws):
    stubbed(aws.client("s3", s3_addressing="virtual")).add_client_error("head_bucket", "404", http_status_code=404)
    with pytest.raises(UsageError, match="bucket reports does not exist"):
        buckets.region_of(aws, "reports")


def test_a_region_we_may_not_learn_names_the_permissions(aws):
    stubbed(aws.client("s3", s3_addressing="virtual")).add_client_error("head_bucket", "403", http_status_code=403)
    stubbed(aws.client("s3")).add_client_error("get_bucket_location", "AccessDenied", http_status_code=403)
    with pytest.raises(UsageError, match="s3:ListBucket or s3:GetBucketLocation"):
        buckets.region_of(aws, "reports")


def test_preflight_names_the_missing_write_permission(aws):
    stubber = stubbed(aws.client("s3", s3_addressing="virtual"))
    stubber.add_response("head_bucket", {"ResponseMetadata": region_header("us-west-2")})
    stubber.add_client_error("put_object", "AccessDenied", http_status_code=403)
    with pytest.raises(UsageError, match=r"access denied to s3://reports/team/\.hyperpod-collect-write-check "
                                         r"\(you need s3:PutObject under s3://reports/team/\)"):
        buckets.preflight(aws, "reports", "team")


def test_preflight_passes_and_cleans_up_after_itself(aws):
    stubber = stubbed(aws.client("s3", s3_addressing="virtual"))
    key = {"Bucket": "reports", "Key": "team/.hyperpod-collect-write-check"}
    stubber.add_response("head_bucket", {"ResponseMetadata": region_header("us-west-2")})
    stubber.add_response("put_object", {}, dict(key, Body=b""))
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(b""), 0)}, key)
    stubber.add_response("delete_object", {}, key)
    assert buckets.preflight(aws, "reports", "team") == "us-west-2"
    stubber.assert_no_pending_responses()


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@pytest.mark.parametrize("bucket, region, host, path", [
    ("reports", "eu-central-1", "reports.s3.eu-central-1.amazonaws.com", "/team/node.tar.gz"),
    # us-east-1 too gets its regional endpoint, not the global one that redirects new buckets.
    ("reports", "us-east-1", "reports.s3.us-east-1.amazonaws.com", "/team/node.tar.gz"),
    # Dots would break TLS as a host name: path style.
    ("my.reports", "ap-south-1", "s3.ap-south-1.amazonaws.com", "/my.reports/team/node.tar.gz"),
])
def test_presigned_urls_are_sigv4_for_the_buckets_own_region_and_endpoint(aws, bucket, region, host, path):
    url = buckets.presign(buckets.client_for(aws, bucket, region), "put_object", bucket, "team/node.tar.gz", 3600)
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", host, path)
    params = query(url)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and params["X-Amz-Expires"] == "3600"
    assert params["X-Amz-Credential"].split("/")[2:] == [region, "s3", "aws4_request"]
    assert not {"AWSAccessKeyId", "Signature", "Expires"} & set(params)  # no SigV2 anywhere


def test_keys_are_carried_verbatim_in_presigned_urls(aws):
    url = buckets.presign(buckets.client_for(aws, "reports", "us-west-2"), "get_object", "reports",
                          "ops/night shift+1/é.sh", 60)
    assert urllib.parse.unquote(urllib.parse.urlsplit(url).path) == "/ops/night shift+1/é.sh"
