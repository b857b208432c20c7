"""The sandbox's Kubernetes API server: what real kubectl needs, on 127.0.0.1, for EKS sandboxes.

`lifecycle.start_kube(root, status)` starts it as its own process (`python -m collectors.sandbox.kube`,
recorded by PID and start time in ROOT/kube/process.json) and writes ROOT/kube/kubeconfig, whose
cluster, user and context are all named by the EKS cluster's ARN, as `aws eks update-kubeconfig`
names them; `lifecycle.stop_kube(root)` stops it.

The cluster it serves (cluster.py) is built once from the sandbox status (nodes, and each node's
scenario settings: `status`, `fixture`, `kubernetes: {ready, labels}`; docs/scenarios.md) and the
manifests in fixtures/kube/cluster.yaml: nodes named `hyperpod-<instance-id>` with HyperPod's labels
(nodes.py), the pods of every workload placed on those nodes (pods.py), events (events.py), leases,
and the HyperPod/Kubeflow custom resources. HyperPod's node status sets the labels' defaults, as
HyperPod would (a scenario's labels win): DeepHealthCheckInProgress -> Unschedulable with
deep-health-check InProgress, SystemUpdating -> Unschedulable, Failure -> UnschedulablePendingReplacement;
a Pending node has not joined the cluster yet, so it has no Node. A node labelled anything but
Schedulable is cordoned (tainted, unschedulable). When any node is sick (not ready, not Schedulable,
not Running, or a fixture other than healthy), the training job's worker on the first sick GPU node
crash-loops, OOMKilled.

What kubectl gets (api.py): legacy discovery (catalog.py; kubectl falls back to it from aggregated
discovery), list and get with `limit`/`continue` pages, label and field selectors (selectors.py), and
server-side Tables (tables.py: per-kind columns, priority 1 for `-o wide`, rows carrying
PartialObjectMetadata or, with includeObject=Object, the full object). Read only: GET alone, no watch.

Secrets: the sandbox never holds a secret value. A Secret has its key names with empty values; that
is all `kubectl get secret -o json` could ever show here.

Test hooks under /_emu/kube/ (handler.py; loopback only, like everything here): `requests` (GET: every
request seen, DELETE: forget them), `delay` (POST {"path_contains", "seconds"}: answers to matching
paths wait that long, as a hung API server would; seconds 0 disarms).

This package's own import loads nothing: control.py imports only lifecycle.py, which needs no YAML.
"""
