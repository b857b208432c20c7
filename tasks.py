"""hyperpod-collect: gather diagnostics from every node of a SageMaker HyperPod cluster.

Thin on purpose: parse flags, call a stage or the pipeline, map errors to exit codes
(0 all nodes ok, 1 some nodes failed, 2 bad input, 130 interrupted).
"""

from __future__ import annotations

import functools
import json as jsonlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from invoke import Collection, Exit, task

from collectors import console, pipeline, settings as config
from collectors.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CollectorError, NothingToDo, UsageError
from collectors.nodes import STDIN_MARK, split_names
from collectors.sandbox import Sandbox, SandboxSpec, default_root

PROJECT_DIR = Path(__file__).resolve().parent

COMMON_HELP = {
    "cluster": "HyperPod cluster name or ARN",
    "s3_path": "where to store the run: s3://bucket[/prefix]",
    "region": "AWS region (default: your AWS configuration)",
    "profile": "AWS named profile (default: your AWS configuration)",
    "run_id": "act on this run (YYYYMMDD_HHMMSS) instead of the cluster's latest",
    "instance_groups": "only these instance groups (repeatable or comma-separated; not with --nodes)",
    "nodes": "only these nodes: i-…, hyperpod-i-…, ip-a-b-c-d (repeatable or comma-separated; '-' reads stdin)",
    "command": "extra command to run on every node, in its own output file (repeatable)",
    "max_workers": "most node sessions open at once (default 16)",
    "session_mode": "detached (default: sessions only launch the node script) or attached (wait in the session)",
    "session_client": "direct (default: boto3 StartSession + session-manager-plugin) or cli (aws ssm start-session)",
    "session_rate": "StartSession calls per second at most (default 3; halved whenever AWS throttles)",
    "quiet": "no line per node, only the end result",
    "json": "print JSON on stdout (logs stay on stderr)",
    "kube_context": "kubeconfig context for the kubectl stage (default: the one whose cluster is the EKS cluster)",
    "since": "journal and log window on nodes: 30m, 12h, 3d, 2w, an ISO date/time, or all (default 3d)",
    "file_cap_mb": "per-file cap on nodes in MB; longer files keep their last bytes (default 50)",
    "bundle_cap_mb": "cap on one node's report in MB, before compression (default 2048)",
    "nvidia_bug_report": "run nvidia-bug-report.sh on nodes (the default; slow)",
    "skip_nvidia_bug_report": "do not run nvidia-bug-report.sh on nodes",
    "upload_mode": "presigned (default: curl PUT, nodes need no S3 rights) or awscli (aws s3 cp with the node's role)",
    "redact_pattern": "extra redaction pattern (extended regex) applied on nodes before upload (repeatable)",
    "discovery": "where the nodes come from: auto (default: the API, else the --gateway head node when the API cannot "
                 "be reached over --transport ssh), api, or head-node (sinfo and resource_config.json over SSH)",
    "transport": "how nodes are reached: ssm (default: a Session Manager session per node) or ssh (Fabric)",
    "gateway": "SSH jump host: [user@]host[:port], or controller, an instance id or an ip-a-b-c-d name of the cluster",
    "gateway_via": "how the jump host is reached: ssh (default) or ssm (AWS-StartSSHSession; it must be a node)",
    "ssh_user": "SSH login user (default: ssh config, else yours); another user than root runs the script with sudo -n",
    "ssh_key": "SSH private key file (default: ssh config's IdentityFile, the agent, ~/.ssh/id_*)",
    "ssh_port": "SSH port on the nodes (default: ssh config's Port, else 22)",
    "ssh_config": "ssh_config file to read (default: ~/.ssh/config and /etc/ssh/ssh_config)",
    "ssh_known_hosts": "host keys: strict (default), accept-new (trust new keys, refuse changed ones) or off",
    "ssh_known_hosts_file": "known_hosts file (default: ssh config's UserKnownHostsFile, else ~/.ssh/known_hosts)",
    "ssh_data_path": "s3 (default: nodes use presigned URLs) or sftp (script pushed, tarball pulled back over SSH)",
}
NODE_FLAGS = ("since", "file_cap_mb", "bundle_cap_mb", "nvidia_bug_report", "skip_nvidia_bug_report", "upload_mode",
              "redact_pattern")
