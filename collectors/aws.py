"""The one factory for boto3 sessions and clients, and the environment for the `aws` CLI.

In sandbox mode every client refuses any endpoint that is not on loopback, so a mistake in a
test or a demo can never send a request to real AWS (or anywhere else).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from collectors.errors import SandboxError, UsageError
from collectors.loopback import is_loopback_url, refuse_non_loopback
from collectors.settings import Settings

class Aws:
    """Clients for one settings object; one client per service, shared by threads (boto3 clients are thread safe)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, int], Any] = {}
        if settings.sandbox:
            check_sandbox_environment()
        try:
            # AWS_REGION, which the AWS CLI v2 and the other SDKs read, where this botocore reads only
            # AWS_DEFAULT_REGION.
            region = settings.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
            self.session = boto3.Session(region_name=region, profile_name=settings.profile)
        except botocore.exceptions.ProfileNotFound as exc:
            raise UsageError(str(exc)) from None
        if not self.session.region_name:
            raise UsageError("no AWS region: pass --region, or set AWS_REGION or a profile's region")

    @property
    def region(self) -> str:
        return self.session.region_name

    def client(self, service: str, retries: int = 5, region: str | None = None,
               s3_addressing: str = "auto") -> Any:
        """One client per (service, retries, region, S3 addressing style), shared by threads.

        `region` defaults to the session's; S3 clients pass the bucket's own (collectors/bucket.py).
        """
        key = (service, retries, region or self.region, s3_addressing)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._make_client(*key)
            return self._clients[key]

    def _make_client(self, service: str, retries: int, region: str, s3_addressing: str) -> Any:
        # Adaptive retries smooth throttling storms when many threads share one client.
        config = botocore.config.Config(
            retries={"mode": "adaptive" if retries > 1 else "standard", "max_attempts": retries},
            max_pool_connections=connection_pool_size(self.settings),
            connect_timeout=10,
            read_timeout=60,
        )
        if service == "s3":
            # SigV4 always: botocore presigns with SigV2 unless told, and S3 refuses SigV2 in every
            # region opened since 2014 and for every bucket created since June 2020. us-east-1 too
            # gets its regional endpoint, not the global one that redirects new buckets.
            config = config.merge(botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": s3_addressing, "us_east_1_regional_endpoint": "regional"}))
        client = self.session.client(service, region_name=region, config=config)
        if self.settings.sandbox:
            client.meta.events.register("before-send", refuse_non_loopback)
            if not is_loopback_url(client.meta.endpoint_url):
                raise SandboxError(f"sandbox mode: {service} endpoint {client.meta.endpoint_url} is not on loopback; "
                                   'run `eval "$(invoke sandbox.env)"` first')
        return client

    def cli_env(self) -> dict[str, str]:
        """Environment for `aws` CLI children: same region and profile as our boto3 session."""
        env = dict(os.environ)
        env["AWS_DEFAULT_REGION"] = self.region
        if self.settings.profile:
            env["AWS_PROFILE"] = self.settings.profile
        if self.settings.sandbox:
            env["AWS_EC2_METADATA_DISABLED"] = "true"
        return env


def connection_pool_size(settings: Settings) -> int:
    """One client serves every thread of a stage: room for its largest pool (sessions, downloads,
    DescribeClusterNode calls), and for the S3 poll thread and upload transfers beside them."""
    return max(settings.max_workers, settings.download_workers, settings.api_workers) + 4


def check_sandbox_environment() -> None:
    """The CLI children cannot carry our hook, so in sandbox mode the environment itself must point at loopback."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint or not is_loopback_url(endpoint):
        raise SandboxError('sandbox mode needs AWS_ENDPOINT_URL on loopback: run `eval "$(invoke sandbox.env)"` first')
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        raise SandboxError("sandbox mode: AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true would send requests to real AWS")
    for name, value in os.environ.items():
        if name.startswith("AWS_ENDPOINT_URL_") and not is_loopback_url(value):
            raise SandboxError(f"sandbox mode: {name}={value} is not on loopback")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code", "")
    return ""


def describe_aws_error(exc: BaseException) -> str:
    """One line for the user, without request ids or signatures."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (set a profile with --profile, or AWS_* variables)"
    return str(exc)


AWS_ENVIRONMENT_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.TokenRetrievalError,
)
