"""The Kubernetes objects of a run, from its kubectl bundle (`kubectl_resources.tar.gz`).

Only the `-o json` lists of nodes and pods are read: they carry HyperPod's labels, the node
conditions and the pod states the Kubernetes rules look at. Each list is parsed whole (JSON does
not stream with the standard library); it is one file per run, not one per node. The bundle's member names are not
a contract between stages, so members are recognised by their content (`kind`), not their path.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from collectors.report.bundles import READ_ERRORS
from collectors.report.model import KubeState

KUBECTL_BUNDLE = "kubectl_resources.tar.gz"
# Members worth parsing: JSON whose name mentions nodes or pods (not configmaps, events, ...).
WANTED_WORDS = ("node", "pod")


def load_kube(run_dir: Path) -> KubeState | None:
    """None when the run has no kubectl bundle (Slurm clusters, or the kubectl stage did not run)."""
    path = run_dir / KUBECTL_BUNDLE
    if not path.is_file():
        return None
    kube = KubeState()
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and _wanted(member.name):
                    _read_list(kube, member.name, tar.extractfile(member))
                    kube.collected_at = max(kube.collected_at or 0.0, float(member.mtime))
    except READ_ERRORS as exc:
        kube.problems.append(f"{KUBECTL_BUNDLE}: {type(exc).__name__}: {exc}")
    return kube


def _wanted(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(".json") and any(word in base for word in WANTED_WORDS)


def _read_list(kube: KubeState, name: str, raw) -> None:
    try:
        document = json.load(raw)
    except ValueError as exc:
        kube.problems.append(f"{name}: not JSON ({exc})")
        return
    if not isinstance(document, dict):
        return
    # kubectl writes `kind` on every item of a List; a typed NodeList/PodList implies it.
    implied = document.get("kind", "").removesuffix("List")
    items = document.get("items", [document])
    for item in items:
        kind = item.get("kind", implied) if isinstance(item, dict) else None
        if kind in ("Node", "Pod"):
            (kube.nodes if kind == "Node" else kube.pods).append(item)
            kube.sources[kind] = f"{KUBECTL_BUNDLE}:{name}"