SSH_FLAGS = ("transport", "gateway", "gateway_via", "ssh_user", "ssh_key", "ssh_port", "ssh_config", "ssh_known_hosts",
             "ssh_known_hosts_file", "ssh_data_path")


def _help(*names: str, **extra: str) -> dict[str, str]:
    return {**{name: COMMON_HELP[name] for name in names}, **extra}


def reports_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """One clear line and the right exit code for every failure a user can cause or meet."""

    @functools.wraps(body)
    def wrapper(ctx, *args, **kwargs):
        try:
            code = body(ctx, *args, **kwargs)
        except NothingToDo as exc:
            console.log(str(exc))
            return
        except CollectorError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader of our stdout went away (`… | head`): not an error worth a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        except OSError as exc:
            # A path the user gave that is not what it must be (a file where a folder goes, no
            # permission): the stages turn the ones they know into errors of their own; this is the net.
            where = f": {exc.filename}" if exc.filename else ""
            raise Exit(f"error: {exc.strerror or exc}{where}", code=EXIT_BAD_INPUT) from None
        if code:
            raise Exit(code=code)

    return wrapper


def _settings(ctx, **flags: Any) -> config.Settings:
    return config.Settings.from_config(_plain(ctx.config.get(config.CONFIG_KEY)), **flags)


def _plain(value: Any) -> Any:
    """Invoke's DataProxy as plain dicts, for validation."""
    if hasattr(value, "keys"):
        return {key: _plain(value[key]) for key in value.keys()}
    return value


def _options(**options: Any) -> dict[str, Any]:
    if options.get("instance_groups") is not None:
        options["instance_groups"] = _selection("--instance-groups", options["instance_groups"], options)
    if options.get("nodes") is not None:
        options["nodes"] = _selection("--nodes", options["nodes"], options)
    if options.get("nodes") and options.get("instance_groups"):
        raise UsageError("--instance-groups and --nodes cannot be used together")
    return {key: value for key, value in options.items() if value is not None}


def _selection(flag: str, values: list[str], options: dict[str, Any]) -> list[str]:
    """The names a filter flag gives. An empty one never means "everything": in a pipeline that would act
    on the whole fleet when the step before found nothing."""
    names = split_names(values, sys.stdin)
    if names or not values:  # Invoke gives an iterable flag that was left out as []
        return names
    from_stdin = any(value.strip() == STDIN_MARK for value in values)
    if from_stdin and options.get("retry_failed"):
        raise NothingToDo(f"run: nothing to retry ({flag} - read no node names); no node was touched")
    where = "standard input held no names" if from_stdin else "it names nothing"
    raise UsageError(f"{flag} selects nothing ({where}); leave the flag out to select every node")


def _stage(ctx, name: str, *, cluster=None, s3_path=None, region=None, profile=None, max_workers=None,
           session=None, **options: Any) -> int:
    settings = _settings(ctx, cluster=cluster, s3_path=s3_path, region=region, profile=profile,
                         max_workers=max_workers, **(session or {}))
    return pipeline.run_stage(name, settings, _options(**options))


def _node_flags(since=None, file_cap_mb=None, bundle_cap_mb=None, nvidia_bug_report=False,
                skip_nvidia_bug_report=False, upload_mode=None, redact_pattern=None) -> dict[str, Any]:
    """Node-side settings from flags (None: not given, the configuration decides)."""
    if nvidia_bug_report and skip_nvidia_bug_report:
        raise UsageError("--nvidia-bug-report and --skip-nvidia-bug-report cannot be used together")
    bug_report = True if nvidia_bug_report else False if skip_nvidia_bug_report else None
    return {"since": since, "file_cap_mb": file_cap_mb, "bundle_cap_mb": bundle_cap_mb,
            "nvidia_bug_report": bug_report, "upload_mode": upload_mode, "redact_patterns": redact_pattern or None}


