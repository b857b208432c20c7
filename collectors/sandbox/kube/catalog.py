"""What the sandbox's API server offers: the resource catalog behind discovery."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1" for the core group
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def discovery_entry(self) -> dict:
        entry = {"name": self.plural, "singularName": self.kind.lower(), "namespaced": self.namespaced,
                 "kind": self.kind, "verbs": ["get", "list"]}
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


CATALOG = [
    Resource("v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("v1", "nodes", "Node", False, ("no",)),
    Resource("v1", "persistentvolumes", "PersistentVolume", False, ("pv",)),
    Resource("v1", "pods", "Pod", True, ("po",)),
    Resource("v1", "events", "Event", True, ("ev",)),
    Resource("v1", "services", "Service", True, ("svc",)),
    Resource("v1", "endpoints", "Endpoints", True, ("ep",)),
    Resource("v1", "configmaps", "ConfigMap", True, ("cm",)),
    Resource("v1", "secrets", "Secret", True),
    Resource("v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
    Resource("v1", "resourcequotas", "ResourceQuota", True, ("quota",)),
    Resource("v1", "limitranges", "LimitRange", True, ("limits",)),
    Resource("apps/v1", "deployments", "Deployment", True, ("deploy",)),
    Resource("apps/v1", "replicasets", "ReplicaSet", True, ("rs",)),
    Resource("apps/v1", "statefulsets", "StatefulSet", True, ("sts",)),
    Resource("apps/v1", "daemonsets", "DaemonSet", True, ("ds",)),
    Resource("batch/v1", "jobs", "Job", True),
    Resource("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    Resource("coordination.k8s.io/v1", "leases", "Lease", True),
    Resource("kubeflow.org/v1", "pytorchjobs", "PyTorchJob", True),
    Resource("sagemaker.amazonaws.com/v1", "hyperpodpytorchjobs", "HyperPodPyTorchJob", True, ("hppj",)),
]
BY_KIND = {resource.kind: resource for resource in CATALOG}
BY_PATH = {(resource.group_version, resource.plural): resource for resource in CATALOG}


def discovery_api() -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]}


def discovery_groups() -> dict:
    versions = sorted({r.group_version for r in CATALOG if r.group})
    groups = []
    for group_version in versions:
        group, _, version = group_version.rpartition("/")
        entry = {"groupVersion": group_version, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def discovery_resources(group_version: str) -> dict | None:
    resources = [r.discovery_entry() for r in CATALOG if r.group_version == group_version]
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
