"""The second pass: every file and tarball member written again with the stand-ins (sos's "parsers")."""

from __future__ import annotations

import tarfile
import tempfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import IO, Any, Iterator

from collectors.clean.files import DAMAGE, is_binary, private_file
from collectors.clean.spans import IP_HOST_RE, KIND_LABELS, PATTERN_FINDERS, Span, instance_id_spans, literal_spans
from collectors.clean.standins import Mapping
from collectors.report.bundles import blocks, member_text, members

SKIP = object()  # the stand-in of a span left as it is (an address of a network that names no one)
# A file this many bytes or less is cleaned in memory; a larger one goes through a temporary file.
SPOOL_BYTES = 16 << 20


class Cleaner:
    """Rewrites text with the mapping's stand-ins and counts what it replaced, per kind."""

    def __init__(self, mapping: Mapping, keep: frozenset[str] = frozenset()):
        self.mapping = mapping
        self.finders = [finder for finder in PATTERN_FINDERS if not (finder is instance_id_spans and
                                                                     "instance_id" in keep)]
        self.finders.append(literal_spans(mapping.kinds_of_names()))
        self.replaced: Counter[str] = Counter()
        self.items: dict[str, set[str]] = defaultdict(set)

    def clean(self, block: bytes) -> bytes:
        spans = sorted((span for finder in self.finders for span in finder(block)),
                       key=lambda span: (span.start, -span.end))
        parts, at = [], 0
        for span in spans:
            if span.start < at:
                continue  # inside a span already replaced (an IPv4 address in an IPv6 one)
            stand_in = self.stand_in(span)
            if stand_in is SKIP:
                continue
            parts += [block[at:span.start], stand_in.encode()]
            at = span.end
            self.replaced[span.kind] += 1
            self.items[span.kind].add(span.original)
        return b"".join(parts + [block[at:]]) if parts else block

    def clean_name(self, name: str) -> str:
        return self.clean(name.encode()).decode()

    def stand_in(self, span: Span) -> str | object:
        kind, original = span.kind, span.original
        if kind == "ipv4":
            network, last = original.rsplit(".", 1)
            stand_in = self.mapping.table("ipv4_network").get(network)
            return f"{stand_in}.{last}" if stand_in else SKIP
        if kind == "hostname" and original.startswith("ip-") and IP_HOST_RE.fullmatch(original.encode()):
            _, a, b, c, rest = original.split("-", 4)
            stand_in = self.mapping.table("ipv4_network").get(f"{a}.{b}.{c}")
            return f"ip-{stand_in.replace('.', '-')}-{rest}" if stand_in else SKIP
        return self.mapping.table(kind).get(original, SKIP)

    def counts(self) -> dict[str, dict[str, int]]:
        return {kind: {"items": len(self.items[kind]), "replaced": self.replaced[kind]}
                for kind in KIND_LABELS if self.replaced[kind]}

    def merge_counts(self, counts: dict[str, dict[str, Any]]) -> None:
        for kind, values in counts.items():
            self.replaced[kind] += values["replaced"]
            self.items[kind] |= set(values["originals"])

    def count_details(self) -> dict[str, dict[str, Any]]:
        """What crosses a process boundary: the counts with the originals, to count each item once."""
        return {kind: {"replaced": count, "originals": sorted(self.items[kind])}
                for kind, count in self.replaced.items()}


class GzipOut:
    """A gzip stream written as it comes, which can also be left cut short: a damaged bundle's copy
    is damaged too, so the report on the copy says what it says on the original."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: with gzip's header and trailer
        self.written = 0

    def write(self, data: bytes) -> int:
        self.raw.write(self.compressor.compress(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def finish(self) -> None:
        self.raw.write(self.compressor.flush())

    def cut_short(self) -> None:
        self.raw.write(self.compressor.flush(zlib.Z_SYNC_FLUSH))


def clean_file(source_path: Path, target: Path, cleaner: Cleaner) -> bool:
    """False when the file is binary and was left out."""
    with open(source_path, "rb") as source:
        chunks = blocks(source)
        first = next(chunks, b"")
        if is_binary(first):
            return False
        with private_file(target) as out:
            out.write(cleaner.clean(first))
            for block in chunks:
                out.write(cleaner.clean(block))
    return True


def clean_tarball(source_path: Path, target: Path, cleaner: Cleaner) -> list[str]:
    """The tarball with every member's name and text cleaned; returns the members left out (binary)."""
    left_out: list[str] = []
    with private_file(target) as out:
        packed = GzipOut(out)
        copy = tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT)
        for info, body in cleaned_members(source_path, cleaner):
            if info is None:
                packed.cut_short()
                return left_out
            if body is None and info.isreg():
                left_out.append(f"{target.name}:{info.name}")
            elif body is None:
                copy.addfile(info)
            else:
                with body:
                    info.size = body.tell()
                    body.seek(0)
                    copy.addfile(info, body)
        copy.close()
        packed.finish()
    return left_out


def cleaned_members(path: Path, cleaner: Cleaner) -> Iterator[tuple[tarfile.TarInfo | None, IO[bytes] | None]]:
    """Each member's cleaned header and content (None for a binary file, and for what has none);
    a last (None, None) where the tarball turns out damaged. Only reading can be damage: an error
    writing the copy (a full disk) is raised."""
    each = members(path)
    while True:
        try:
            member, content = next(each)
            body = cleaned_member(content, cleaner) if content is not None else None
        except StopIteration:
            return
        except DAMAGE:
            yield None, None
            return
        if content is not None or member.isdir() or member.issym() or member.islnk():
            yield cleaned_info(member, cleaner), body


def cleaned_info(member: tarfile.TarInfo, cleaner: Cleaner) -> tarfile.TarInfo:
    info = tarfile.TarInfo(cleaner.clean_name(member.name))
    info.type, info.mode, info.mtime = member.type, member.mode, member.mtime
    info.linkname = cleaner.clean_name(member.linkname)
    info.uname, info.gname = cleaner.clean_name(member.uname), cleaner.clean_name(member.gname)
    info.uid, info.gid = member.uid, member.gid
    return info


def cleaned_member(content: IO[bytes], cleaner: Cleaner) -> IO[bytes] | None:
    """The member's cleaned content in a spooled file positioned at its end; None when binary."""
    text = member_text(content)
    spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
    sink = GzipOut(spool) if text is not content else spool
    chunks = blocks(text)
    first = next(chunks, b"")
    if is_binary(first):
        spool.close()
        return None
    sink.write(cleaner.clean(first))
    for block in chunks:
        sink.write(cleaner.clean(block))
    if isinstance(sink, GzipOut):
        sink.finish()
    return spool
