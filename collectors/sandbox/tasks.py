"""The sandbox's tasks (`sandbox.up`, `.down`, `.status`, `.env`) and the demo: the whole job on it."""

from __future__ import annotations

import json as jsonlib
import os
import shlex
from pathlib import Path
from typing import Any

from invoke import Collection, task

from collectors import console, pipeline
from collectors.errors import UsageError
from collectors.sandbox import Sandbox, SandboxSpec, default_root, machine
from collectors.tasks import reports_errors, settings_of

SANDBOX_HELP = {
    "type": "eks or slurm (default eks)",
    "nodes": "how many nodes (default 4, in two instance groups)",
    "scenario": "a scenario file (YAML, see docs/scenarios.md) instead of --type/--nodes",
}


def sandbox_of(ctx) -> Sandbox:
    root = settings_of(ctx).sandbox_dir
    return Sandbox(Path(root) if root else default_root())


# No short flags: -n would mean a node count here and nothing (or a node filter) elsewhere.
@task(help=SANDBOX_HELP, auto_shortflags=False)
@reports_errors
def up(ctx, type=None, nodes=None, scenario=None):
    """Start a local emulated HyperPod cluster (AWS APIs, nodes, sessions) on loopback."""
    status = sandbox_of(ctx).up(sandbox_spec(type, nodes, scenario))
    console.log(f"sandbox up: {status['type']} cluster {status['cluster']} with {len(status['nodes'])} nodes, "
                f"S3 path {status['s3_path']}")
    say_what_does_not_run(status)
    console.log('point your shell at it with: eval "$(invoke sandbox.env)"')


def say_what_does_not_run(status: dict[str, Any]) -> None:
    """A Slurm sandbox without real Slurm or sshd (not installed, too many nodes) says so at once."""
    for name, what in (("slurm", "real Slurm"), ("ssh", "sshd on the nodes")):
        service = status.get(name)
        if service and not service.get("running"):
            console.log(f"sandbox: no {what}: {service.get('reason') or 'not started'}")


@task
@reports_errors
def down(ctx):
    """Stop the sandbox: every process it started, by PID, and remove its files (safe to repeat)."""
    sandbox_of(ctx).down()
    console.log("sandbox down")


@task(help={"json": "print the full status as JSON"}, name="status", auto_shortflags=False)
@reports_errors
def show_status(ctx, json=False):
    """Show the sandbox: cluster, type, S3 path, endpoint and nodes."""
    status = running_sandbox(ctx).status()
    if json:
        console.out(jsonlib.dumps(status, indent=2))
        return
    console.out(f"{status['type']} cluster {status['cluster']} ({status['cluster_arn']})\n"
                f"endpoint {status['endpoint']}  S3 path {status['s3_path']}")
    for node in status["nodes"]:
        console.out(f"  {node['group']:<20} {node['instance_id']:<21} {node['hostname']:<16} {node['status']}")


@task
@reports_errors
def env(ctx):
    """Print `export …` lines; `eval "$(invoke sandbox.env)"` points aws, boto3 and this tool at the sandbox."""
    sandbox = running_sandbox(ctx)
    console.out("unset AWS_PROFILE AWS_SESSION_TOKEN AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    for name, value in sandbox.env().items():
        console.out(f"export {name}={shlex.quote(value)}")


@task(help={**SANDBOX_HELP, "keep": "leave the sandbox running afterwards (take it down with `invoke sandbox.down`)"},
      auto_shortflags=False)
@reports_errors
def demo(ctx, type=None, nodes=None, scenario=None, keep=False):
    """The whole job on a local emulated HyperPod: sandbox up, collect, download, summary, sandbox down."""
    sandbox = sandbox_of(ctx)
    if sandbox.is_up():
        raise UsageError("a sandbox is already up: take it down with `invoke sandbox.down`, or use it directly")
    machine.ensure(machine.SANDBOX_PACKAGES, "demo")  # on a fresh Debian machine as root, nothing else to do
    status = sandbox.up(sandbox_spec(type, nodes, scenario))
    say_what_does_not_run(status)
    try:
        return demo_collect(ctx, sandbox, status)
    finally:
        if keep:
            console.log('sandbox left running: eval "$(invoke sandbox.env)" to use it; invoke sandbox.down to stop it')
        else:
            sandbox.down()


def demo_collect(ctx, sandbox: Sandbox, status: dict[str, Any]) -> int:
    console.log(f"demo: {status['type']} cluster {status['cluster']} with {len(status['nodes'])} nodes on loopback")
    os.environ.update(sandbox.env())
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    settings = settings_of(ctx, cluster=status["cluster"], s3_path=status["s3_path"], region=status["region"])
    settings = settings.with_flags(sandbox=True)
    code = pipeline.collect(settings, {"download": True})
    console.log(f"demo: results are in {settings.runs_dir.resolve() / status['cluster']}/latest/results")
    return code


def running_sandbox(ctx) -> Sandbox:
    sandbox = sandbox_of(ctx)
    if not sandbox.is_up():
        raise UsageError("the sandbox is not up: run `invoke sandbox.up`")
    return sandbox


def sandbox_spec(type: str | None, nodes: str | None, scenario: str | None) -> SandboxSpec:
    if scenario:
        if type is not None or nodes is not None:
            raise UsageError("use either --scenario or --type/--nodes, not both")
        return SandboxSpec.from_scenario(scenario)
    try:
        node_count = int(nodes or 4)
    except ValueError:
        raise UsageError(f"--nodes must be a whole number, got {nodes!r}") from None
    if type not in (None, "eks", "slurm"):
        raise UsageError(f"--type must be eks or slurm, got {type!r}")
    return SandboxSpec.simple(type=type or "eks", nodes=node_count)


collection = Collection("sandbox")
for sandbox_task in (up, down, show_status, env):
    collection.add_task(sandbox_task)