# -- the job ---------------------------------------------------------------------------------

@task(iterable=["instance_groups", "nodes", "command", "redact_pattern"], auto_shortflags=False,
      help=_help("cluster", "s3_path", "region", "profile", "instance_groups", "nodes", "command", "max_workers",
                 "session_mode", "session_client", "session_rate", "quiet", *NODE_FLAGS, "kube_context", "discovery",
                 *SSH_FLAGS,
                 download="download the node tarballs and report on them when collection ends (default: yes)"))
@reports_errors
def collect(ctx, cluster=None, s3_path=None, region=None, profile=None, instance_groups=None, nodes=None,
            command=None, max_workers=None, session_mode=None, session_client=None, session_rate=None, quiet=False,
            download=True, since=None, file_cap_mb=None, bundle_cap_mb=None, nvidia_bug_report=False,
            skip_nvidia_bug_report=False, upload_mode=None, redact_pattern=None, kube_context=None,
            discovery=None, transport=None, gateway=None, gateway_via=None, ssh_user=None, ssh_key=None,
            ssh_port=None, ssh_config=None, ssh_known_hosts=None, ssh_known_hosts_file=None, ssh_data_path=None):
    """Collect diagnostics from every node: discover, render, upload, cluster, kubectl, run, summarize, download,
    report."""
    settings = _settings(ctx, cluster=cluster, s3_path=s3_path, region=region, profile=profile,
                         max_workers=max_workers, kube_context=kube_context, discovery=discovery,
                         **_session_flags(session_mode, session_client, session_rate),
                         **_ssh_flags(transport, gateway, gateway_via, ssh_user, ssh_key, ssh_port,
                                      ssh_config, ssh_known_hosts, ssh_known_hosts_file, ssh_data_path),
                         **_node_flags(since, file_cap_mb, bundle_cap_mb, nvidia_bug_report, skip_nvidia_bug_report,
                                       upload_mode, redact_pattern))
    return pipeline.collect(settings, _options(instance_groups=instance_groups, nodes=nodes, commands=command,
                                               download=download, quiet=quiet))


@task(iterable=["instance_groups", "nodes"], auto_shortflags=False,
      help=_help("cluster", "region", "profile", "run_id", "instance_groups", "nodes", "max_workers", "json",
                 "discovery", *SSH_FLAGS, run_id="refresh the nodes of this run instead of starting a new one"))
@reports_errors
def discover(ctx, cluster=None, region=None, profile=None, run_id=None, instance_groups=None, nodes=None,
             max_workers=None, json=False, discovery=None, transport=None, gateway=None, gateway_via=None,
             ssh_user=None, ssh_key=None, ssh_port=None, ssh_config=None, ssh_known_hosts=None,
             ssh_known_hosts_file=None, ssh_data_path=None):
    """Start a run: describe the cluster, list its nodes (all pages) and select the ones to collect."""
    return _stage(ctx, "discover", cluster=cluster, region=region, profile=profile, max_workers=max_workers,
                  session={"discovery": discovery,
                           **_ssh_flags(transport, gateway, gateway_via, ssh_user, ssh_key, ssh_port,
                                        ssh_config, ssh_known_hosts, ssh_known_hosts_file, ssh_data_path)},
                  run_id=run_id, instance_groups=instance_groups, nodes=nodes, json=json)


@task(iterable=["command", "redact_pattern"], help=_help("cluster", "s3_path", "run_id", "command", *NODE_FLAGS))
@reports_errors
def render(ctx, cluster=None, s3_path=None, run_id=None, command=None, since=None, file_cap_mb=None,
           bundle_cap_mb=None, nvidia_bug_report=False, skip_nvidia_bug_report=False, upload_mode=None,
           redact_pattern=None):
    """Compose the node script (bash/) into the run's collector_script.sh, with the run's node options."""
    node_flags = _node_flags(since, file_cap_mb, bundle_cap_mb, nvidia_bug_report, skip_nvidia_bug_report,
                             upload_mode, redact_pattern)
    return _stage(ctx, "render", cluster=cluster, s3_path=s3_path, run_id=run_id, commands=command or None,
                  session=node_flags)


