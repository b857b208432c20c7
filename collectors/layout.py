"""One home for what the stages, transports and report agree on about a run: where its files are.

In S3 a run lives under `s3://bucket/<prefix>/<cluster>/<run-id>/` (its *run prefix*), holding the
node script, the summary, the kubectl and cluster bundles, one tarball per node under `instances/`
and one small status object per node under `status/`. The local run folder (state.py) holds the
same names. Nodes are reached by SSM at `sagemaker-cluster:{cluster-id}_{group}-{instance-id}`, and
the node script's exit codes say how it ended (bash/collect.sh).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCRIPT_NAME = "collector_script.sh"
SUMMARY_NAME = "summary.json"
KUBECTL_BUNDLE = "kubectl_resources.tar.gz"
CLUSTER_API_BUNDLE = "cluster_api.tar.gz"
EKS_COLLECTOR_NAME = "eks-log-collector.sh"
INSTANCES = "instances"
STATUS = "status"

SSM_TARGET_PREFIX = "sagemaker-cluster:"

# The node script's exit codes (bash/collect.sh): ok, items failed, upload failed, and another
# collector of the same run already at work on the node. 2 is bad input (errors.EXIT_BAD_INPUT).
NODE_OK, NODE_ITEM_ERRORS, NODE_UPLOAD_FAILED, NODE_ALREADY_RUNNING = 0, 3, 4, 5
NODE_SCRIPT_RAN = (NODE_OK, NODE_ITEM_ERRORS, NODE_UPLOAD_FAILED, NODE_ALREADY_RUNNING)

# The node's own deadline (HPC_DEADLINE_SECONDS) ends this long before the orchestrator stops waiting
# for it: the node may overrun its deadline by its last status report and a short upload floor
# (bash/collect.sh), and its status object must be in S3 before the orchestrator's last look.
NODE_DEADLINE_MARGIN = 60
# The least node budget that leaves a minute to collect and a minute to package and upload
# (bash/lib.sh HPC_FINISH_RESERVE_S).
MIN_NODE_BUDGET = 120


def node_deadline_seconds(node_script_timeout: int) -> int:
    """HPC_DEADLINE_SECONDS for a node the orchestrator waits `node_script_timeout` seconds for."""
    return node_script_timeout - NODE_DEADLINE_MARGIN


def node_stem(node: dict[str, Any]) -> str:
    """`<group>_<instance-id>`: the name of a node's tarball and status object (the group verbatim)."""
    return f"{node['group']}_{node['instance_id']}"


def tarball_name(node: dict[str, Any]) -> str:
    return f"{node_stem(node)}.tar.gz"


def ssm_target(cluster_id: str, node: dict[str, Any]) -> str:
    return f"{SSM_TARGET_PREFIX}{cluster_id}_{node['group']}-{node['instance_id']}"


@dataclass(frozen=True)
class RunLocation:
    """Where one run's objects are in S3: recorded in the state as a plain dict (as_dict)."""

    bucket: str
    prefix: str
    run_prefix: str
    region: str | None = None

    @classmethod
    def for_run(cls, bucket: str, prefix: str, cluster_dir: str, run_id: str,
                region: str | None = None) -> "RunLocation":
        return cls(bucket, prefix, f"{prefix}/{cluster_dir}/{run_id}", region)

    @classmethod
    def from_dict(cls, recorded: dict[str, Any]) -> "RunLocation":
        return cls(recorded["bucket"], recorded["prefix"], recorded["run_prefix"], recorded.get("region"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, name: str) -> str:
        return f"{self.run_prefix}/{name}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def instances_prefix(self) -> str:
        return self.key(f"{INSTANCES}/")

    @property
    def status_prefix(self) -> str:
        return self.key(f"{STATUS}/")

    def tarball_key(self, node: dict[str, Any]) -> str:
        return self.key(f"{INSTANCES}/{tarball_name(node)}")

    def status_key(self, node: dict[str, Any]) -> str:
        return self.key(f"{STATUS}/{node_stem(node)}.json")
