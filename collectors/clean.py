"""A shareable copy of a run: names and addresses replaced by stand-ins, the same one everywhere.

Anchor: sos clean (sosreport/sos, sos/cleaner). As there, it works in two passes over every file of
the run: the first learns what is in it (sos's "preppers": the state's names, every address, every
instance id, account ids from ARNs and registry hosts, user names from where logs and tables name
them), stand-ins are then chosen for all of it at once, and the second writes every file again
with them (sos's "parsers"). The mapping from stand-ins back to names is written beside the copy,
0600, and never into it (sos's private_map).

Unlike sos's stand-ins, ours keep the shapes the report reads, so that `invoke report` on the copy
finds what it finds on the original: an IPv4 address keeps its last number and its /24 network gets
a stand-in network (10.1.4.7 → 10.0.0.7), and an EC2 host name follows its address (ip-10-1-4-7 →
ip-10-0-0-7), so Slurm's and the report's node sets fold the same way (ip-10-0-0-[1-3]); instance
ids stay i- and hex of their length, account ids 12 digits. Stand-ins are chosen in sorted order and
never equal to anything of the original run, so the copy holds none of it.

Every kind is a Finder: the spans of a block of text it replaces. Blocks are whole lines (nothing
here spans lines); all kinds' spans are found first, then spliced in at once, so a stand-in is
never read again by another kind.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

from collectors.report.scan import blocks

MAP_SUFFIX = ".private-map.json"
MAP_FORMAT = 1
# Kinds, as the mapping file and the printed counts name them, in the order printed.
KIND_LABELS = {
    "cluster": "cluster names", "bucket": "S3 buckets", "hostname": "host names", "ipv4": "IPv4 addresses",
    "ipv6": "IPv6 addresses", "mac": "MAC addresses", "account": "account ids", "user": "user names",
    "instance_id": "instance ids",
}
# What `--keep` may leave as it is: AWS Support needs instance ids to look at the hosts.
KEEPABLE = {"instance-ids": "instance_id"}
# Accounts every Linux image has: they name no one (sos keeps a like list, preppers/usernames.py).
SYSTEM_USERS = frozenset("""
    root ubuntu ec2-user ssm-user nobody nogroup daemon bin sys sync games man lp mail news uucp proxy www-data
    backup list irc gnats syslog messagebus sshd chrony _chrony polkitd _apt munge slurm dnsmasq ntp rpc rpcuser
    dbus tss uuidd tcpdump landscape pollinate lxd usbmux fwupd-refresh nvidia-persistenced""".split())
MACS_OF_NO_ONE = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})
SKIP = object()  # the stand-in of a span left as it is (an address of a network that names no one)
# A file this many bytes or less is cleaned in memory; a larger one goes through a temporary file.
SPOOL_BYTES = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"
# Below this many bundles, worker processes cost more than they save (as in the report's scan).
PARALLEL_FROM = 16

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
# Where account ids are sure to be account ids (a bare 12-digit number may be a byte count): each
# pattern with a literal all its matches hold, looked for first.
ACCOUNT_RES = ((b"arn:aws", re.compile(rb"arn:aws[a-z-]*:[a-z0-9-]*:[a-z0-9-]*:(\d{12}):")),
               (b".dkr.ecr.", re.compile(rb"(?<![0-9])(\d{12})\.dkr\.ecr\.")),
               (b'"Account', re.compile(rb'"Account(?:Id)?"\s*:\s*"(\d{12})"')))
NAME = rb"([A-Za-z_][A-Za-z0-9_.@-]*[A-Za-z0-9_]|[A-Za-z_])"
# Where logs name a user (pam, sshd, systemd-logind, sudo, Slurm's reasons, home folders, IAM ARNs).
USER_RES = ((b"for user ", re.compile(rb"session (?:opened|closed) for user " + NAME)),
            (b"Accepted ", re.compile(rb"Accepted \S+ for " + NAME + rb" from ")),
            (b"ession ", re.compile(rb"ession \S+ of [Uu]ser " + NAME)),
            (b"sudo", re.compile(rb"sudo(?:\[\d+\])?: +" + NAME + rb" : ")),
            (b"/home/", re.compile(rb"/home/" + NAME)),
            (b"/Users/", re.compile(rb"/Users/" + NAME)),
            (b"@", re.compile(rb"\[" + NAME + rb"@\d{4}-\d\d-\d\dT")),
            (b"arn:aws", re.compile(rb"arn:aws[a-z-]*:(?:iam|sts)::\d{12}:(?:user|assumed-role/[\w+=,.@-]+)/"
                                    + NAME)))
# Tables with a USER column: ps (processes.txt) and squeue (squeue_node.txt); sinfo -R names the user
# before its TIMESTAMP column.
USER_COLUMN_FILES = ("processes.txt", "squeue_node.txt")
INSTANCE_TYPE_RE = re.compile(rb"ml\.[a-z0-9]+\.[a-z0-9]+")
SINFO_USER_RE = re.compile(rb"^.*\s(\S+)\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\s+\S+\s*$", re.MULTILINE)


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


# -- finding what to replace ---------------------------------------------------------------------

def ipv4_spans(block: bytes) -> Iterator[Span]:
    for match in IPV4_RE.finditer(block):
        if not preceded_by(block, match.start(), NOT_BEFORE_IPV4):
            yield Span(match.start(), match.end(), "ipv4", match[0].decode())


def host_spans(block: bytes) -> Iterator[Span]:
    for match in IP_HOST_RE.finditer(block):
        if not preceded_by(block, match.start(), NOT_BEFORE_HOST):
            yield Span(match.start(), match.end(), "hostname", match[0].decode())


def instance_id_spans(block: bytes) -> Iterator[Span]:
    for match in INSTANCE_ID_RE.finditer(block):
        if not preceded_by(block, match.start(), NOT_BEFORE_HOST):
            yield Span(match.start(), match.end(), "instance_id", match[0].decode())


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


def literal_spans(kind_of: dict[str, str]) -> Callable[[bytes], Iterator[Span]]:
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


PATTERN_FINDERS: tuple[Callable[[bytes], Iterator[Span]], ...] = (
    mac_spans, ipv6_spans, host_spans, ipv4_spans, instance_id_spans)


# -- learning (the first pass) -------------------------------------------------------------------

@dataclass
class Inventory:
    """What a run holds that may name someone, as the first pass finds it. The kinds there are many of
    (addresses, host names, instance ids) are gathered as the regex engine finds them, before looking
    at what comes before each: a stand-in chosen for a look-alike costs nothing, since the second pass
    replaces only real matches."""

    found: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    addresses: set[bytes] = field(default_factory=set)  # IPv4, classified when stand-ins are chosen
    # /24 networks (a.b.c) that hold a node: mapped whatever their range (the sandbox's are loopback).
    node_networks: set[str] = field(default_factory=set)

    def add(self, kind: str, value: str) -> None:
        self.found[kind].add(value)

    def merge(self, other: "Inventory") -> None:
        for kind, values in other.found.items():
            self.found[kind] |= values
        self.addresses |= other.addresses
        self.node_networks |= other.node_networks

    def learn_state(self, state: dict[str, Any]) -> None:
        cluster = state.get("cluster", {})
        for key in ("name", "requested"):
            if cluster.get(key) and not str(cluster[key]).startswith("arn:"):
                self.add("cluster", cluster[key])
        if cluster.get("eks_cluster_name"):
            self.add("eks_cluster", cluster["eks_cluster_name"])
        if (state.get("s3") or {}).get("bucket"):
            self.add("bucket", state["s3"]["bucket"])
        for instance_id, node in state.get("nodes", {}).items():
            self.add("instance_id", instance_id)
            for name in (node.get("hostname"), (node.get("dns_hostname") or "").split(".", 1)[0]):
                if name and not IP_HOST_RE.fullmatch(name.encode()):
                    self.add("hostname", name)
            if IPV4_RE.fullmatch((node.get("ip") or "").encode()):
                self.node_networks.add(node["ip"].rsplit(".", 1)[0])
        self.learn_text(json.dumps(state).encode(), "state.json")

    def learn_text(self, block: bytes, path: str) -> None:
        self.addresses.update(IPV4_RE.findall(block))
        self.node_networks.update(b".".join(groups).decode() for groups in set(IP_HOST_RE.findall(block)))
        self.found["instance_id"].update(iid.decode() for iid in set(INSTANCE_ID_RE.findall(block)))
        for span in mac_spans(block):
            if span.original not in MACS_OF_NO_ONE:
                self.add("mac", span.original)
        for span in ipv6_spans(block):
            if not is_special(ipaddress.IPv6Address(span.original)):
                self.add("ipv6", span.original)
        for literal, pattern in ACCOUNT_RES:
            if literal in block:
                self.found["account"].update(match.decode() for match in pattern.findall(block))
        for literal, pattern in USER_RES:
            if literal in block:
                for name in set(pattern.findall(block)):
                    self.add_user(name)
        self.learn_user_columns(block, path.rsplit("/", 1)[-1])

    def ipv4_networks(self) -> set[str]:
        """The /24 networks of the addresses that name someone."""
        return {address.rsplit(b".", 1)[0].decode() for address in self.addresses
                if not is_special(ipaddress.IPv4Address(address.decode()))}

    def learn_user_columns(self, block: bytes, name: str) -> None:
        if name == "sinfo_R.txt":
            for match in SINFO_USER_RE.finditer(block):
                self.add_user(match[1])
        if name not in USER_COLUMN_FILES:
            return
        lines = block.splitlines()
        column = next((line.split().index(b"USER") for line in lines if b"USER" in line.split()), None)
        for line in lines if column is not None else ():
            cells = line.split()
            if len(cells) > column and cells[column] != b"USER":
                self.add_user(cells[column].rstrip(b"+"))  # ps cuts long names to 7 characters and a +

    def add_user(self, raw: bytes) -> None:
        name = raw.decode(errors="replace").rstrip(".")
        if name and not name.isdigit() and name not in SYSTEM_USERS and not name.startswith("systemd-"):
            self.add("user", name)


def is_special(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses that name no one: loopback, link-local (169.254.169.254 is every instance's IMDS),
    multicast, unspecified, reserved and broadcast (netmasks); IPv4's 0.0.0.0/8. IPv6 link-local
    addresses are not special: they are made from the interface's MAC."""
    if address.is_loopback or address.is_multicast or address.is_unspecified or address.is_reserved:
        return True
    if address.version == 4:
        return address.is_link_local or address.packed[0] == 0
    return False