@task(help=_help("cluster", "s3_path", "region", "profile", "run_id"))
@reports_errors
def upload(ctx, cluster=None, s3_path=None, region=None, profile=None, run_id=None):
    """Put the run's collector_script.sh under the run's S3 prefix."""
    return _stage(ctx, "upload", cluster=cluster, s3_path=s3_path, region=region, profile=profile, run_id=run_id)


@task(help=_help("cluster", "region", "profile", "run_id", "kube_context"))
@reports_errors
def kubectl(ctx, cluster=None, region=None, profile=None, run_id=None, kube_context=None):
    """Collect the cluster's Kubernetes state (EKS clusters) into kubectl_resources.tar.gz, locally and in S3."""
    return _stage(ctx, "kubectl", cluster=cluster, region=region, profile=profile, run_id=run_id,
                  session={"kube_context": kube_context})


@task(help=_help("cluster", "region", "profile", "run_id"))
@reports_errors
def cluster(ctx, cluster=None, region=None, profile=None, run_id=None):
    """Collect what HyperPod recorded (cluster, nodes, events, CloudWatch logs) into cluster_api.tar.gz."""
    return _stage(ctx, "cluster", cluster=cluster, region=region, profile=profile, run_id=run_id)


@task(name="run", iterable=["nodes"], auto_shortflags=False,
      help=_help("cluster", "region", "profile", "run_id", "nodes", "max_workers", "session_mode", "session_client",
                 "session_rate", "quiet", "json", *SSH_FLAGS,
                 nodes="only these nodes of the run: i-…, hyperpod-i-…, ip-a-b-c-d ('-' reads stdin)",
                 retry_failed="also collect again the nodes that failed, timed out or were unreachable",
                 json="one JSON line per node outcome on stdout"))
@reports_errors
def run_nodes(ctx, cluster=None, region=None, profile=None, run_id=None, nodes=None, max_workers=None,
              session_mode=None, session_client=None, session_rate=None, retry_failed=False, quiet=False, json=False,
              transport=None, gateway=None, gateway_via=None, ssh_user=None, ssh_key=None, ssh_port=None,
              ssh_config=None, ssh_known_hosts=None, ssh_known_hosts_file=None, ssh_data_path=None):
    """Collect from the run's nodes that have not finished (one session per node, paced)."""
    return _stage(ctx, "run", cluster=cluster, region=region, profile=profile, max_workers=max_workers,
                  session={**_session_flags(session_mode, session_client, session_rate),
                           **_ssh_flags(transport, gateway, gateway_via, ssh_user, ssh_key, ssh_port,
                                         ssh_config, ssh_known_hosts, ssh_known_hosts_file, ssh_data_path)},
                  run_id=run_id, nodes=nodes, retry_failed=retry_failed, quiet=quiet, json=json)


def _session_flags(mode, client, rate) -> dict[str, Any]:
    return {"session_mode": mode, "session_client": client, "session_rate": rate}


def _ssh_flags(transport, gateway, gateway_via, ssh_user, ssh_key, ssh_port, ssh_config, ssh_known_hosts,
               ssh_known_hosts_file, ssh_data_path) -> dict[str, Any]:
    """SSH transport settings from flags (None: not given, the configuration decides)."""
    return {"transport": transport, "ssh_gateway": gateway, "ssh_gateway_via": gateway_via, "ssh_user": ssh_user,
            "ssh_key": ssh_key, "ssh_port": ssh_port, "ssh_config": ssh_config, "ssh_known_hosts": ssh_known_hosts,
            "ssh_known_hosts_file": ssh_known_hosts_file, "ssh_data_path": ssh_data_path}


