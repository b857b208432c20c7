"""AWS clients that can only talk to the sandbox: for control.py and for the Kubernetes API server's start."""

import os
from pathlib import Path

from collectors.loopback import refuse_non_loopback
from collectors.sandbox.credentials import FAKE_CREDENTIALS


def sandbox_client(service: str, endpoint: str, region: str, root: Path):
    """A boto3 client with fake credentials, no config files, no proxies, and the loopback guard."""
    # Imported here, not with the module: the Kubernetes API server's process imports kube/lifecycle.py,
    # and with it this module, and makes no AWS call.
    import boto3
    import botocore.config
    import botocore.session

    # No credential lookup may fall through to the instance metadata service (169.254.169.254).
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    core_session = botocore.session.Session()
    core_session.set_config_variable("config_file", str(root / "aws-config"))
    core_session.set_config_variable("credentials_file", str(root / "aws-credentials"))
    core_session.set_config_variable("profile", "default")
    session = boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=region,
        botocore_session=core_session,
    )
    # SigV4 for S3, as the sandbox's S3 (like S3 itself) refuses SigV2, which botocore's presigner
    # would otherwise use for these URLs.
    s3_signing = {"signature_version": "s3v4"} if service == "s3" else {}
    config = botocore.config.Config(proxies={}, retries={"mode": "standard", "max_attempts": 2}, **s3_signing)
    client = session.client(service, endpoint_url=endpoint, config=config)
    client.meta.events.register("before-send", refuse_non_loopback)
    return client
