"""The whole cluster, built once from the sandbox status and the manifests in fixtures/kube/cluster.yaml."""

from __future__ import annotations

from typing import Callable

import yaml

from collectors.sandbox import FIXTURES
from collectors.sandbox.kube.catalog import BY_KIND
from collectors.sandbox.kube.events import add_node_events, add_pod_start_events, controller_event, pod_event
from collectors.sandbox.kube.meta import Clock, name_suffix, owner_reference, stable_uid, template_hash
from collectors.sandbox.kube.nodes import build_node, hyperpod_status, is_sick, node_is_ready, node_lease, node_name
from collectors.sandbox.kube.pods import (
    PodFactory,
    matches_node_selector,
    pod_is_ready,
    set_completed,
    set_crash_looping,
    worker_template,
)
from collectors.sandbox.kube.store import Store

FIXTURE = FIXTURES / "kube" / "cluster.yaml"


def load_manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(FIXTURE.read_text()) if doc]


def build_cluster(cluster: dict, clock: Clock) -> Store:
    store = Store()
    nodes = {}
    for node in cluster["nodes"]:
        if hyperpod_status(node) == "Pending":
            continue  # still being provisioned: not registered with the cluster yet
        node_object = store.add(build_node(node, cluster, clock))
        nodes[node_object["metadata"]["name"]] = node_object
        store.add(node_lease(node_object, clock))
    sick_nodes = [node_name(node["instance_id"]) for node in cluster["nodes"] if is_sick(node)]
    builder = WorkloadBuilder(store, clock, nodes, sick_nodes)
    for manifest in load_manifests():
        builder.add_manifest(manifest)
    add_node_events(store, clock, nodes.values())
    for quota in store.objects[BY_KIND["ResourceQuota"]]:
        fill_quota_usage(quota, store)
    store.finish()
    return store