@task(help=_help("cluster", "region", "profile", "run_id", "json"))
@reports_errors
def summarize(ctx, cluster=None, region=None, profile=None, run_id=None, json=False):
    """Write summary.json (locally and in S3) and show who succeeded; exit 1 if any node failed."""
    return _stage(ctx, "summarize", cluster=cluster, region=region, profile=profile, run_id=run_id, json=json)


@task(help=_help("cluster", "region", "profile", "run_id", "max_workers"))
@reports_errors
def download(ctx, cluster=None, region=None, profile=None, run_id=None, max_workers=None):
    """Download every node tarball of the run into runs/<cluster>/<run-id>/results/, verified."""
    return _stage(ctx, "download", cluster=cluster, region=region, profile=profile, run_id=run_id,
                  max_workers=max_workers)


@task(help=_help("cluster", "run_id",
                 run_id="report on this downloaded run (YYYYMMDD_HHMMSS) instead of the cluster's latest",
                 against="also show what changed since this earlier run of the cluster: new and cleared findings, "
                         "counters that grew",
                 json="print findings.json on stdout instead of the summary (logs stay on stderr)"))
@reports_errors
def report(ctx, cluster=None, run_id=None, against=None, json=False):
    """Tell what is wrong across the fleet: the signature catalog over the run's downloaded bundles.

    Writes findings.json, report.md and report.html (one self-contained file) into the run folder
    and prints the summary: cluster state, then findings by severity with their nodes folded.
    Works offline; exit 0 whenever a report is made, 2 when the run is missing or not downloaded.
    """
    return _stage(ctx, "report", cluster=cluster, run_id=run_id, against=against, json=json)


@task(iterable=["keep"],
      help=_help("cluster", "run_id", run_id="clean this downloaded run (YYYYMMDD_HHMMSS) instead of the cluster's latest",
                 keep="leave these as they are: instance-ids (AWS Support needs them)",
                 output="folder for the copies (default: <runs_dir>-shareable, beside the runs folder)"))
@reports_errors
def clean(ctx, cluster=None, run_id=None, keep=None, output=None):
    """Write a copy of a run to share: host names, IP and MAC addresses, account ids, user names and the cluster's
    names replaced by stand-ins, the same everywhere, with the private mapping beside it (0600). Works offline."""
    return _stage(ctx, "clean", cluster=cluster, run_id=run_id, keep=keep or None, output=output)


# -- the sandbox and the demo ----------------------------------------------------------------

def _sandbox(ctx) -> Sandbox:
    root = _settings(ctx).sandbox_dir
    return Sandbox(Path(root) if root else default_root())


SANDBOX_HELP = {
    "type": "eks or slurm (default eks)",
    "nodes": "how many nodes (default 4, in two instance groups)",
    "scenario": "a scenario file (YAML, see docs/scenarios.md) instead of --type/--nodes",
}


@task(help=SANDBOX_HELP)
@reports_errors
def sandbox_up(ctx, type=None, nodes=None, scenario=None):
    """Start a local emulated HyperPod cluster (AWS APIs, nodes, sessions) on loopback."""
    status = _sandbox(ctx).up(_sandbox_spec(type, nodes, scenario))
    console.log(f"sandbox up: {status['type']} cluster {status['cluster']} with {len(status['nodes'])} nodes, "
                f"S3 path {status['s3_path']}")
    console.log('point your shell at it with: eval "$(invoke sandbox.env)"')


@task
@reports_errors
def sandbox_down(ctx):
    """Stop the sandbox: every process it started, by PID, and remove its files (safe to repeat)."""
    _sandbox(ctx).down()
    console.log("sandbox down")


@task(help={"json": "print the full status as JSON"})
@reports_errors
def sandbox_status(ctx, json=False):
    """Show the sandbox: cluster, type, S3 path, endpoint and nodes."""
    sandbox = _sandbox(ctx)
    if not sandbox.is_up():
        raise UsageError("the sandbox is not up: run `invoke sandbox.up`")
    status = sandbox.status()
    if json:
        console.out(jsonlib.dumps(status, indent=2))
        return
    console.out(f"{status['type']} cluster {status['cluster']} ({status['cluster_arn']})\n"
                f"endpoint {status['endpoint']}  S3 path {status['s3_path']}")
    for node in status["nodes"]:
        console.out(f"  {node['group']:<20} {node['instance_id']:<21} {node['hostname']:<16} {node['status']}")


