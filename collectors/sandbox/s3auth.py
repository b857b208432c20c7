"""The sandbox's S3 checks requests as Amazon S3 does: SigV4 only, verified, in the bucket's region.

moto accepts any request, signed or not, for any region, long after its presigned URL has expired.
`S3Authenticator.handle` runs in front of it (server/app.py's middleware) and answers as S3 answers,
with S3's own error codes, status codes and messages (docs/aws-fidelity.md lists each with the page
it comes from):

- SigV2 in any form (`Authorization: AWS key:sig`, `?AWSAccessKeyId=&Signature=&Expires=`) is refused
  in every region: InvalidRequest.
- SigV4, presigned (query) or header-signed, is verified against the sandbox's credentials
  (credentials.py): the canonical request is built here from the request as it arrived, following
  the S3 API reference (sig-v4-header-based-auth, sigv4-query-string-auth), never with botocore's
  signer, so a bug shared with the client cannot pass.
- A request signed for another region than the bucket's is refused the way botocore's region
  redirector expects (the expected region in the body, and in x-amz-bucket-region for header-signed
  requests), so that redirector works against the sandbox as against AWS.
- Presigned URLs expire; X-Amz-Expires above 7 days is refused; header-signed requests more than
  15 minutes off the server's clock are refused; a signed payload hash must match the body.
- What the caller's identity may do (credentials.Credential.allows) is checked last: AccessDenied.

Requests that are not for S3 (JSON APIs with X-Amz-Target, SigV4 scopes of other services, the
sandbox's own /_emu/ control paths) pass untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from xml.sax.saxutils import escape

from werkzeug.wrappers import Request, Response

from collectors.sandbox.credentials import Credential, CredentialStore

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600  # 604800: a SigV4 signing key is valid for seven days
MAX_CLOCK_SKEW_S = 15 * 60
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Streaming uploads sign the request with one of these instead of the body's hash, then sign each
# chunk; the seed signature over the canonical request is what is verified here.
STREAMING_PAYLOADS = (
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
PRESIGN_PARAMETERS = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")
NOT_S3_PATHS = ("/_emu/", "/moto-api/")
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Virtual-hosted style: <bucket>.s3.<region>.amazonaws.com, <bucket>.s3-<region>..., <bucket>.localhost
VIRTUAL_HOST_RE = re.compile(r"^(?P<bucket>.+?)\.(?:s3[.-].*amazonaws\.com|localhost)$")


# ---------------------------------------------------------------------------------------------
# S3's error responses


@dataclass
class S3Refusal(Exception):
    """One of S3's error responses: `details` are the extra elements S3 puts after <Message>."""

    status: int
    code: str
    message: str
    details: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


def s3_error_response(request: Request, refusal: S3Refusal) -> Response:
    """S3's XML error document; a HEAD request gets the status and headers only, as from S3."""
    request_id = secrets.token_hex(8).upper()
    elements = [("Code", refusal.code), ("Message", refusal.message), *refusal.details,
                ("RequestId", request_id), ("HostId", base64.b64encode(secrets.token_bytes(57)).decode())]
    body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(
        f"<{name}>{escape(value)}</{name}>" for name, value in elements) + "</Error>"
    response = Response("" if request.method == "HEAD" else body, status=refusal.status,
                        content_type="application/xml")
    response.headers["x-amz-request-id"] = request_id
    response.headers.update(refusal.headers)
    return response


def access_denied() -> S3Refusal:
    return S3Refusal(403, "AccessDenied", "Access Denied")


SIGV2_REFUSAL = (400, "InvalidRequest",
                 "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.")
CREDENTIAL_FORMAT = '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request"'


# ---------------------------------------------------------------------------------------------
# Which requests are S3's


def credential_scope(request: Request) -> list[str]:
    """[access key, date, region, service, "aws4_request"] from a SigV4 Authorization header, else []."""
    authorization = request.headers.get("Authorization", "")
    if "Credential=" not in authorization:
        return []
    scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip().split("/")
    return scope if len(scope) == 5 else []


def is_api_call(request: Request) -> bool:
    """A JSON API call (SageMaker, SSM) or a signed call to a service other than S3 (EKS)."""
    if request.headers.get("X-Amz-Target"):
        return True
    scope = credential_scope(request)
    return bool(scope) and scope[3] != "s3"


def is_s3_request(request: Request) -> bool:
    return not request.path.startswith(NOT_S3_PATHS) and not is_api_call(request)


def raw_path_and_query(request: Request) -> tuple[str, str]:
    """The path and query exactly as the client sent them (werkzeug's PATH_INFO is already decoded)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.full_path
    if raw.startswith(("http://", "https://")):  # an absolute-form request target
        parts = urllib.parse.urlsplit(raw)
        return parts.path or "/", parts.query
    path, _, query = raw.partition("?")
    return path or "/", query


def query_pairs(query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in order; `+` is a literal plus, as SigV4 clients encode spaces as %20."""
    pairs = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    return pairs


