"""The whole run: learn it, extend the mapping, write the copy beside its private mapping."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from collectors.clean.files import is_tarball, private_file, private_folder, run_files
from collectors.clean.learn import Inventory, learn_file, learn_tarball
from collectors.clean.rewrite import Cleaner, clean_file, clean_tarball
from collectors.clean.standins import MAP_FORMAT, Mapping
from collectors.report.bundles import chunk_size, in_processes

MAP_SUFFIX = ".private-map.json"


@dataclass
class CleanResult:
    copy_dir: Path
    map_path: Path
    counts: dict[str, dict[str, int]]
    files: int
    left_out: list[str]


def clean_run(run_dir: Path, state: dict[str, Any], output: Path, keep: frozenset[str] = frozenset(),
              workers: int = 1) -> CleanResult:
    """Write the run's shareable copy to output/<cluster stand-in>/<run id>, and the private mapping beside it."""
    files = run_files(run_dir)
    tarballs = [path for path in files if is_tarball(path)]
    inventory = Inventory()
    inventory.learn_state(state)
    for path in files:
        if not is_tarball(path):
            inventory.merge(learn_file(path, path.name))
        inventory.learn_text(str(path.relative_to(run_dir)).encode(), path.name)
    for learned in fan_out(learn_tarball, [(path,) for path in tarballs], workers):
        inventory.merge(learned)
    cluster = run_dir.parent.name  # the name the runs folder knows the cluster by (its ARN's last part)
    inventory.add("cluster", cluster)
    mapping = prior_mapping(output, cluster) or Mapping(source_cluster=cluster)
    mapping.extend(inventory, taken={path.name for path in output.glob("*") if path.is_dir()})
    return write_copy(run_dir, files, mapping, output, keep, workers)


def write_copy(run_dir: Path, files: list[Path], mapping: Mapping, output: Path, keep: frozenset[str],
               workers: int) -> CleanResult:
    cleaner = Cleaner(mapping, keep)
    home = output / mapping.cluster_stand_in
    private_folder(home)
    copy_dir = home / run_dir.name
    staging = Path(tempfile.mkdtemp(dir=home, prefix=f".{run_dir.name}."))
    try:
        left_out, jobs = [], []
        for path in files:
            target = staging / cleaner.clean_name(str(path.relative_to(run_dir)))
            private_folder(target.parent)
            if is_tarball(path):
                jobs.append((path, target))
            elif not clean_file(path, target, cleaner):
                left_out.append(target.name)
        written = len(files) - len(left_out)
        cleaned = fan_out(clean_tarball_in_worker, [(path, target, mapping, keep) for path, target in jobs], workers)
        for details, dropped in cleaned:
            cleaner.merge_counts(details)
            left_out += dropped
        map_path = home / f"{run_dir.name}{MAP_SUFFIX}"
        write_private_json(map_path, mapping.as_json(run_dir.name))
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        staging.rename(copy_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CleanResult(copy_dir, map_path, cleaner.counts(), written, left_out)


def clean_tarball_in_worker(source: Path, target: Path, mapping: Mapping, keep: frozenset[str]
                            ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    cleaner = Cleaner(mapping, keep)
    left_out = clean_tarball(source, target, cleaner)
    return cleaner.count_details(), left_out


def fan_out(work: Callable[..., Any], jobs: list[tuple], workers: int) -> list[Any]:
    """Bundles in worker processes when there are many of them; the answers in the jobs' order."""
    if not in_processes(len(jobs), workers):
        return [work(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, *zip(*jobs), chunksize=chunk_size(len(jobs), workers)))


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    with private_file(temporary) as out:
        out.write((json.dumps(doc, indent=1) + "\n").encode())
    temporary.replace(path)


def prior_mapping(output: Path, cluster: str) -> Mapping | None:
    """The mapping of the latest run of the same cluster cleaned into `output`: later runs keep the
    same stand-ins (as sos keeps its default_mapping), so copies of two runs can be compared."""
    for path in sorted(output.glob(f"*/*{MAP_SUFFIX}"), key=lambda p: p.name, reverse=True):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("format") == MAP_FORMAT and doc.get("cluster") == cluster:
            return Mapping.from_json(doc)
    return None
