"""The sandbox's network rule in one place: nothing may leave 127.0.0.0/8.

Kept free of boto3 so the stand-in session-manager-plugin (started once per session) stays light.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

from collectors.errors import SandboxError


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other DNS name could resolve anywhere


def refuse_non_loopback(request: Any, **_: Any) -> None:
    """botocore `before-send` hook for every client in sandbox mode."""
    if not is_loopback_url(request.url):
        raise SandboxError(f"sandbox mode: refusing a request to a non-loopback endpoint {request.url.split('?')[0]}")
