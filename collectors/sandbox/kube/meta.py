"""Times, names and owners as Kubernetes writes them, and the cluster's clock."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


def k8s_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, which every Age column uses."""
    seconds = int(seconds)
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    return human_duration((datetime.now(timezone.utc) - parse_time(timestamp)).total_seconds())


def stable_uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def name_suffix(seed: str, length: int = 5) -> str:
    """Random-looking but stable, from the alphabet Kubernetes uses for generated names."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[byte % len(alphabet)] for byte in digest[:length])


def template_hash(seed: str) -> str:
    return name_suffix(seed, 10)


@dataclass
class Clock:
    """The cluster's history, relative to the moment the server started."""

    now: datetime

    def ago(self, **delta: float) -> str:
        return k8s_time(self.now - timedelta(**delta))

    @property
    def cluster_created(self) -> str:
        return self.ago(days=3)

    @property
    def node_boot(self) -> str:
        return self.ago(hours=1)  # as the sandbox's node logs say

    @property
    def node_ready(self) -> str:
        return self.ago(minutes=58)

    @property
    def pods_started(self) -> str:
        return self.ago(minutes=55)


def owner_reference(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
