"""The files of a run: which there are, what a damaged one raises, and how the copy's are made private."""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path
from typing import IO

def is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def run_files(run_dir: Path) -> list[Path]:
    """Every file of the run folder but the lock and hidden temporary files, tarballs last."""
    files = [path for path in sorted(run_dir.rglob("*"))
             if path.is_file() and not path.is_symlink() and not any(part.startswith(".") for part in
                                                                        path.relative_to(run_dir).parts)
             and path.name != "state.lock"]
    return sorted(files, key=lambda path: (is_tarball(path), str(path)))


# What a damaged bundle raises when read: a cut or corrupt gzip stream, a broken tar header. Not
# every OSError, as the report's READ_ERRORS: an error writing the copy (a full disk) must be raised.
DAMAGE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def is_binary(first_block: bytes) -> bool:
    """What cannot be cleaned as text (a NUL byte): left out of the copy, as sos leaves binary files out."""
    return b"\0" in first_block[:8192]


def private_file(path: Path) -> IO[bytes]:
    """A new file only its owner can read, whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "wb")


def private_folder(path: Path) -> None:
    """The folder, and every one made on the way to it, only its owner can enter, whatever the umask."""
    if path.is_dir():
        return
    private_folder(path.parent)
    path.mkdir()
    path.chmod(0o700)
