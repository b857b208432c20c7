"""The answers to kubectl's GET requests, over the store; no HTTP in here, so it is easy to test."""

from __future__ import annotations

from dataclasses import dataclass

from collectors.sandbox.kube.catalog import (
    BY_PATH,
    Resource,
    discovery_api,
    discovery_groups,
    discovery_resources,
)
from collectors.sandbox.kube.selectors import matches_fields, matches_labels, page, parse_field_selector
from collectors.sandbox.kube.store import Store
from collectors.sandbox.kube.tables import as_table

SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.3-eks-4096722", "gitCommit": "4096722b0bd5b3e9ee09b5fe8a5b9b2c6d6dfe0a",
    "gitTreeState": "clean", "buildDate": "2026-10-15T00:00:00Z", "goVersion": "go1.23.6", "compiler": "gc",
    "platform": "linux/amd64",
}


def as_list(resource: Resource, items: list[dict], continue_token: str = "") -> dict:
    return {"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
            "metadata": {"resourceVersion": "99999", **({"continue": continue_token} if continue_token else {})},
            "items": items}


def not_found(plural: str, name: str) -> tuple[int, dict]:
    return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": f'{plural} "{name}" not found', "reason": "NotFound",
                 "details": {"name": name, "kind": plural}, "code": 404}


def no_such_path(path: str) -> tuple[int, dict]:
    return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": f"the server could not find the requested resource ({path})", "reason": "NotFound",
                 "details": {}, "code": 404}


@dataclass
class Query:
    namespace: str
    name: str
    params: dict[str, str]
    wants_table: bool


class KubeApi:
    """Answers GET requests for the store; no HTTP in here, so it is easy to test."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, path: str, params: dict[str, str], accept: str) -> tuple[int, dict]:
        parts = [part for part in path.split("/") if part]
        if parts == ["version"]:
            return 200, SERVER_VERSION
        if parts == ["api"]:
            return 200, discovery_api()
        if parts == ["apis"]:
            return 200, discovery_groups()
        core = parts[:1] == ["api"]
        prefix_length = 2 if core else 3
        group_version = "/".join(parts[1:prefix_length])
        rest = parts[prefix_length:]
        if len(parts) < prefix_length or parts[0] not in ("api", "apis"):
            return no_such_path(path)
        if not rest:
            found = discovery_resources(group_version)
            return (200, found) if found else no_such_path(path)
        return self.resource_request(path, group_version, rest, params, "as=Table" in accept)

    def resource_request(self, path: str, group_version: str, rest: list[str], params: dict[str, str],
                         wants_table: bool) -> tuple[int, dict]:
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource = BY_PATH.get((group_version, rest[0]))
        if resource is None or len(rest) > 2 or params.get("watch") in ("1", "true"):
            return no_such_path(path)
        query = Query(namespace, rest[1] if len(rest) == 2 else "", params, wants_table)
        if query.name:
            return self.get_one(resource, query)
        return self.list(resource, query)

    def get_one(self, resource: Resource, query: Query) -> tuple[int, dict]:
        item = self.store.find(resource.kind, query.name, query.namespace if resource.namespaced else "")
        if item is None:
            return not_found(resource.plural, query.name)
        if query.wants_table:
            return 200, as_table(resource, [item], query.params.get("includeObject", "Metadata"))
        return 200, item

    def list(self, resource: Resource, query: Query) -> tuple[int, dict]:
        items = self.candidates(resource, query)
        if query.namespace and resource.namespaced:
            items = [item for item in items if item["metadata"].get("namespace") == query.namespace]
        if query.params.get("labelSelector"):
            items = [item for item in items if matches_labels(item, query.params["labelSelector"])]
        terms = parse_field_selector(query.params.get("fieldSelector", ""))
        if terms:
            items = [item for item in items if matches_fields(item, terms)]
        chunk, continue_token = page(items, int(query.params.get("limit") or 0), query.params.get("continue", ""))
        if query.wants_table:
            return 200, as_table(resource, chunk, query.params.get("includeObject", "Metadata"), continue_token)
        return 200, as_list(resource, chunk, continue_token)

    def candidates(self, resource: Resource, query: Query) -> list[dict]:
        """`describe node` asks for the pods of one node and the events of one object: use the indexes."""
        terms = dict((path, value) for path, operator, value in parse_field_selector(query.params.get("fieldSelector", ""))
                     if operator == "=")
        if resource.kind == "Pod" and "spec.nodeName" in terms:
            return self.store.pods_by_node.get(terms["spec.nodeName"], [])
        if resource.kind == "Event" and "involvedObject.name" in terms:
            return self.store.events_by_object.get(terms["involvedObject.name"], [])
        return self.store.objects[resource]
