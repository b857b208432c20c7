"""The first pass: what a run holds that may name someone (sos's "preppers")."""

from __future__ import annotations

import ipaddress
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.clean.files import DAMAGE
from collectors.clean.spans import INSTANCE_ID_RE, IP_HOST_RE, IPV4_RE, ipv6_spans, mac_spans
from collectors.report.bundles import blocks, member_text, members

# Accounts every Linux image has: they name no one (sos keeps a like list, preppers/usernames.py).
SYSTEM_USERS = frozenset("""
    root ubuntu ec2-user ssm-user nobody nogroup daemon bin sys sync games man lp mail news uucp proxy www-data
    backup list irc gnats syslog messagebus sshd chrony _chrony polkitd _apt munge slurm dnsmasq ntp rpc rpcuser
    dbus tss uuidd tcpdump landscape pollinate lxd usbmux fwupd-refresh nvidia-persistenced""".split())
MACS_OF_NO_ONE = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})
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
SINFO_USER_RE = re.compile(rb"^.*\s(\S+)\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\s+\S+\s*$", re.MULTILINE)


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
        for member, content in members(path):
            inventory.learn_text(member.name.encode(), member.name)
            inventory.add_user(member.uname.encode())
            if content is not None:
                for block in blocks(member_text(content)):
                    inventory.learn_text(block, member.name)
    except DAMAGE:
        pass
    return inventory