def bucket_and_key(request: Request) -> tuple[str, str]:
    """The bucket and object key a request addresses ("" when there is none), path- or virtual-hosted style."""
    path = urllib.parse.unquote(raw_path_and_query(request)[0])
    host = request.host.rsplit(":", 1)[0] if request.host else ""
    virtual = VIRTUAL_HOST_RE.match(host)
    if virtual:
        return virtual["bucket"], path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


# ---------------------------------------------------------------------------------------------
# SigV4 canonical form (S3 API reference, "Signature Calculations for the Authorization Header")


def uri_encode(data: bytes, encode_slash: bool = True) -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - . _ ~ as %XY (upper-case hex); '/' kept in paths."""
    return "".join(
        chr(byte) if byte in UNRESERVED or (byte == 0x2F and not encode_slash) else f"%{byte:02X}" for byte in data
    )


def canonical_uri(raw_path: str) -> str:
    """Each segment of the path as sent, decoded and UriEncoded once. S3 does not normalise the path:
    `a//b`, `.` and `..` stay as they are, and an encoded slash (%2F) stays inside its segment."""
    return "/".join(uri_encode(urllib.parse.unquote_to_bytes(segment)) for segment in raw_path.split("/"))


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    encoded = sorted((uri_encode(name.encode()), uri_encode(value.encode())) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(request: Request, names: list[str]) -> str:
    """`name:value\\n` per signed header: values trimmed, inner runs of blanks made one space."""
    lines = []
    for name in names:
        value = request.headers.get(name)
        lines.append(f"{name}:{' '.join(value.split()) if value is not None else ''}\n")
    return "".join(lines)


@dataclass(frozen=True)
class Signed:
    """What a SigV4 request says about its own signing: from the query (presigned) or the header."""

    presigned: bool
    access_key: str
    scope_date: str
    region: str
    service: str
    amz_date: str
    signed_headers: list[str]
    signature: str
    expires_s: int | None
    security_token: str | None
    payload_hash: str

    @property
    def scope(self) -> str:
        return f"{self.scope_date}/{self.region}/{self.service}/aws4_request"


def canonical_request(request: Request, signed: Signed) -> str:
    raw_path, raw_query = raw_path_and_query(request)
    pairs = query_pairs(raw_query)
    if signed.presigned:
        pairs = [(name, value) for name, value in pairs if name != "X-Amz-Signature"]
    return "\n".join([
        request.method,
        canonical_uri(raw_path),
        canonical_query(pairs),
        canonical_headers(request, signed.signed_headers),
        ";".join(signed.signed_headers),
        signed.payload_hash,
    ])


def string_to_sign(signed: Signed, canonical: str) -> str:
    return "\n".join([ALGORITHM, signed.amz_date, signed.scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signature(secret_key: str, signed: Signed, to_sign: str) -> str:
    key = f"AWS4{secret_key}".encode()
    for part in (signed.scope_date, signed.region, signed.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading a request's signature


def parse_signature(request: Request) -> Signed | None:
    """The request's SigV4 signature, None for an anonymous request; S3Refusal for SigV2 or a malformed one."""
    authorization = request.headers.get("Authorization")
    params = dict(query_pairs(raw_path_and_query(request)[1]))
    if authorization is not None:
        if not authorization.startswith(ALGORITHM + " "):
            raise S3Refusal(*SIGV2_REFUSAL)  # `AWS key:signature`, or anything that is not SigV4
        return header_signature(request, authorization)
    if "X-Amz-Algorithm" in params or "X-Amz-Credential" in params:
        return query_signature(request, params)
    if "Signature" in params or "AWSAccessKeyId" in params:
        raise S3Refusal(*SIGV2_REFUSAL)
    return None


