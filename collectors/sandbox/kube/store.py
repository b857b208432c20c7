"""Every object of the cluster, by resource, with the indexes the hot selectors use."""

from __future__ import annotations

from collectors.sandbox.kube.catalog import BY_KIND, CATALOG, Resource
from collectors.sandbox.kube.meta import stable_uid


class Store:
    """Every object, by resource, in etcd's key order (namespace, then name), plus indexes for hot selectors."""

    def __init__(self) -> None:
        self.objects: dict[Resource, list[dict]] = {resource: [] for resource in CATALOG}

    def add(self, item: dict) -> dict:
        resource = BY_KIND[item["kind"]]
        item["metadata"].setdefault("uid", stable_uid(item["kind"], item["metadata"].get("namespace", ""),
                                                      item["metadata"]["name"]))
        self.objects[resource].append(item)
        return item

    def finish(self) -> None:
        for number, item in enumerate(item for items in self.objects.values() for item in items):
            item["metadata"].setdefault("resourceVersion", str(1000 + number))
        for items in self.objects.values():
            items.sort(key=lambda item: (item["metadata"].get("namespace", ""), item["metadata"]["name"]))
        self.by_name = {(item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"]): item
                        for items in self.objects.values() for item in items}
        self.pods_by_node: dict[str, list[dict]] = {}
        for pod in self.objects[BY_KIND["Pod"]]:
            self.pods_by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
        self.events_by_object: dict[str, list[dict]] = {}
        for event in self.objects[BY_KIND["Event"]]:
            self.events_by_object.setdefault(event["involvedObject"]["name"], []).append(event)

    def find(self, kind: str, name: str, namespace: str = "") -> dict | None:
        return self.by_name.get((kind, namespace, name))
