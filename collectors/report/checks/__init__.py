"""The catalog's `test:` rules: checks a regex alone cannot express, one module per family, and the
registry below, where every name catalog.yaml's `test:` may give is looked up.

Node tests (base.NodeTest) read the lines of their files in one bundle (`feed`, then `finish`). The
other tests look at the whole run (`RunView`): the state file, every bundle's facts, the Kubernetes
objects, HyperPod's own record. Each returns Hits; the engine turns them into findings exactly as it
does pattern matches.
"""

from __future__ import annotations

from typing import Any

from collectors.report.checks import cluster_api, fleet, kube, state
from collectors.report.checks.base import NodeTest
from collectors.report.checks.devices import EfaCounterDelta, PcieWidth
from collectors.report.checks.gpu import DcgmHealth, SmiFlag, SmiPcie, SmiThrottle
from collectors.report.checks.services import FailedUnits
from collectors.report.checks.slurm import SlurmNotResponding, SlurmReasons, SlurmStates

NODE_TESTS: dict[str, type[NodeTest]] = {
    "pcie_width": PcieWidth,
    "efa_counter_delta": EfaCounterDelta,
    "slurm_reasons": SlurmReasons,
    "slurm_not_responding": SlurmNotResponding,
    "slurm_states": SlurmStates,
    "smi_flag": SmiFlag,
    "smi_throttle": SmiThrottle,
    "smi_pcie": SmiPcie,
    "failed_units": FailedUnits,
    "dcgm_health": DcgmHealth,
}

# Tests by source; node tests are classes fed lines, the others functions of (rule, RunView).
TESTS: dict[str, dict[str, Any]] = {
    "node": NODE_TESTS,
    "state": {"hyperpod_status": state.hyperpod_status, "collection_status": state.collection_status,
              "bundle_missing": state.bundle_missing},
    "kubectl": {"hyperpod_labels": kube.hyperpod_labels, "node_conditions": kube.node_conditions,
                "pod_states": kube.pod_states},
    "fleet": {"majority": fleet.majority, "expected_count": fleet.expected_count},
    "cluster_api": {"node_events": cluster_api.node_events, "lifecycle_failures": cluster_api.lifecycle_failures,
                    "agent_detections": cluster_api.agent_detections},
}