def header_signature(request: Request, authorization: str) -> Signed:
    def malformed(reason: str) -> S3Refusal:
        return S3Refusal(400, "AuthorizationHeaderMalformed", f"The authorization header is malformed; {reason}")

    fields = {}
    for component in authorization[len(ALGORITHM):].split(","):
        name, _, value = component.strip().partition("=")
        fields[name] = value
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise malformed(f"the Credential is mal-formed; expecting {CREDENTIAL_FORMAT}.")
    if not fields.get("SignedHeaders") or not fields.get("Signature"):
        raise malformed("the Authorization header requires SignedHeaders and Signature.")
    amz_date = request.headers.get("X-Amz-Date")
    if not amz_date or not parse_amz_date(amz_date):
        raise S3Refusal(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    if amz_date[:8] != scope[1]:
        raise malformed("Invalid credential date. Date is not the same as X-Amz-Date.")
    payload_hash = request.headers.get("X-Amz-Content-SHA256")
    if not payload_hash:
        raise S3Refusal(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    return Signed(presigned=False, access_key=scope[0], scope_date=scope[1], region=scope[2], service=scope[3],
                  amz_date=amz_date, signed_headers=fields["SignedHeaders"].split(";"),
                  signature=fields["Signature"], expires_s=None,
                  security_token=request.headers.get("X-Amz-Security-Token"), payload_hash=payload_hash)


def query_signature(request: Request, params: dict[str, str]) -> Signed:
    def refused(message: str, details: list[tuple[str, str]] | None = None) -> S3Refusal:
        return S3Refusal(400, "AuthorizationQueryParametersError", message, details or [])

    if params.get("X-Amz-Algorithm") != ALGORITHM or any(not params.get(name) for name in PRESIGN_PARAMETERS):
        raise refused("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                      "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise refused(f"Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                      f"expecting {CREDENTIAL_FORMAT}.")
    if not params["X-Amz-Expires"].isdigit():
        raise refused("X-Amz-Expires should be a number")
    expires_s = int(params["X-Amz-Expires"])
    if expires_s > MAX_PRESIGN_EXPIRES_S:
        raise refused("X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
                      f"must be less than {MAX_PRESIGN_EXPIRES_S} seconds")
    if not parse_amz_date(params["X-Amz-Date"]):
        raise refused("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if params["X-Amz-Date"][:8] != scope[1]:
        raise refused("Invalid credential date. Date is not the same as X-Amz-Date.")
    return Signed(presigned=True, access_key=scope[0], scope_date=scope[1], region=scope[2], service=scope[3],
                  amz_date=params["X-Amz-Date"], signed_headers=params["X-Amz-SignedHeaders"].split(";"),
                  signature=params["X-Amz-Signature"], expires_s=expires_s,
                  security_token=params.get("X-Amz-Security-Token"), payload_hash=UNSIGNED_PAYLOAD)


def parse_amz_date(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, AMZ_DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def iso_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# The checks, in the order S3 makes them


def check_region(signed: Signed, bucket_region: str | None) -> None:
    """A request signed for another region than the bucket's, answered so botocore can redirect it."""
    if bucket_region is None or signed.region == bucket_region:
        return
    wrong = f"the region '{signed.region}' is wrong; expecting '{bucket_region}'"
    if signed.presigned:
        raise S3Refusal(400, "AuthorizationQueryParametersError",
                        f"Error parsing the X-Amz-Credential parameter; {wrong}", [("Region", bucket_region)])
    raise S3Refusal(400, "AuthorizationHeaderMalformed", f"The authorization header is malformed; {wrong}",
                    [("Region", bucket_region)], {"x-amz-bucket-region": bucket_region})


def check_service(signed: Signed) -> None:
    if signed.service != "s3":
        where = "the X-Amz-Credential parameter" if signed.presigned else "the authorization header"
        code = "AuthorizationQueryParametersError" if signed.presigned else "AuthorizationHeaderMalformed"
        raise S3Refusal(400, code, f"Error parsing {where}; incorrect service '{signed.service}'. "
                                   "This endpoint belongs to 's3'.")


def known_credential(credentials: CredentialStore, signed: Signed) -> Credential:
    credential = credentials.get(signed.access_key)
    if credential is None:
        raise S3Refusal(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                        [("AWSAccessKeyId", signed.access_key)])
    if credential.session_token is not None and not hmac.compare_digest(
            signed.security_token or "", credential.session_token):
        raise S3Refusal(400, "InvalidToken", "The provided token is malformed or otherwise invalid.")
    return credential


def check_time(signed: Signed, credential: Credential, now: float) -> None:
    signed_at = parse_amz_date(signed.amz_date)
    server_time = datetime.fromtimestamp(now, timezone.utc)
    if credential.expires_at is not None and now >= credential.expires_at:
        raise S3Refusal(400, "ExpiredToken", "The provided token has expired.")
    if signed.presigned:
        expires = datetime.fromtimestamp(signed_at.timestamp() + signed.expires_s, timezone.utc)
        if now > expires.timestamp():
            raise S3Refusal(403, "AccessDenied", "Request has expired", [
                ("X-Amz-Expires", str(signed.expires_s)), ("Expires", iso_time(expires)),
                ("ServerTime", iso_time(server_time))])
        if signed_at.timestamp() > now + MAX_CLOCK_SKEW_S:
            raise S3Refusal(403, "AccessDenied", "Request is not yet valid", [
                ("X-Amz-Date", signed.amz_date), ("Expires", iso_time(expires)), ("ServerTime", iso_time(server_time))])
    elif abs(signed_at.timestamp() - now) > MAX_CLOCK_SKEW_S:
        raise S3Refusal(403, "RequestTimeTooSkewed", "The difference between the request time and the current time "
                        "is too large.", [("RequestTime", signed.amz_date), ("ServerTime", iso_time(server_time)),
                                          ("MaxAllowedSkewMilliseconds", str(MAX_CLOCK_SKEW_S * 1000))])


def check_signature(request: Request, signed: Signed, credential: Credential) -> None:
    canonical = canonical_request(request, signed)
    to_sign = string_to_sign(signed, canonical)
    if hmac.compare_digest(signature(credential.secret_key, signed, to_sign), signed.signature):
        return
    raise S3Refusal(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                    "you provided. Check your key and signing method.", [
                        ("AWSAccessKeyId", signed.access_key), ("StringToSign", to_sign),
                        ("SignatureProvided", signed.signature), ("StringToSignBytes", spaced_hex(to_sign)),
                        ("CanonicalRequest", canonical), ("CanonicalRequestBytes", spaced_hex(canonical))])


def spaced_hex(text: str) -> str:
    return " ".join(f"{byte:02x}" for byte in text.encode())


def check_payload(request: Request, signed: Signed) -> None:
    """A signed payload's hash must be the body's: read it, then hand moto an identical stream."""
    if signed.presigned or signed.payload_hash == UNSIGNED_PAYLOAD or signed.payload_hash in STREAMING_PAYLOADS:
        return
    body = request.get_data()
    request.environ["wsgi.input"] = io.BytesIO(body)
    computed = hashlib.sha256(body).hexdigest()
    if computed != signed.payload_hash:
        raise S3Refusal(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not "
                        "match what was computed.", [("ClientComputedContentSHA256", signed.payload_hash),
                                                      ("S3ComputedContentSHA256", computed)])


# ---------------------------------------------------------------------------------------------
# What the caller may do: the IAM action of each S3 request ("Actions, resources, and condition keys
# for Amazon S3"; "Multipart upload and permissions")


# The action of a request this table does not map (an object's ACL, a bucket's policy...): no statement
# here names it, so only the operator, who may do everything, is allowed it.
UNMAPPED_ACTION = "s3:Unmapped"


def iam_action(request: Request, key: str) -> str:
    """The IAM action a request needs."""
    names = {name for name, _ in query_pairs(raw_path_and_query(request)[1])}
    method = request.method
    if key:
        if "uploadId" in names:
            on_upload = {"GET": "s3:ListMultipartUploadParts", "DELETE": "s3:AbortMultipartUpload"}
            return on_upload.get(method, "s3:PutObject")  # UploadPart, CompleteMultipartUpload
        if names & {"acl", "tagging", "retention", "legal-hold", "restore", "torrent", "attributes"}:
            return UNMAPPED_ACTION
        return {"GET": "s3:GetObject", "HEAD": "s3:GetObject", "PUT": "s3:PutObject", "POST": "s3:PutObject",
                "DELETE": "s3:DeleteObject"}.get(method, UNMAPPED_ACTION)
    if method == "GET" and "location" in names:
        return "s3:GetBucketLocation"
    if method == "GET" and "uploads" in names:
        return "s3:ListBucketMultipartUploads"
    if (method == "GET" and names <= {"list-type", "prefix", "delimiter", "encoding-type", "max-keys", "marker",
                                      "continuation-token", "start-after", "fetch-owner"}) or method == "HEAD":
        return "s3:ListBucket"
    return UNMAPPED_ACTION


def resource_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"


# ---------------------------------------------------------------------------------------------


class S3Authenticator:
    """The sandbox middleware's handler: None lets a request through, a Response refuses it as S3 would."""

    def __init__(self, credentials: CredentialStore, bucket_region) -> None:
        self.credentials = credentials
        self.bucket_region = bucket_region  # bucket name -> its region, or None when there is no such bucket

    def handle(self, request: Request) -> Response | None:
        if not is_s3_request(request):
            return None
        try:
            self.check(request)
        except S3Refusal as refusal:
            return s3_error_response(request, refusal)
        return None

    def check(self, request: Request) -> None:
        signed = parse_signature(request)
        if signed is None:
            raise access_denied()  # anonymous: the sandbox's buckets are private, as new buckets are
        check_service(signed)
        bucket, key = bucket_and_key(request)
        check_region(signed, self.bucket_region(bucket) if bucket else None)
        credential = known_credential(self.credentials, signed)
        check_time(signed, credential, time.time())
        check_signature(request, signed, credential)
        check_payload(request, signed)
        if bucket and not credential.allows(iam_action(request, key), resource_arn(bucket, key)):
            raise access_denied()
