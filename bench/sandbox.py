"""How long a big sandbox takes to come up and go down, and how much memory it holds meanwhile.

    python bench/sandbox.py [--scenario scenarios/fleet-1000.yaml] [--root DIR]

Brings the scenario up, measures the memory of every process the sandbox started (the AWS server,
the Kubernetes API server or Slurm daemons, each node's unshare, PID 1 and children) and the
machine's "used" memory before and after, then takes it down. Prints one figure per line. Needs
root or unprivileged user namespaces, like the sandbox itself. Timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from collectors.sandbox import Sandbox, SandboxSpec  # noqa: E402  (after the path is set)
from collectors.sandbox.nodes import read_node_records, read_process_record  # noqa: E402


def used_memory_kib() -> int:
    """What `free` calls "used": total - free - buffers - cache (page cache of ROOT's files excluded)."""
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemFree"] - info["Buffers"] - info["Cached"] - info["SReclaimable"]


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def with_descendants(pids: list[int]) -> set[int]:
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children(pid)
    return found


def sandbox_processes(root: Path) -> set[int]:
    """The recorded processes (server, services, nodes' unshare) and everything under them."""
    starts = [record["server"][0] for record in [read_process_record(root)] if record]
    starts += [record["unshare"][0] for record in read_node_records(root).values()]
    for record_dir in (root / "kube", *root.glob("run/**")):
        record = read_process_record(record_dir) if record_dir.is_dir() else None
        starts += [identity[0] for identity in (record or {}).values() if isinstance(identity, list)]
    return with_descendants(starts)


def cpu_seconds(pids: set[int]) -> float:
    """CPU time of `pids` and of the children they waited for (a node's mount, for one)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kib(pids: set[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over `pids`: RSS counts shared pages once per process, PSS shares them out."""
    rss = pss = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        values = {line.split(":")[0]: int(line.split()[1]) for line in rollup}
        rss += values.get("Rss", 0)
        pss += values.get("Pss", 0)
    return rss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(PROJECT / "scenarios" / "fleet-1000.yaml"))
    parser.add_argument("--root", type=Path, help="sandbox folder (default: a new temporary one)")
    arguments = parser.parse_args()
    spec = SandboxSpec.from_scenario(arguments.scenario)
    root = arguments.root or Path(tempfile.mkdtemp(prefix="sandbox-bench-")) / "root"
    sandbox = Sandbox(root)
    load = os.getloadavg()[0]
    before = used_memory_kib()
    own_cpu = own_cpu_seconds()
    began = time.monotonic()
    try:
        status = sandbox.up(spec)
        up_s = time.monotonic() - began
        processes = sandbox_processes(root)
        cpu = cpu_seconds(processes) + own_cpu_seconds() - own_cpu
        rss, pss = memory_kib(processes)
        used = used_memory_kib() - before
    finally:
        began = time.monotonic()
        sandbox.down()
        down_s = time.monotonic() - began
        if not arguments.root:
            root.parent.rmdir()
    print(f"scenario       {Path(arguments.scenario).name}: {len(status['nodes'])} nodes, {status['type']}")
    print(f"load average   {load:.1f} when it began (2 cores; other work on the machine slows every figure)")
    print(f"up             {up_s:.1f} s  (CPU: {cpu:.1f} s in the sandbox's processes and this one)")
    print(f"down           {down_s:.1f} s")
    print(f"processes      {len(processes)}")
    print(f"memory (PSS)   {pss / 1024:.0f} MiB  (RSS summed: {rss / 1024:.0f} MiB)")
    print(f"used memory    +{used / 1024:.0f} MiB  (machine-wide, includes kernel memory for the namespaces)")


if __name__ == "__main__":
    main()