@task
@reports_errors
def sandbox_env(ctx):
    """Print `export …` lines; `eval "$(invoke sandbox.env)"` points aws, boto3 and this tool at the sandbox."""
    sandbox = _sandbox(ctx)
    if not sandbox.is_up():
        raise UsageError("the sandbox is not up: run `invoke sandbox.up`")
    console.out("unset AWS_PROFILE AWS_SESSION_TOKEN AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    for name, value in sandbox.env().items():
        console.out(f"export {name}={shlex.quote(value)}")


@task(help={**SANDBOX_HELP, "keep": "leave the sandbox running afterwards (take it down with `invoke sandbox.down`)"})
@reports_errors
def demo(ctx, type=None, nodes=None, scenario=None, keep=False):
    """The whole job on a local emulated HyperPod: sandbox up, collect, download, summary, sandbox down."""
    sandbox = _sandbox(ctx)
    if sandbox.is_up():
        raise UsageError("a sandbox is already up: take it down with `invoke sandbox.down`, or use it directly")
    status = sandbox.up(_sandbox_spec(type, nodes, scenario))
    try:
        return _demo_collect(ctx, sandbox, status)
    finally:
        if keep:
            console.log('sandbox left running: eval "$(invoke sandbox.env)" to use it; invoke sandbox.down to stop it')
        else:
            sandbox.down()


def _demo_collect(ctx, sandbox: Sandbox, status: dict[str, Any]) -> int:
    console.log(f"demo: {status['type']} cluster {status['cluster']} with {len(status['nodes'])} nodes on loopback")
    os.environ.update(sandbox.env())
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    settings = _settings(ctx, cluster=status["cluster"], s3_path=status["s3_path"], region=status["region"])
    settings = settings.with_flags(sandbox=True)
    code = pipeline.collect(settings, {"download": True})
    console.log(f"demo: results are in {settings.runs_dir.resolve() / status['cluster']}/latest/results")
    return code


def _sandbox_spec(type: str | None, nodes: str | None, scenario: str | None) -> SandboxSpec:
    if scenario:
        if type is not None or nodes is not None:
            raise UsageError("use either --scenario or --type/--nodes, not both")
        return SandboxSpec.from_scenario(scenario)
    try:
        node_count = int(nodes or 4)
    except ValueError:
        raise UsageError(f"--nodes must be a whole number, got {nodes!r}") from None
    return SandboxSpec.simple(type=_cluster_type(type or "eks"), nodes=node_count)


def _cluster_type(value: str) -> str:
    if value not in ("eks", "slurm"):
        raise UsageError(f"--type must be eks or slurm, got {value!r}")
    return value


# -- development -------------------------------------------------------------------------------

@task(help={"args": "extra pytest arguments, e.g. \"-k discover -x\""})
def test(ctx, args=""):
    """Run the whole test suite (unit, bash, integration against the sandbox)."""
    result = subprocess.run([sys.executable, "-m", "pytest", *shlex.split(args)], cwd=PROJECT_DIR)
    if result.returncode:
        raise Exit(code=result.returncode)


def _check_environment() -> None:
    try:
        config.check_environment(os.environ)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


_check_environment()
sandbox = Collection("sandbox")
sandbox.add_task(sandbox_up, name="up")
sandbox.add_task(sandbox_down, name="down")
sandbox.add_task(sandbox_status, name="status")
sandbox.add_task(sandbox_env, name="env")
ns = Collection(collect, discover, render, upload, cluster, kubectl, run_nodes, summarize, download, report, clean,
                demo, test, sandbox)
ns.configure({config.CONFIG_KEY: config.config_tree()})
