"""The daemons a sandbox runs for its nodes once they are up: real Slurm (slurm.py) and one sshd per
node (sshd.py). One entry point each way, for control.py.

Both are for Slurm clusters only (HyperPod's EKS nodes are reached through SSM and kubectl, not
SSH), and only up to NODE_DAEMON_LIMIT nodes: each node then runs a slurmd and an sshd, about 5 MB
of memory and 40 ms of start time together, so a 1000-node sandbox would need some 5 GB and its
`sandbox.up` would no longer take under 30 s. Above the limit, status says why they are not running.
"""

from pathlib import Path

from collectors.sandbox.daemons import remove_state_dir
from collectors.sandbox.slurm import start_slurm, stop_slurm
from collectors.sandbox.sshd import start_sshd, stop_sshd

NODE_DAEMON_LIMIT = 128


def start_node_services(root: Path, status: dict) -> dict:
    """Start the nodes' daemons; return the keys to add to the sandbox status ("slurm", "ssh")."""
    if status["type"] != "slurm":
        return {}
    if len(status["nodes"]) > NODE_DAEMON_LIMIT:
        reason = (f"real Slurm and per-node sshd run for clusters of up to {NODE_DAEMON_LIMIT} nodes, "
                  f"not {len(status['nodes'])}")
        return {"slurm": {"running": False, "reason": reason}, "ssh": {"running": False, "reason": reason}}
    return {"slurm": start_slurm(root, status), "ssh": start_sshd(root, status)}


def stop_node_services(root: Path) -> list[int]:
    """Stop every daemon started for the nodes, by host PID; return the PIDs that would not stop.

    Safe to repeat, and safe after a start that failed part-way: only recorded daemons are stopped.
    """
    survivors = stop_sshd(root) + stop_slurm(root)
    if not survivors:
        remove_state_dir(root)
    return survivors
