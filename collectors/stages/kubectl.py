"""kubectl: the cluster's Kubernetes state (EKS only).

Not built yet: this stage says so plainly and records it, instead of pretending.
"""

from __future__ import annotations

from collectors import console
from collectors.context import StageContext

NOT_BUILT = ("kubectl: not implemented yet in this version of hyperpod-collect; "
             "Kubernetes state (nodes, pods, events) was NOT collected for this run")


def execute(ctx: StageContext) -> None:
    state = ctx.state
    state.require_stage("discover", "kubectl")
    if state.cluster["type"] != "eks":
        console.log("kubectl: not an EKS cluster; nothing to do")
        state.mark_stage("kubectl", "not_applicable")
        return
    console.log(NOT_BUILT)
    state.mark_stage("kubectl", "not_implemented", note=NOT_BUILT)
