"""Choosing stand-ins: one for every original, per kind, in sorted order, never equal to an original."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from collectors.clean.learn import Inventory

MAP_FORMAT = 1


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
