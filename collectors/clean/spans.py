"""What may name someone in a block of text, found as spans: a Finder per kind of name or address."""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Iterator, NamedTuple

# Kinds, as the mapping file and the printed counts name them, in the order printed.
KIND_LABELS = {
    "cluster": "cluster names", "bucket": "S3 buckets", "hostname": "host names", "ipv4": "IPv4 addresses",
    "ipv6": "IPv6 addresses", "mac": "MAC addresses", "account": "account ids", "user": "user names",
    "instance_id": "instance ids",
}
# What `--keep` may leave as it is: AWS Support needs instance ids to look at the hosts.
KEEPABLE = {"instance-ids": "instance_id"}

HEX = rb"[0-9A-Fa-f]"
# Each pattern starts with a literal or a rare character, so the regex engine skips ahead fast;
# what must not come before a match is checked by `preceded_by`.
OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = re.compile(OCTET + rb"\." + OCTET + rb"\." + OCTET + rb"\." + OCTET + rb"(?![0-9]|\.[0-9])")
# An EC2 host name, also as Slurm writes several (ip-10-1-4-[1-3,9]); the groups are its network.
IP_HOST_RE = re.compile(rb"ip-(" + OCTET + rb")-(" + OCTET + rb")-(" + OCTET + rb")-(?:" + OCTET +
                        rb"(?![0-9])|\[[0-9,-]+\])")
INSTANCE_ID_RE = re.compile(rb"i-[0-9a-f]{8,}(?![A-Za-z0-9])")
MAC_RE = re.compile(rb"[:-](?:" + HEX + rb"{2}[:-]){4}" + HEX + rb"{2}(?!" + HEX + rb"|[:-]" + HEX + rb")")
IPV6_FULL_RE = re.compile(rb":(?:" + HEX + rb"{1,4}:){6}" + HEX + rb"{1,4}(?![0-9A-Za-z:]|\.[0-9])")
IPV6_COMPRESSED_RE = re.compile(rb"::[0-9A-Fa-f:]*(?![0-9A-Za-z:]|\.[0-9])")
INSTANCE_TYPE_RE = re.compile(rb"ml\.[a-z0-9]+\.[a-z0-9]+")


WORD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX_CHARS = b"0123456789ABCDEFabcdef"


def _set(chars: bytes) -> frozenset[bytes]:
    return frozenset(chars[i:i + 1] for i in range(len(chars)))


NOT_BEFORE_IPV4 = _set(WORD_CHARS + b"._")
NOT_BEFORE_HOST = _set(WORD_CHARS)
NOT_BEFORE_MAC = _set(HEX_CHARS + b":-")
NOT_BEFORE_IPV6 = _set(WORD_CHARS + b":.")
NOT_AROUND_NAME = _set(WORD_CHARS)


def preceded_by(block: bytes, start: int, forbidden: frozenset[bytes]) -> bool:
    return start > 0 and block[start - 1:start] in forbidden


class Span(NamedTuple):
    start: int
    end: int
    kind: str
    original: str


Finder = Callable[[bytes], Iterator[Span]]


def not_preceded(pattern: re.Pattern[bytes], forbidden: frozenset[bytes], kind: str) -> Finder:
    """The finder of the pattern's matches that no character of `forbidden` comes right before."""
    def spans(block: bytes) -> Iterator[Span]:
        for match in pattern.finditer(block):
            if not preceded_by(block, match.start(), forbidden):
                yield Span(match.start(), match.end(), kind, match[0].decode())

    return spans


ipv4_spans = not_preceded(IPV4_RE, NOT_BEFORE_IPV4, "ipv4")
host_spans = not_preceded(IP_HOST_RE, NOT_BEFORE_HOST, "hostname")
instance_id_spans = not_preceded(INSTANCE_ID_RE, NOT_BEFORE_HOST, "instance_id")


def mac_spans(block: bytes) -> Iterator[Span]:
    """MM:MM:MM:SS:SS:SS or with dashes, one separator throughout (the match starts at the first one)."""
    for match in MAC_RE.finditer(block):
        start = match.start() - 2
        text = block[start:match.end()]
        if start < 0 or not all(c in HEX_CHARS for c in text[:2]) or preceded_by(block, start, NOT_BEFORE_MAC):
            continue
        if len({text[i] for i in range(2, len(text), 3)}) == 1:
            yield Span(start, match.end(), "mac", text.decode().lower())


def ipv6_spans(block: bytes) -> Iterator[Span]:
    """Full forms (eight groups) and compressed ones (`::`); each match starts at a colon, so its
    first group is found by looking back."""
    for pattern in (IPV6_FULL_RE, IPV6_COMPRESSED_RE):
        for match in pattern.finditer(block):
            start = match.start()
            while start > 0 and start > match.start() - 4 and block[start - 1] in HEX_CHARS:
                start -= 1
            if preceded_by(block, start, NOT_BEFORE_IPV6):
                continue
            try:
                address = ipaddress.IPv6Address(block[start:match.end()].decode())
            except ValueError:
                continue
            yield Span(start, match.end(), "ipv6", str(address))


def literal_spans(kind_of: dict[str, str]) -> Finder:
    """Known names (cluster, bucket, user and host names, account ids) as whole words (letters and
    digits around them are part of another word), longest first, so that `hp-sandbox-eks` is not
    taken for `hp-sandbox`; never inside an instance type (a cluster named `ml` or `p5`)."""
    if not kind_of:
        return lambda block: iter(())
    names = sorted(kind_of, key=lambda name: (-len(name), name))
    pattern = re.compile(b"|".join(re.escape(name.encode()) for name in names))

    def spans(block: bytes) -> Iterator[Span]:
        instance_types = None
        for match in pattern.finditer(block):
            after = block[match.end():match.end() + 1]
            if preceded_by(block, match.start(), NOT_AROUND_NAME) or after in NOT_AROUND_NAME:
                continue
            if instance_types is None:
                instance_types = [(m.start(), m.end()) for m in INSTANCE_TYPE_RE.finditer(block)]
            if any(start <= match.start() < end for start, end in instance_types):
                continue
            name = match[0].decode()
            yield Span(match.start(), match.end(), kind_of[name], name)

    return spans


PATTERN_FINDERS: tuple[Finder, ...] = (
    mac_spans, ipv6_spans, host_spans, ipv4_spans, instance_id_spans)