class WorkloadBuilder:
    """Adds fixture manifests and what their controllers would have created."""

    def __init__(self, store: Store, clock: Clock, nodes: dict[str, dict], sick_nodes: list[str]):
        self.store = store
        self.clock = clock
        self.nodes = nodes
        self.sick_nodes = sick_nodes
        self.pods = PodFactory(clock)
        # Add-ons go to healthy CPU nodes when there are any (as their node affinity asks), else to healthy nodes.
        healthy = [n for n in nodes.values() if node_is_ready(n) and not n["spec"]["unschedulable"]]
        cpu_nodes = [n for n in healthy if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
        self.service_nodes = cpu_nodes or healthy or list(nodes.values())
        self.placed = 0

    def add_manifest(self, manifest: dict) -> None:
        item = self.store.add(manifest)
        item["metadata"].setdefault("creationTimestamp", self.clock.cluster_created)
        handler: Callable[[dict], None] | None = getattr(self, f"add_{item['kind'].lower()}", None)
        if handler:
            handler(item)

    def next_service_node(self) -> dict:
        node_object = self.service_nodes[self.placed % len(self.service_nodes)]
        self.placed += 1
        return node_object

    def add_namespace(self, item: dict) -> None:
        item["spec"] = {"finalizers": ["kubernetes"]}
        item["status"] = {"phase": "Active"}
        item["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = item["metadata"]["name"]
        root_ca = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kube-root-ca.crt", "namespace": item["metadata"]["name"],
                                "creationTimestamp": self.clock.cluster_created},
                   "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(sandbox: no real CA)\n-----END CERTIFICATE-----\n"}}
        self.store.add(root_ca)

    def add_daemonset(self, item: dict) -> None:
        template = item["spec"]["template"]
        pods = []
        for node_object in self.nodes.values():
            if matches_node_selector(node_object, template):
                name = f"{item['metadata']['name']}-{name_suffix(item['metadata']['name'] + node_object['metadata']['name'])}"
                pods.append(self.store.add(self.pods.make(item, name, template, node_object,
                                                          {"controller-revision-hash": template_hash(name)})))
        ready = sum(pod_is_ready(pod) for pod in pods)
        item["status"] = {"currentNumberScheduled": len(pods), "desiredNumberScheduled": len(pods),
                          "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": len(pods),
                          "numberMisscheduled": 0, "numberUnavailable": len(pods) - ready, "observedGeneration": 1}

    def add_deployment(self, item: dict) -> None:
        name, namespace = item["metadata"]["name"], item["metadata"]["namespace"]
        pod_hash = template_hash(namespace + name)
        replica_set = self.store.add({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace, "creationTimestamp": self.clock.cluster_created,
                         "labels": {**item["spec"]["selector"]["matchLabels"], "pod-template-hash": pod_hash},
                         "ownerReferences": [owner_reference(item)]},
            "spec": {"replicas": item["spec"]["replicas"], "selector": item["spec"]["selector"],
                     "template": item["spec"]["template"]},
        })
        pods = [self.store.add(self.pods.make(replica_set, f"{replica_set['metadata']['name']}-{name_suffix(f'{name}{i}')}",
                                              item["spec"]["template"], self.next_service_node(),
                                              {"pod-template-hash": pod_hash}))
                for i in range(item["spec"]["replicas"])]
        ready = sum(pod_is_ready(pod) for pod in pods)
        counts = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": 1}
        replica_set["status"] = {**counts, "fullyLabeledReplicas": len(pods)}
        item["status"] = {**counts, "updatedReplicas": len(pods), "conditions": [
            {"type": "Available", "status": "True" if ready == len(pods) else "False",
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.",
             "lastUpdateTime": self.clock.pods_started, "lastTransitionTime": self.clock.pods_started},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": f'ReplicaSet "{replica_set["metadata"]["name"]}" has successfully progressed.',
             "lastUpdateTime": self.clock.pods_started, "lastTransitionTime": self.clock.cluster_created}]}
        self.store.add(controller_event(self.clock, item, "ScalingReplicaSet", "deployment-controller",
                                        f"Scaled up replica set {replica_set['metadata']['name']} to {len(pods)}"))

    def add_statefulset(self, item: dict) -> None:
        name, namespace = item["metadata"]["name"], item["metadata"]["namespace"]
        pods = []
        for index in range(item["spec"]["replicas"]):
            pod = self.pods.make(item, f"{name}-{index}", item["spec"]["template"], self.next_service_node(),
                                 {"statefulset.kubernetes.io/pod-name": f"{name}-{index}",
                                  "apps.kubernetes.io/pod-index": str(index)})
            for claim in item["spec"].get("volumeClaimTemplates", []):
                claim_name = f"{claim['metadata']['name']}-{name}-{index}"
                self.add_bound_claim(namespace, claim_name, claim["spec"])
                pod["spec"].setdefault("volumes", []).append(
                    {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}})
            pods.append(self.store.add(pod))
        ready = sum(pod_is_ready(pod) for pod in pods)
        item["status"] = {"replicas": len(pods), "readyReplicas": ready, "currentReplicas": len(pods),
                          "updatedReplicas": len(pods), "availableReplicas": ready, "observedGeneration": 1}

    def add_bound_claim(self, namespace: str, claim_name: str, claim_spec: dict) -> None:
        """A dynamically provisioned volume, as the EBS CSI driver makes for a StatefulSet's claim."""
        claim_uid = stable_uid("PersistentVolumeClaim", namespace, claim_name)
        volume_name = f"pvc-{claim_uid}"
        size = claim_spec["resources"]["requests"]["storage"]
        self.store.add({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": namespace, "uid": claim_uid,
                         "creationTimestamp": self.clock.cluster_created,
                         "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}},
            "spec": {**claim_spec, "volumeName": volume_name, "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "accessModes": claim_spec["accessModes"], "capacity": {"storage": size}},
        })
        self.store.add({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name, "creationTimestamp": self.clock.cluster_created,
                         "annotations": {"pv.kubernetes.io/provisioned-by": "ebs.csi.aws.com"}},
            "spec": {"capacity": {"storage": size}, "accessModes": claim_spec["accessModes"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": claim_spec["storageClassName"],
                     "volumeMode": "Filesystem",
                     "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": f"vol-{claim_uid.replace('-', '')[:17]}"},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim_name,
                                  "uid": claim_uid}},
            "status": {"phase": "Bound"},
        })

    def add_service(self, item: dict) -> None:
        spec = item["spec"]
        spec.update(clusterIPs=[spec["clusterIP"]], ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack",
                    sessionAffinity="None", internalTrafficPolicy="Cluster")
        item["status"] = {"loadBalancer": {}}

    def add_persistentvolume(self, item: dict) -> None:
        item["status"] = {"phase": "Bound"}

    def add_persistentvolumeclaim(self, item: dict) -> None:
        item["status"] = {"phase": "Bound", "accessModes": item["spec"]["accessModes"],
                          "capacity": {"storage": item["spec"]["resources"]["requests"]["storage"]}}

    def add_job(self, item: dict) -> None:
        name = item["metadata"]["name"]
        controller_uid = item["metadata"]["uid"]
        labels = {"job-name": name, "batch.kubernetes.io/job-name": name, "controller-uid": controller_uid,
                  "batch.kubernetes.io/controller-uid": controller_uid}
        pod = self.pods.make(item, f"{name}-{name_suffix(name)}", item["spec"]["template"], self.next_service_node(),
                             labels)
        set_completed(pod, self.clock)
        self.store.add(pod)
        item["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": controller_uid}}
        item["status"] = {"succeeded": 1, "ready": 0, "startTime": self.clock.pods_started,
                          "completionTime": self.clock.ago(minutes=41), "conditions": [
                              {"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": self.clock.ago(minutes=41),
                               "lastTransitionTime": self.clock.ago(minutes=41)},
                              {"type": "Complete", "status": "True", "lastProbeTime": self.clock.ago(minutes=41),
                               "lastTransitionTime": self.clock.ago(minutes=41)}]}
        self.store.add(controller_event(self.clock, item, "SuccessfulCreate", "job-controller",
                                        f"Created pod: {pod['metadata']['name']}"))
        self.store.add(controller_event(self.clock, item, "Completed", "job-controller", "Job completed"))

    def add_pytorchjob(self, item: dict) -> None:
        """One worker per GPU node; on a sick cluster, the worker on the first sick node crash-loops (OOMKilled)."""
        name = item["metadata"]["name"]
        worker = item["spec"]["pytorchReplicaSpecs"]["Worker"]
        gpu_nodes = [n for n in self.nodes.values() if "nvidia.com/gpu.present" in n["metadata"]["labels"]]
        worker["replicas"] = len(gpu_nodes)
        crashing_node = next((n for n in self.sick_nodes if n in {g["metadata"]["name"] for g in gpu_nodes}),
                             gpu_nodes[0]["metadata"]["name"] if self.sick_nodes and gpu_nodes else None)
        crashing = 0
        for index, node_object in enumerate(gpu_nodes):
            template = worker_template(worker["template"], node_object)
            pod = self.pods.make(item, f"{name}-worker-{index}", template, node_object, {
                "training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": str(index)})
            if node_object["metadata"]["name"] == crashing_node:
                set_crash_looping(pod, self.clock)
                crashing += 1
                self.store.add(pod_event(self.clock, pod, "Warning", "BackOff",
                                         f"Back-off restarting failed container pytorch in pod {pod['metadata']['name']}_"
                                         f"{pod['metadata']['namespace']}({pod['metadata']['uid']})", count=14))
            self.store.add(pod)
            add_pod_start_events(self.store, self.clock, pod)
        item["status"] = {"startTime": self.clock.pods_started,
                          "replicaStatuses": {"Worker": {"active": len(gpu_nodes) - crashing, "failed": crashing}},
                          "conditions": [
                              {"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                               "message": f"PyTorchJob {name} is created.", "lastTransitionTime": self.clock.pods_started},
                              {"type": "Running", "status": "True", "reason": "PyTorchJobRunning",
                               "message": f"PyTorchJob {item['metadata']['namespace']}/{name} is running.",
                               "lastTransitionTime": self.clock.pods_started}]}


def quantity_milli(text: str) -> int:
    """A Kubernetes quantity in thousandths (enough for CPU, memory and device counts here)."""
    suffixes = {"m": 1, "Ki": 1024 * 1000, "Mi": 1024 ** 2 * 1000, "Gi": 1024 ** 3 * 1000, "Ti": 1024 ** 4 * 1000}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text) * 1000


def format_usage(key: str, milli: int) -> str:
    if key.endswith("memory"):
        return f"{milli // 1000 // 1024 ** 3}Gi"
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def fill_quota_usage(quota: dict, store: Store) -> None:
    """What the quota controller would report: the requests of the namespace's running pods, and its claims."""
    namespace = quota["metadata"]["namespace"]
    pods = [p for p in store.objects[BY_KIND["Pod"]]
            if p["metadata"]["namespace"] == namespace and p["status"]["phase"] == "Running"]
    used = {}
    for key in quota["spec"]["hard"]:
        if key == "persistentvolumeclaims":
            claims = [c for c in store.objects[BY_KIND["PersistentVolumeClaim"]] if c["metadata"]["namespace"] == namespace]
            used[key] = str(len(claims))
            continue
        resource = key.removeprefix("requests.").removeprefix("limits.")
        section = "limits" if key.startswith("limits.") else "requests"
        total = sum(quantity_milli(((c.get("resources") or {}).get(section) or {}).get(resource, "0"))
                    for pod in pods for c in pod["spec"]["containers"])
        used[key] = format_usage(key, total)
    quota["status"] = {"hard": dict(quota["spec"]["hard"]), "used": used}
