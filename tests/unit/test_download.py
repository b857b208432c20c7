"""download checks each tarball against what its node reported, not against S3's own listing."""

from __future__ import annotations

import hashlib
import io

import boto3
from botocore.response import StreamingBody
from botocore.stub import Stubber

from collectors.stages.download import fetch

KEY = "reports/hp/20261202_100000/instances/worker_i-0abc.tar.gz"


def s3_serving(body: bytes) -> tuple:
    s3 = boto3.client("s3", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="y")
    stubber = Stubber(s3)
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body))},
                         {"Bucket": "bucket", "Key": KEY})
    stubber.activate()
    return s3, stubber


def node_record(body: bytes) -> dict:
    return {"worker_i-0abc.tar.gz": {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}}


def test_an_object_unlike_what_the_node_reported_is_a_problem_even_when_s3_lists_its_size(tmp_path):
    # Before: S3's listing was the reference, so a 13-byte object listed as 13 bytes passed (or the
    # message said "expected 13 bytes" for a node that had reported 12.5 KB).
    reported = b"x" * 12800
    s3, _ = s3_serving(b"not a tarball")
    problem = fetch(s3, "bucket", {"Key": KEY, "Size": 13}, tmp_path, node_record(reported))
    assert problem.startswith("worker_i-0abc.tar.gz: got 13 bytes") and "the node reported 12800 bytes" in problem
    assert not list(tmp_path.iterdir())  # nothing unverified is left behind


def test_same_size_other_content_is_a_problem(tmp_path):
    s3, _ = s3_serving(b"B" * 64)
    problem = fetch(s3, "bucket", {"Key": KEY, "Size": 64}, tmp_path, node_record(b"A" * 64))
    assert "the node reported 64 bytes sha256" in problem


def test_what_the_node_reported_arrives_and_is_kept(tmp_path):
    body = b"a real tarball's bytes"
    s3, stubber = s3_serving(body)
    assert fetch(s3, "bucket", {"Key": KEY, "Size": len(body)}, tmp_path, node_record(body)) is None
    assert (tmp_path / "worker_i-0abc.tar.gz").read_bytes() == body
    stubber.assert_no_pending_responses()
    # Verified already: not fetched again (the stub has no second answer).
    assert fetch(s3, "bucket", {"Key": KEY, "Size": len(body)}, tmp_path, node_record(body)) is None
