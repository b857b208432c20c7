"""The sandbox's SigV4 verification (collectors/sandbox/s3auth.py) against AWS's own published examples.

The signatures below are the ones the S3 API reference prints for its examples, computed by AWS, not
by botocore: "Signature Calculations for the Authorization Header: Transferring Payload in a Single
Chunk" (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html: GET Object,
PUT Object, GET Bucket Lifecycle, Get Bucket (List Objects)) and "Authenticating Requests: Using Query
Parameters" (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html). A
canonicalisation bug that botocore shared would still fail here.
"""

from __future__ import annotations

import hashlib

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from collectors.sandbox.credentials import Credential, Statement, node_role_statements
from collectors.sandbox.s3auth import (
    UNMAPPED_ACTION,
    S3Refusal,
    canonical_uri,
    check_signature,
    iam_action,
    parse_signature,
)

EXAMPLE_KEY = Credential("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
WELCOME = b"Welcome to Amazon S3."
SCOPE = "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"


def request(method: str, raw_uri: str, headers: dict[str, str], body: bytes = b"") -> Request:
    """A request as the sandbox's server receives it: werkzeug's environ with the raw request target."""
    path, _, query = raw_uri.partition("?")
    environ = EnvironBuilder(method=method, path=path, query_string=query, headers=headers, data=body).get_environ()
    environ["RAW_URI"] = raw_uri
    return Request(environ)


def header_signed(method: str, raw_uri: str, headers: dict[str, str], signature: str, body: bytes = b"") -> Request:
    names = ";".join(sorted(name.lower() for name in headers))
    authorization = f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders={names},Signature={signature}"
    return request(method, raw_uri, {**headers, "Authorization": authorization}, body)


HEADER_EXAMPLES = {
    "GET Object": ("GET", "/test.txt", {"Host": HOST, "Range": "bytes=0-9", "x-amz-content-sha256": EMPTY_SHA256,
                                        "x-amz-date": "20130524T000000Z"},
                   "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    "PUT Object": ("PUT", "/test%24file.text", {
        "Host": HOST, "Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY", "x-amz-content-sha256": hashlib.sha256(WELCOME).hexdigest()},
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
    "GET Bucket Lifecycle": ("GET", "/?lifecycle", {"Host": HOST, "x-amz-content-sha256": EMPTY_SHA256,
                                                    "x-amz-date": "20130524T000000Z"},
                             "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    "List Objects": ("GET", "/?max-keys=2&prefix=J", {"Host": HOST, "x-amz-content-sha256": EMPTY_SHA256,
                                                       "x-amz-date": "20130524T000000Z"},
                     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
}


@pytest.mark.parametrize("example", HEADER_EXAMPLES)
def test_header_signatures_are_the_ones_aws_documents(example):
    method, raw_uri, headers, signature = HEADER_EXAMPLES[example]
    signed = header_signed(method, raw_uri, headers, signature, WELCOME if method == "PUT" else b"")
    check_signature(signed, parse_signature(signed), EXAMPLE_KEY)  # raises S3Refusal when it differs


def test_a_path_sent_unencoded_is_canonicalised_as_s3_does():
    # The PUT example's key is `test$file.text`: a client may send `$` as it is or as %24, one signature.
    method, _, headers, signature = HEADER_EXAMPLES["PUT Object"]
    signed = header_signed(method, "/test$file.text", headers, signature, WELCOME)
    check_signature(signed, parse_signature(signed), EXAMPLE_KEY)


def test_the_documented_presigned_url_verifies():
    raw_uri = ("/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
               "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders="
               "host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    presigned = request("GET", raw_uri, {"Host": HOST})
    signed = parse_signature(presigned)
    assert signed.presigned and signed.expires_s == 86400 and signed.region == "us-east-1"
    check_signature(presigned, signed, EXAMPLE_KEY)


def test_a_changed_request_does_not_match_and_s3s_error_shows_the_canonical_request():
    method, raw_uri, headers, signature = HEADER_EXAMPLES["GET Object"]
    tampered = header_signed(method, raw_uri, {**headers, "Range": "bytes=0-99"}, signature)
    with pytest.raises(S3Refusal) as refused:
        check_signature(tampered, parse_signature(tampered), EXAMPLE_KEY)
    assert (refused.value.status, refused.value.code) == (403, "SignatureDoesNotMatch")
    details = dict(refused.value.details)
    assert "range:bytes=0-99\n" in details["CanonicalRequest"] and details["SignatureProvided"] == signature
    assert details["AWSAccessKeyId"] == "AKIAIOSFODNN7EXAMPLE"


def test_the_wrong_secret_does_not_match():
    method, raw_uri, headers, signature = HEADER_EXAMPLES["GET Object"]
    signed = header_signed(method, raw_uri, headers, signature)
    with pytest.raises(S3Refusal, match="does not match"):
        check_signature(signed, parse_signature(signed), Credential(EXAMPLE_KEY.access_key, "another-secret"))


@pytest.mark.parametrize("raw, canonical", [
    ("/b/a b/c", "/b/a%20b/c"),                   # a space, as curl would send it
    ("/b/a%20b/c%2Fd", "/b/a%20b/c%2Fd"),          # an encoded slash stays inside its segment
    ("/b/x//y/./z/../k", "/b/x//y/./z/../k"),      # S3 does not normalise the path
    ("/b/%7euser/%c3%a9+!", "/b/~user/%C3%A9%2B%21"),  # unreserved decoded, the rest upper-case %XY
])
def test_canonical_uri_encodes_each_segment_once_without_normalising(raw, canonical):
    assert canonical_uri(raw) == canonical


@pytest.mark.parametrize("headers, uri", [
    ({"Authorization": "AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg="}, "/test.txt"),
    ({}, "/test.txt?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1141889120&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D"),
])
def test_sigv2_in_either_form_is_refused_as_s3_refuses_it(headers, uri):
    with pytest.raises(S3Refusal) as refused:
        parse_signature(request("GET", uri, {"Host": HOST, **headers}))
    assert (refused.value.status, refused.value.code) == (400, "InvalidRequest")
    assert refused.value.message == ("The authorization mechanism you have provided is not supported. "
                                     "Please use AWS4-HMAC-SHA256.")


def test_an_anonymous_request_has_no_signature():
    assert parse_signature(request("GET", "/test.txt", {"Host": HOST})) is None


# "Actions, resources, and condition keys for Amazon S3" and "Multipart upload and permissions"
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions).
@pytest.mark.parametrize("method, uri, action", [
    ("PUT", "/b/k", "s3:PutObject"),
    ("POST", "/b/k?uploads", "s3:PutObject"),                  # CreateMultipartUpload
    ("PUT", "/b/k?partNumber=1&uploadId=u", "s3:PutObject"),   # UploadPart
    ("POST", "/b/k?uploadId=u", "s3:PutObject"),              # CompleteMultipartUpload
    ("DELETE", "/b/k?uploadId=u", "s3:AbortMultipartUpload"),
    ("GET", "/b/k?uploadId=u", "s3:ListMultipartUploadParts"),
    ("GET", "/b/k", "s3:GetObject"),
    ("HEAD", "/b/k", "s3:GetObject"),
    ("DELETE", "/b/k", "s3:DeleteObject"),
    ("GET", "/b?list-type=2&prefix=p", "s3:ListBucket"),
    ("HEAD", "/b", "s3:ListBucket"),                           # HeadBucket
    ("GET", "/b?location", "s3:GetBucketLocation"),
    ("PUT", "/b/k?acl", UNMAPPED_ACTION),
])
def test_each_request_needs_the_iam_action_s3_asks_for(method, uri, action):
    key = uri.split("?")[0].removeprefix("/b").lstrip("/")
    assert iam_action(request(method, uri, {"Host": "127.0.0.1"}), key) == action


def test_the_node_role_may_write_under_its_prefix_only():
    role = Credential("ASIAEXAMPLE", "s", "token", allowed=node_role_statements("bkt", "reports/cluster/"))
    assert role.allows("s3:PutObject", "arn:aws:s3:::bkt/reports/cluster/run/instances/n.tar.gz")
    assert not role.allows("s3:PutObject", "arn:aws:s3:::bkt/reports/other/n.tar.gz")
    assert not role.allows("s3:PutObject", "arn:aws:s3:::bkt/reports/cluster")  # the prefix itself is not under it
    assert not role.allows("s3:GetObject", "arn:aws:s3:::bkt/reports/cluster/run/instances/n.tar.gz")
    assert Statement("s3:ListBucket", "arn:aws:s3:::bkt").matches("s3:ListBucket", "arn:aws:s3:::bkt")
    assert EXAMPLE_KEY.allows("s3:DeleteObject", "arn:aws:s3:::anything/at/all")