# -- choosing stand-ins ----------------------------------------------------------------------------

def counter_names(make: Callable[[int], str], taken: set[str]) -> Iterator[str]:
    number = 0
    while True:
        number += 1
        name = make(number)
        if name not in taken:
            taken.add(name)
            yield name


@dataclass
class Mapping:
    """Stand-in for every original, per kind; IPv4 by /24 network ("10.1.4" -> "10.0.0")."""

    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    source_cluster: str = ""

    def table(self, kind: str) -> dict[str, str]:
        return self.tables.setdefault(kind, {})

    def as_json(self, run_id: str) -> dict[str, Any]:
        return {"format": MAP_FORMAT, "cluster": self.source_cluster, "run_id": run_id,
                "note": "stand-in of every name and address of the run's shareable copy: keep this file private",
                "stand_ins": {kind: dict(sorted(table.items())) for kind, table in sorted(self.tables.items())}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Mapping":
        return cls({kind: dict(table) for kind, table in doc["stand_ins"].items()}, doc["cluster"])

    def extend(self, inventory: Inventory, taken: set[str]) -> None:
        """Stand-ins for what the inventory holds that the mapping lacks; never equal to an original."""
        found = inventory.found
        networks = inventory.ipv4_networks() | inventory.node_networks
        private = {network for network in networks if is_private_network(network)} | inventory.node_networks
        self.assign("ipv4_network", private, lambda k: f"10.{(k - 1) >> 8}.{(k - 1) & 255}", networks,
                    key=network_key)
        self.assign("ipv4_network", networks - private, lambda k: f"100.{64 + ((k - 1) >> 8)}.{(k - 1) & 255}",
                    networks, key=network_key)
        self.assign_ipv6(found["ipv6"])
        self.assign("mac", found["mac"], lambda k: "02:00:00:" + ":".join(f"{k:06x}"[i:i + 2] for i in (0, 2, 4)),
                    found["mac"])
        self.assign("account", found["account"], lambda k: f"{k:012d}", found["account"])
        self.assign("user", found["user"], lambda k: f"user{k}", found["user"])
        self.assign("hostname", found["hostname"], lambda k: f"host-{k}", found["hostname"])
        self.assign("bucket", found["bucket"], lambda k: f"bucket-{k}", found["bucket"])
        for width in sorted({len(iid) - 2 for iid in found["instance_id"]}):
            same_width = {iid for iid in found["instance_id"] if len(iid) - 2 == width}
            self.assign("instance_id", same_width, lambda k, w=width: f"i-{k:0{w}x}", found["instance_id"])
        self.assign_clusters(found, taken)

    def assign(self, kind: str, originals: Iterable[str], make: Callable[[int], str], avoid: set[str],
               key: Callable[[str], Any] | None = None) -> None:
        table = self.table(kind)
        names = counter_names(make, set(table.values()) | set(avoid))
        for original in sorted(set(originals) - set(table), key=key):
            table[original] = next(names)

    def assign_ipv6(self, addresses: set[str]) -> None:
        """Per /64 network a stand-in fd00:0:0:N::/64, and in it ::1, ::2, ... in order."""
        table, networks = self.table("ipv6"), self.table("ipv6_network")
        originals = {network_of(address) for address in addresses}
        self.assign("ipv6_network", originals, lambda k: f"fd00:0:0:{k:x}::/64", originals)
        hosts = Counter(network_of(stand_in) for stand_in in table.values())
        for address in sorted(set(addresses) - set(table), key=ipaddress.IPv6Address):
            network = networks[network_of(address)]
            hosts[network] += 1
            table[address] = str(ipaddress.IPv6Network(network)[hosts[network]])

    def assign_clusters(self, found: dict[str, set[str]], taken: set[str]) -> None:
        """cluster-N for the HyperPod cluster, eks-cluster-N for its EKS cluster; N is free in the
        output folder (`taken`), so two clusters cleaned there never share a folder."""
        table = self.table("cluster")
        stand_in = table.get(self.source_cluster) or next(
            f"cluster-{n}" for n in range(1, 10**6) if f"cluster-{n}" not in taken | set(table.values()))
        for name in found["cluster"]:
            table.setdefault(name, stand_in)
        for name in found["eks_cluster"]:
            table.setdefault(name, f"eks-{stand_in}")

    @property
    def cluster_stand_in(self) -> str:
        return self.table("cluster")[self.source_cluster]

    def kinds_of_names(self) -> dict[str, str]:
        """Names replaced as words: name -> kind."""
        return {name: kind for kind in ("cluster", "bucket", "user", "hostname", "account")
                for name in self.table(kind)}


def network_of(address: str) -> str:
    """An IPv6 address's /64 network."""
    return str(ipaddress.IPv6Network(f"{address}/64", strict=False))


def network_key(network: str) -> tuple[int, ...]:
    return tuple(int(part) for part in network.split("."))


def is_private_network(network: str) -> bool:
    return ipaddress.IPv4Address(f"{network}.1").is_private


# -- replacing (the second pass) -------------------------------------------------------------------

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


# -- the files of a run -----------------------------------------------------------------------------

def is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def run_files(run_dir: Path) -> list[Path]:
    """Every file of the run folder but the lock and hidden temporary files, tarballs last."""
    files = [path for path in sorted(run_dir.rglob("*"))
             if path.is_file() and not path.is_symlink() and not any(part.startswith(".") for part in
                                                                        path.relative_to(run_dir).parts)
             and path.name != "state.lock"]
    return sorted(files, key=lambda path: (is_tarball(path), str(path)))


def learn_file(path: Path, name: str) -> Inventory:
    inventory = Inventory()
    with open(path, "rb") as source:
        for block in blocks(source):
            inventory.learn_text(block, name)
    return inventory


def learn_tarball(path: Path) -> Inventory:
    """A damaged tarball is learned as far as it can be read; the copy says it is damaged."""
    inventory = Inventory()
    try:
        for member, content in tar_members(path):
            inventory.learn_text(member.name.encode(), member.name)
            inventory.add_user(member.uname.encode())
            if content is not None:
                for block in blocks(member_text(content)):
                    inventory.learn_text(block, member.name)
    except DAMAGE:
        pass
    return inventory


# What a damaged bundle raises when read: a cut or corrupt gzip stream, a broken tar header.
DAMAGE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def tar_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    with gzip.open(path) as unpacked, tarfile.open(fileobj=unpacked, mode="r|") as tar:
        for member in tar:
            yield member, tar.extractfile(member) if member.isfile() else None


def member_text(raw: IO[bytes]) -> IO[bytes]:
    """A member's content as text: a compressed log inflated, a `.gz` that is not gzip as it is."""
    return gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw


def is_binary(first_block: bytes) -> bool:
    """What cannot be cleaned as text (a NUL byte): left out of the copy, as sos leaves binary files out."""
    return b"\0" in first_block[:8192]


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
    members = tar_members(path)
    while True:
        try:
            member, content = next(members)
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


# -- the whole run ------------------------------------------------------------------------------------

@dataclass
class CleanResult:
    copy_dir: Path
    map_path: Path
    counts: dict[str, dict[str, int]]
    files: int
    left_out: list[str]


def clean_run(run_dir: Path, state: dict[str, Any], output: Path, keep: frozenset[str] = frozenset(),
              workers: int = 1) -> CleanResult:
    """Write the run's shareable copy to output/<cluster stand-in>/<run id>, and the private mapping beside it."""
    files = run_files(run_dir)
    tarballs = [path for path in files if is_tarball(path)]
    inventory = Inventory()
    inventory.learn_state(state)
    for path in files:
        if not is_tarball(path):
            inventory.merge(learn_file(path, path.name))
        inventory.learn_text(str(path.relative_to(run_dir)).encode(), path.name)
    for learned in fan_out(learn_tarball, [(path,) for path in tarballs], workers):
        inventory.merge(learned)
    cluster = run_dir.parent.name  # the name the runs folder knows the cluster by (its ARN's last part)
    inventory.add("cluster", cluster)
    mapping = prior_mapping(output, cluster) or Mapping(source_cluster=cluster)
    mapping.extend(inventory, taken={path.name for path in output.glob("*") if path.is_dir()})
    return write_copy(run_dir, files, mapping, output, keep, workers)


def write_copy(run_dir: Path, files: list[Path], mapping: Mapping, output: Path, keep: frozenset[str],
               workers: int) -> CleanResult:
    cleaner = Cleaner(mapping, keep)
    home = output / mapping.cluster_stand_in
    private_folder(home)
    copy_dir = home / run_dir.name
    staging = Path(tempfile.mkdtemp(dir=home, prefix=f".{run_dir.name}."))
    try:
        left_out, jobs = [], []
        for path in files:
            target = staging / cleaner.clean_name(str(path.relative_to(run_dir)))
            private_folder(target.parent)
            if is_tarball(path):
                jobs.append((path, target))
            elif not clean_file(path, target, cleaner):
                left_out.append(target.name)
        written = len(files) - len(left_out)
        cleaned = fan_out(clean_tarball_in_worker, [(path, target, mapping, keep) for path, target in jobs], workers)
        for details, dropped in cleaned:
            cleaner.merge_counts(details)
            left_out += dropped
        map_path = home / f"{run_dir.name}{MAP_SUFFIX}"
        write_private_json(map_path, mapping.as_json(run_dir.name))
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        staging.rename(copy_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CleanResult(copy_dir, map_path, cleaner.counts(), written, left_out)


def clean_tarball_in_worker(source: Path, target: Path, mapping: Mapping, keep: frozenset[str]
                            ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    cleaner = Cleaner(mapping, keep)
    left_out = clean_tarball(source, target, cleaner)
    return cleaner.count_details(), left_out


def fan_out(work: Callable[..., Any], jobs: list[tuple], workers: int) -> list[Any]:
    """Bundles in worker processes when there are many of them; the answers in the jobs' order."""
    if workers <= 1 or len(jobs) < PARALLEL_FROM:
        return [work(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, *zip(*jobs), chunksize=max(1, len(jobs) // (workers * 8))))


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    with private_file(temporary) as out:
        out.write((json.dumps(doc, indent=1) + "\n").encode())
    temporary.replace(path)


def prior_mapping(output: Path, cluster: str) -> Mapping | None:
    """The mapping of the latest run of the same cluster cleaned into `output`: later runs keep the
    same stand-ins (as sos keeps its default_mapping), so copies of two runs can be compared."""
    for path in sorted(output.glob(f"*/*{MAP_SUFFIX}"), key=lambda p: p.name, reverse=True):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("format") == MAP_FORMAT and doc.get("cluster") == cluster:
            return Mapping.from_json(doc)
    return None
