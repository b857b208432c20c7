"""How a run's tarballs are read, by the report and by clean: member after member out of the gzip
stream (nothing extracted to disk), a member's text in blocks of whole lines, what a damaged tarball
raises on the way, and when worker processes pay.
"""

from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from pathlib import Path
from typing import IO, Iterator

BLOCK_BYTES = 1 << 20
# A "line" longer than this (a binary file) is cut into pieces rather than held whole.
LONGEST_LINE = 8 << 20
# tarfile's stream buffer: measured best at 16 KB. Smaller is more Python calls per read; larger
# costs more, as tarfile copies what is left of its buffer after every read (each member header).
TAR_BUFFER = 16 << 10
GZIP_MAGIC = b"\x1f\x8b"
BUNDLE_NAME_RE = re.compile(r"^(?P<group>.+)_(?P<instance_id>i-[0-9a-f]+)\.tar\.gz$")
# What reading a damaged tarball raises: a cut or corrupt gzip stream, a broken tar header.
READ_ERRORS = (OSError, tarfile.TarError, EOFError, zlib.error)
# Below this many bundles, starting worker processes costs more than it saves.
PARALLEL_FROM = 16


def members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """Each member in the tarball's order, with its content (None for what has none, a folder).
    gzip.open inflates in bounded steps; tarfile's own "r|gz" inflates each read whole, which for a
    log that compresses 40 times makes a small read a large buffer."""
    with gzip.open(path) as unpacked, tarfile.open(fileobj=unpacked, mode="r|", bufsize=TAR_BUFFER) as tar:
        for member in tar:
            yield member, tar.extractfile(member) if member.isfile() else None


def member_text(raw: IO[bytes]) -> IO[bytes]:
    """A member's content as text: a compressed log (rotated_logs/*.gz) inflated, a `.gz` that is not
    gzip as it is."""
    return gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw


def blocks(source: IO[bytes]) -> Iterator[bytes]:
    """The stream in blocks that end at a line end, so no line is ever split between two blocks."""
    carry = b""
    while True:
        chunk = source.read(BLOCK_BYTES)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0 and len(data) < LONGEST_LINE:
            carry = data
            continue
        if cut < 0:
            cut = len(data) - 1
        yield data[:cut + 1]
        carry = data[cut + 1:]
    if carry:
        yield carry


def in_processes(jobs: int, workers: int) -> bool:
    """Whether this many bundles are worth worker processes."""
    return workers > 1 and jobs >= PARALLEL_FROM


def chunk_size(jobs: int, workers: int) -> int:
    """Bundles handed to a worker at a time: about eight hand-overs a worker, fewer than one bundle
    at a time, and still spread over all the workers."""
    return max(1, jobs // (workers * 8))
