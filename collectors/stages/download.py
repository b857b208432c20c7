"""download: every node tarball of the run into `results/`, each checked for size and sha256.

A file is written under a temporary name and renamed only once its size (and checksum, where
the node reported one) match, so `results/` never holds a half-downloaded tarball.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from collectors import buckets, console
from collectors.aws import describe_aws_error
from collectors.context import StageContext
from collectors.errors import EXIT_NODES_FAILED, EXIT_OK
from collectors.hashing import sha256_of
from collectors.layout import RunLocation
from collectors.state import RESULTS_DIR, SUCCESS_STATUSES

CHUNK = 1024 * 1024


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("upload", "download")
    location = state.data["s3"]
    s3 = buckets.run_client(ctx.aws, location)
    objects = list_tarballs(s3, location["bucket"], RunLocation.from_dict(location).instances_prefix)
    target = state.run_dir / RESULTS_DIR
    target.mkdir(exist_ok=True)
    expected = {Path(n["s3_key"]).name: n for n in state.nodes.values() if n.get("s3_key")}
    problems = missing_tarballs(state.nodes.values(), objects)
    workers = max(1, min(ctx.settings.download_workers, len(objects) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda obj: fetch(s3, location["bucket"], obj, target, expected), objects))
    problems += [problem for problem in results if problem]
    total = sum(obj["Size"] for obj in objects)
    state.mark_stage("download", "done" if not problems else "incomplete", results_dir=str(target),
                     files=len(objects), bytes=total, problems=problems)
    console.log(f"download: {results.count(None)} of {len(objects)} tarball(s) verified, "
                f"{console.human_bytes(total)} in {target}")
    for problem in problems:
        console.log(f"download problem: {problem}")
    return EXIT_NODES_FAILED if problems else EXIT_OK


def list_tarballs(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    paginator = s3.get_paginator("list_objects_v2")
    objects = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(obj for obj in page.get("Contents", []) if obj["Key"].endswith(".tar.gz"))
    return objects


def missing_tarballs(nodes: Any, objects: list[dict[str, Any]]) -> list[str]:
    present = {obj["Key"] for obj in objects}
    return [f"{n['instance_id']}: collected but {n['s3_key']} is not in S3"
            for n in nodes if n.get("status") in SUCCESS_STATUSES and n.get("s3_key") not in present]


def fetch(s3: Any, bucket: str, obj: dict[str, Any], target: Path, expected: dict[str, Any]) -> str | None:
    """Download one object; return a problem description, or None when it is in place and verified.

    Verified against what the node reported (its size and sha256 in the state), not against S3's
    listing: an object that another launch overwrote, or that S3 holds cut short, is not the node's.
    """
    name = Path(obj["Key"]).name
    destination = target / name
    node = expected.get(name) or {}
    want_bytes, want_sha = node.get("bytes", obj["Size"]), node.get("sha256")
    if destination.is_file() and destination.stat().st_size == want_bytes and \
            (want_sha is None or sha256_of(destination) == want_sha):
        return None  # already here from an earlier download of this run
    partial = target / f".{name}.part"
    try:
        size, digest = stream_to_file(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"], partial)
    except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others
        partial.unlink(missing_ok=True)
        return f"{name}: download failed: {describe_aws_error(exc)}"
    if size != want_bytes or (want_sha and digest != want_sha):
        partial.unlink(missing_ok=True)
        reported = "the node reported" if node else "S3 lists"
        return (f"{name}: got {size} bytes sha256 {digest[:12]}…, {reported} {want_bytes} bytes"
                + (f" sha256 {want_sha[:12]}…" if want_sha else ""))
    os.replace(partial, destination)
    return None


def stream_to_file(body: Any, path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as out:
        for chunk in iter(lambda: body.read(CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
