"""Who may call the sandbox's S3, with which keys, and what each identity may do there.

Two kinds of identity, as on a real account:
- the operator: the sandbox's long-term keys (FAKE_CREDENTIALS, what `invoke sandbox.env` exports),
  allowed everything;
- the nodes' role: temporary credentials (an ASIA... key, a secret and a session token, with an
  expiry), handed out by the emulated instance metadata service (imds.py) the way EC2 hands a role's
  credentials to an instance. Its policy allows only writing under the cluster's reports prefix,
  like a node role scoped to where the collector writes; anything else is AccessDenied.

Standard library only (the server imports it).
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# EC2 makes a role's new credentials available at least five minutes before the old ones expire.
ROLE_CREDENTIALS_LIFETIME_S = 6 * 3600
ROLE_CREDENTIALS_RENEW_S = 15 * 60
ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits
# What a node's role may do in S3: write its tarball (multipart uploads included: CreateMultipartUpload,
# UploadPart and CompleteMultipartUpload are all s3:PutObject) and abandon an upload it started.
NODE_ROLE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")


@dataclass(frozen=True)
class Statement:
    """One Allow statement: an IAM action and a resource ARN, which may end in `*`."""

    action: str
    resource: str

    def matches(self, action: str, resource: str) -> bool:
        if self.action != action:
            return False
        if self.resource.endswith("*"):
            return resource.startswith(self.resource[:-1])
        return resource == self.resource


@dataclass(frozen=True)
class Credential:
    access_key: str
    secret_key: str
    session_token: str | None = None
    issued_at: float | None = None  # epoch seconds, for temporary credentials
    expires_at: float | None = None  # epoch seconds; None: long-term keys
    allowed: tuple[Statement, ...] | None = None  # None: everything (the account's own administrator)

    def allows(self, action: str, resource: str) -> bool:
        return self.allowed is None or any(statement.matches(action, resource) for statement in self.allowed)


def node_role_statements(bucket: str, prefix: str) -> tuple[Statement, ...]:
    resource = f"arn:aws:s3:::{bucket}/{prefix.strip('/')}/*"
    return tuple(Statement(action, resource) for action in NODE_ROLE_ACTIONS)


def temporary_credential(allowed: tuple[Statement, ...], now: float) -> Credential:
    """Keys shaped like STS's: ASIA + 16 characters, a 40-character secret, an opaque session token."""
    return Credential(
        access_key="ASIA" + "".join(secrets.choice(ACCESS_KEY_ALPHABET) for _ in range(16)),
        secret_key=secrets.token_urlsafe(30)[:40],
        session_token=secrets.token_urlsafe(96),
        issued_at=now,
        expires_at=now + ROLE_CREDENTIALS_LIFETIME_S,
        allowed=allowed,
    )


class CredentialStore:
    """Every access key the sandbox's S3 knows, and the node role whose credentials the IMDS serves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        operator = Credential(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        self.credentials = {operator.access_key: operator}
        self.role_name: str | None = None
        self.role_statements: tuple[Statement, ...] = ()
        self.role_credential: Credential | None = None

    def get(self, access_key: str) -> Credential | None:
        with self.lock:
            return self.credentials.get(access_key)

    def set_node_role(self, role_name: str, statements: tuple[Statement, ...]) -> None:
        with self.lock:
            self.role_name, self.role_statements, self.role_credential = role_name, statements, None

    def node_role_credential(self) -> Credential | None:
        """The role's current credentials, renewed before they expire; None when no role is set."""
        now = time.time()
        with self.lock:
            if self.role_name is None:
                return None
            current = self.role_credential
            if current is None or current.expires_at - now < ROLE_CREDENTIALS_RENEW_S:
                current = self.role_credential = temporary_credential(self.role_statements, now)
                self.credentials[current.access_key] = current
            return current
