"""kubectl: the cluster's Kubernetes state (EKS only), complete and queryable offline.

Preflight first: kubectl is on PATH; the kubeconfig context is the one whose cluster entry is the
EKS cluster of DescribeCluster, exactly (its ARN, as `aws eks update-kubeconfig` names it, or its
name), unless `--kube-context` names one; in sandbox mode that context must point at loopback and use
no credential plugin; and the API server answers (`kubectl api-resources`, which also tells which
HyperPod/Kubeflow custom resources exist). A failed check is recorded with what to do about it, and
the stage returns 1, so node collection goes on and the run's exit code still says so.

Then every resource type three ways (`get -o wide`, `describe`, `get -o json`), the nodes once more
with HyperPod's health labels as columns, commands in parallel (at most `kubectl_workers`), each
under its own timeout (`timeouts.kubectl`), the slowest started first. Output goes straight to files,
never through memory, so nothing is cut short unless a command times out, and then the manifest and
the console say so. Everything is packed into `kubectl_resources.tar.gz` (with `manifest.tsv`: file,
rc, seconds, bytes, timed_out, command) in the run folder and under the run's S3 prefix.

Secrets: only what the API server's Table for `kubectl get secrets -o wide` carries: namespace, name,
type and the NUMBER of keys. Their key names cannot be had without fetching their values (the API
returns both or neither), so they are not collected, and no request that returns values (`describe`,
`-o json/yaml/name`, custom columns) is ever made for secrets. `secrets.json` is built here from that
table, for offline queries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectors import buckets, console
from collectors.context import StageContext
from collectors.layout import KUBECTL_BUNDLE
from collectors.loopback import is_loopback_url
from collectors.state import utc_now

TARBALL = KUBECTL_BUNDLE
TOP_FOLDER = "kubectl_resources"
MANIFEST = "manifest.tsv"
PREFLIGHT_TIMEOUT_S = 30
HYPERPOD_LABELS = (
    "sagemaker.amazonaws.com/node-health-status",
    "sagemaker.amazonaws.com/deep-health-check-status",
    "sagemaker.amazonaws.com/fault-type",
    "sagemaker.amazonaws.com/fault-reason",
)
# Built-in resource types, roughly slowest first: on a big cluster `describe pods` dominates.
BUILTIN_RESOURCES = (
    "pods", "events", "nodes", "configmaps", "services", "persistentvolumeclaims", "persistentvolumes",
    "deployments", "statefulsets", "daemonsets", "jobs", "secrets", "resourcequotas", "networkpolicies",
    "namespaces",
)
# API groups whose resources are HyperPod's or Kubeflow's (training jobs, health checks, task governance).
CUSTOM_RESOURCE_GROUPS = ("kubeflow.org", "sagemaker.amazonaws.com", "sagemaker.aws.amazon.com", "kueue.x-k8s.io")
FORM_ORDER = {"describe": 0, "json": 1, "wide": 2, "labels": 3}
API_DOWN_SIGNS = ("unable to connect", "connection refused", "i/o timeout", "no such host", "timeout",
                  "deadline exceeded", "eof", "network is unreachable")
CREDENTIAL_SIGNS = ("unauthorized", "must be logged in", "provide credentials", "getting credentials", "exec plugin",
                    "expired")


class PreflightError(Exception):
    """A check before collection failed; the message says what to do."""


@dataclass(frozen=True)
class Command:
    resource: str
    form: str  # wide | describe | json | labels
    args: tuple[str, ...]

    @property
    def file(self) -> str:
        suffix = {"wide": "wide.txt", "describe": "describe.txt", "json": "json", "labels": "hyperpod-labels.txt"}
        return f"{self.resource}.{suffix[self.form]}"

    def text(self) -> str:
        return "kubectl " + " ".join(self.args)


@dataclass
class Outcome:
    command: Command
    rc: int | None  # None: killed at the timeout, or never started (cancelled)
    seconds: float
    bytes: int
    timed_out: bool
    error: str


# ---------------------------------------------------------------------------------------------
# The stage


def execute(ctx: StageContext) -> int:
    state = ctx.state
    state.require_stage("discover", "kubectl")
    if state.cluster["type"] != "eks":
        console.log("kubectl: not an EKS cluster; nothing to do")
        state.mark_stage("kubectl", "not_applicable")
        return 0
    started = time.monotonic()
    # Staged in the run folder, not /tmp: a big cluster's output is hundreds of MB before packing.
    with tempfile.TemporaryDirectory(prefix=".kubectl-", dir=state.run_dir) as scratch:
        try:
            target = preflight(ctx, Path(scratch) / "cache")
        except PreflightError as problem:
            return record_failure(ctx, str(problem))
        return collect(ctx, target, Path(scratch), started)


def record_failure(ctx: StageContext, message: str) -> int:
    console.log(f"kubectl: FAILED, Kubernetes state not collected: {message}")
    ctx.state.mark_stage("kubectl", "failed", error=message)
    return 1


def collect(ctx: StageContext, target: "Target", scratch: Path, stage_started: float) -> int:
    folder = scratch / TOP_FOLDER
    folder.mkdir()
    commands = plan(target.custom_resources)
    console.log(f"kubectl: context {target.context} ({target.server}): {len(commands)} commands, "
                f"{ctx.settings.kubectl_workers} at a time, {ctx.settings.timeouts.kubectl} s each at most")
    started = time.monotonic()
    outcomes = run_all(ctx, target, commands, folder)
    timing = {"wall_seconds": round(time.monotonic() - started, 2),
              "command_seconds": round(sum(o.seconds for o in outcomes), 2)}
    write_secrets_json(folder)
    write_manifest(folder, outcomes)
    tarball = ctx.state.run_dir / TARBALL
    pack(folder, tarball)
    s3_uri, upload_error = buckets.store_run_file(ctx.aws, ctx.state, tarball, TARBALL, "application/gzip")
    timing["stage_seconds"] = round(time.monotonic() - stage_started, 2)
    report(outcomes, timing, tarball, s3_uri)
    return record_outcomes(ctx, outcomes, timing, tarball, s3_uri, upload_error)


# ---------------------------------------------------------------------------------------------
# Preflight


@dataclass
class Target:
    kubectl: str
    context: str
    server: str
    cache_dir: Path
    custom_resources: list[str]

    def argv(self, *args: str) -> list[str]:
        # Our own discovery cache per run: a stale one (hours old) would hide custom resources installed since.
        return [self.kubectl, "--context", self.context, "--cache-dir", str(self.cache_dir), *args]


def preflight(ctx: StageContext, cache_dir: Path) -> Target:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise PreflightError("kubectl is not on PATH. Install it (https://kubernetes.io/docs/tasks/tools/, a version "
                             f"within one minor of the cluster's), then run: {rerun_command(ctx)}")
    config = kubeconfig_view(kubectl)
    context = choose_context(config, ctx.state.cluster, ctx.settings.kube_context)
    cluster, user = context_entries(config, context)
    if ctx.settings.sandbox:
        check_sandbox_context(context, cluster, user)
    target = Target(kubectl, context, cluster["server"], cache_dir, [])
    target.custom_resources = discover_custom_resources(ctx, target)
    return target


def rerun_command(ctx: StageContext) -> str:
    state = ctx.state
    return f"invoke kubectl --cluster {state.cluster['name']} --run-id {state.run_id}"


def update_kubeconfig_command(cluster: dict[str, Any]) -> str:
    arn = cluster["eks_cluster_arn"]
    region = arn.split(":")[3] if arn.count(":") >= 5 else cluster.get("region")
    return f"aws eks update-kubeconfig --name {cluster['eks_cluster_name']} --region {region}"


def kubeconfig_view(kubectl: str) -> dict[str, Any]:
    """The merged kubeconfig as kubectl sees it; without --raw, so credentials come back redacted."""
    try:
        result = subprocess.run([kubectl, "config", "view", "-o", "json"], capture_output=True, text=True,
                                timeout=PREFLIGHT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"{kubectl} does not run ({exc}); reinstall kubectl") from None
    if result.returncode != 0:
        raise PreflightError(f"kubectl cannot read your kubeconfig: {last_line(result.stderr)}. Fix the file named "
                             "by KUBECONFIG (or ~/.kube/config)")
    return json.loads(result.stdout or "{}")


def context_cluster(config: dict[str, Any], context: str) -> str:
    entry = next((c for c in config.get("contexts") or [] if c.get("name") == context), {})
    return (entry.get("context") or {}).get("cluster", "")


def matching_contexts(config: dict[str, Any], eks_arn: str, eks_name: str) -> list[str]:
    """Contexts whose cluster entry IS the EKS cluster: its ARN or its name, exactly (never a substring)."""
    return [c["name"] for c in config.get("contexts") or [] if context_cluster(config, c["name"]) in (eks_arn, eks_name)]


def choose_context(config: dict[str, Any], cluster: dict[str, Any], requested: str | None) -> str:
    known = [c["name"] for c in config.get("contexts") or []]
    if requested:
        if requested not in known:
            raise PreflightError(f"kube context {requested!r} is not in your kubeconfig (contexts: "
                                 f"{', '.join(known) or 'none'}); pass one of them with --kube-context, or create it "
                                 f"with: {update_kubeconfig_command(cluster)}")
        return requested
    matches = matching_contexts(config, cluster["eks_cluster_arn"], cluster["eks_cluster_name"])
    current = config.get("current-context") or ""
    if current in matches:
        return current
    if matches:
        return matches[0]
    where = (f"the current context {current!r} points at cluster {context_cluster(config, current)!r}" if current
             else "your kubeconfig has no current context")
    raise PreflightError(f"no kubeconfig context points at EKS cluster {cluster['eks_cluster_arn']} ({where}). "
                         f"Run: {update_kubeconfig_command(cluster)} (or pass --kube-context NAME)")


def context_entries(config: dict[str, Any], context: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The context's cluster entry (it has a server) and user entry."""
    entry = next(c for c in config.get("contexts") or [] if c["name"] == context).get("context") or {}
    cluster = next((c.get("cluster") or {} for c in config.get("clusters") or [] if c["name"] == entry.get("cluster")),
                   {})
    user = next((u.get("user") or {} for u in config.get("users") or [] if u["name"] == entry.get("user")), {})
    if not cluster.get("server"):
        raise PreflightError(f"kube context {context!r} names cluster {entry.get('cluster')!r}, which has no server "
                             "in your kubeconfig; recreate the entry with aws eks update-kubeconfig")
    return cluster, user


def check_sandbox_context(context: str, cluster: dict[str, Any], user: dict[str, Any]) -> None:
    """The sandbox's cluster is on loopback and needs no credentials; anything else could reach a real one."""
    for address in (cluster["server"], cluster.get("proxy-url")):
        if address and not is_loopback_url(address):
            raise PreflightError(f"sandbox mode: kube context {context!r} goes to {address}, not to loopback; "
                                 'run `eval "$(invoke sandbox.env)"` to use the sandbox\'s kubeconfig')
    if "exec" in user or "auth-provider" in user:
        raise PreflightError(f"sandbox mode: kube context {context!r} runs a credential plugin; the sandbox's "
                             "kubeconfig needs none (run `eval \"$(invoke sandbox.env)\"`)")


def discover_custom_resources(ctx: StageContext, target: Target) -> list[str]:
    """`kubectl api-resources`: proves the API server answers, and lists the custom resources to collect."""
    argv = target.argv("--request-timeout", f"{PREFLIGHT_TIMEOUT_S}s", "api-resources", "--verbs=list", "-o", "name")
    timeout = min(ctx.settings.timeouts.kubectl, PREFLIGHT_TIMEOUT_S) + 5
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PreflightError(api_down_message(ctx, target, f"no answer in {timeout} s")) from None
    except OSError as exc:
        raise PreflightError(f"{target.kubectl} does not run ({exc}); reinstall kubectl") from None
    names = result.stdout.split()
    # Some aggregated API (say metrics-server) being down makes kubectl exit 1 with the rest listed: carry on.
    if result.returncode != 0 and not ("unable to retrieve the complete list" in result.stderr and names):
        raise PreflightError(api_error_message(ctx, target, result.stderr))
    if result.returncode != 0:
        console.log(f"kubectl: warning: {last_line(result.stderr)}")
    return sorted(name for name in names if is_custom_resource(name))


def is_custom_resource(name: str) -> bool:
    group = name.partition(".")[2]
    return any(group == wanted or group.endswith("." + wanted) for wanted in CUSTOM_RESOURCE_GROUPS)


def api_error_message(ctx: StageContext, target: Target, stderr: str) -> str:
    lowered = stderr.lower()
    if any(sign in lowered for sign in CREDENTIAL_SIGNS):
        cluster = ctx.state.cluster
        return (f"the API server of context {target.context!r} refused your credentials ({last_line(stderr)}). "
                "Check that `aws sts get-caller-identity` shows the identity you expect and that it has an EKS "
                f"access entry (aws eks list-access-entries --cluster-name {cluster['eks_cluster_name']}); "
                f"refresh the kubeconfig with: {update_kubeconfig_command(cluster)}; then run: {rerun_command(ctx)}")
    if "forbidden" in lowered:
        return (f"your identity may not list API resources on context {target.context!r} ({last_line(stderr)}); "
                "give it a view policy (README: RBAC for the kubectl stage), then run: " + rerun_command(ctx))
    if any(sign in lowered for sign in API_DOWN_SIGNS):
        return api_down_message(ctx, target, last_line(stderr))
    return f"kubectl api-resources failed on context {target.context!r}: {last_line(stderr)}; then run: " \
           f"{rerun_command(ctx)}"


def api_down_message(ctx: StageContext, target: Target, detail: str) -> str:
    return (f"the Kubernetes API server of context {target.context!r} at {target.server} does not answer ({detail}). "
            "Check that the EKS cluster is ACTIVE and that its endpoint is reachable from this machine (a private "
            "endpoint needs this machine inside the VPC, or public access enabled), then run: " + rerun_command(ctx))


def last_line(text: str) -> str:
    """kubectl prints its error last, after any warnings."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error text"


# ---------------------------------------------------------------------------------------------
# The commands


def plan(custom_resources: list[str]) -> list[Command]:
    commands = []
    for resource in list(BUILTIN_RESOURCES) + custom_resources:
        commands.append(Command(resource, "wide", wide_args(resource)))
        if resource != "secrets":  # describe and -o json both carry secret values
            commands.append(Command(resource, "describe", ("describe", resource, "--all-namespaces")))
            commands.append(Command(resource, "json", ("get", resource, "--all-namespaces", "-o", "json")))
    label_columns = tuple(arg for label in HYPERPOD_LABELS for arg in ("-L", label))
    commands.append(Command("nodes", "labels", ("get", "nodes", *label_columns)))
    rank = {resource: index for index, resource in enumerate(BUILTIN_RESOURCES)}
    return sorted(commands, key=lambda c: (FORM_ORDER[c.form], rank.get(c.resource, len(rank))))


def wide_args(resource: str) -> tuple[str, ...]:
    args = ("get", resource, "--all-namespaces", "-o", "wide")
    if resource == "events":
        return args + ("--sort-by=.lastTimestamp",)
    return args


def run_all(ctx: StageContext, target: Target, commands: list[Command], folder: Path) -> list[Outcome]:
    outcomes = []
    pool = ThreadPoolExecutor(max_workers=max(1, ctx.settings.kubectl_workers), thread_name_prefix="kubectl")
    try:
        futures = [pool.submit(run_one, ctx, target, command, folder) for command in commands]
        for future in as_completed(futures):
            outcomes.append(future.result())
    except KeyboardInterrupt:
        ctx.cancel.set()  # commands not started yet stay unstarted; running ones got the same Ctrl-C
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    order = {command: index for index, command in enumerate(commands)}
    return sorted(outcomes, key=lambda outcome: order[outcome.command])


def run_one(ctx: StageContext, target: Target, command: Command, folder: Path) -> Outcome:
    if ctx.cancel.is_set():
        return Outcome(command, None, 0.0, 0, False, "cancelled")
    output, errors = folder / command.file, folder / f"{command.file}.stderr.txt"
    timeout = ctx.settings.timeouts.kubectl
    started = time.monotonic()
    with open(output, "wb") as stdout, open(errors, "wb") as stderr:
        try:
            rc = run_to_file(target.argv(*command.args), stdout, stderr, timeout)
        except OSError as exc:  # kubectl gone or broken since the preflight: this command fails, not the run
            stderr.write(f"kubectl does not run: {exc}\n".encode())
            rc = 127
    seconds = time.monotonic() - started
    error_text = errors.read_text(errors="replace")
    if not error_text.strip():
        errors.unlink()
    error = f"timed out after {timeout} s" if rc is None else (last_line(error_text) if rc else "")
    return Outcome(command, rc, seconds, output.stat().st_size, rc is None, error)


def run_to_file(argv: list[str], stdout: Any, stderr: Any, timeout: int) -> int | None:
    """The command's exit code, or None when it was killed at its timeout."""
    process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


# ---------------------------------------------------------------------------------------------
# Output


def write_secrets_json(folder: Path) -> None:
    """Secrets for offline queries, from the table alone: namespace, name, type and number of keys."""
    table = folder / "secrets.wide.txt"
    if not table.exists():
        return
    rows = [line.split() for line in table.read_text().splitlines()[1:] if line.strip()]
    secrets = [{"namespace": row[0], "name": row[1], "type": row[2], "keys": int(row[3])}
               for row in rows if len(row) >= 5 and row[3].isdigit()]
    note = ("metadata only, from `kubectl get secrets -A -o wide`: secret values and key names are never "
            "requested by hyperpod-collect")
    (folder / "secrets.json").write_text(json.dumps({"note": note, "items": secrets}, indent=2) + "\n")


def write_manifest(folder: Path, outcomes: list[Outcome]) -> None:
    lines = ["file\trc\tseconds\tbytes\ttimed_out\tcommand"]
    for o in outcomes:
        rc = "" if o.rc is None else str(o.rc)
        lines.append(f"{o.command.file}\t{rc}\t{o.seconds:.2f}\t{o.bytes}\t{int(o.timed_out)}\t{o.command.text()}")
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def pack(folder: Path, tarball: Path) -> None:
    partial = tarball.with_name(tarball.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=TOP_FOLDER)
    partial.replace(tarball)


def report(outcomes: list[Outcome], timing: dict[str, float], tarball: Path, s3_uri: str | None) -> None:
    by_resource: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_resource.setdefault(outcome.command.resource, []).append(outcome)
    for resource, results in by_resource.items():
        parts = [f"{o.command.form} {o.seconds:.1f}s {console.human_bytes(o.bytes)}"
                 + ("" if o.rc == 0 else f" FAILED ({o.error})") for o in results]
        console.log(f"kubectl: {resource:<24} " + " | ".join(parts))
    slowest = max(outcomes, key=lambda o: o.seconds)
    console.log(f"kubectl: {len(outcomes)} commands in {timing['wall_seconds']:.1f} s (sum of their times "
                f"{timing['command_seconds']:.1f} s, slowest {slowest.command.text()} {slowest.seconds:.1f} s), "
                f"stage {timing['stage_seconds']:.1f} s; {tarball} ({console.human_bytes(tarball.stat().st_size)})"
                + (f" and {s3_uri}" if s3_uri else ""))


def failure_advice(ctx: StageContext, failed: list[Outcome]) -> str:
    timed_out = [o for o in failed if o.timed_out]
    other = [o for o in failed if not o.timed_out]
    advice = []
    if timed_out:
        names = ", ".join(o.command.file for o in timed_out)
        advice.append(f"{len(timed_out)} command(s) did not finish in {ctx.settings.timeouts.kubectl} s ({names}); "
                      "their output is partial. The API server is slow or the output is very large: raise the "
                      "limit with INVOKE_HYPERPOD_TIMEOUTS_KUBECTL=SECONDS (or hyperpod.timeouts.kubectl)")
    if any("forbidden" in o.error.lower() for o in other):
        advice.append("your identity lacks permission for some resources; see README: RBAC for the kubectl stage")
    advice += [f"{o.command.text()} failed: {o.error}" for o in other]
    return "; ".join(advice) + f"; then run: {rerun_command(ctx)}"


def record_outcomes(ctx: StageContext, outcomes: list[Outcome], timing: dict[str, float], tarball: Path,
                    s3_uri: str | None, upload_error: str | None) -> int:
    failed = [o for o in outcomes if o.rc != 0]
    problems = ([failure_advice(ctx, failed)] if failed else []) + ([upload_error] if upload_error else [])
    details = {
        "tarball": str(tarball), "s3_uri": s3_uri, **timing, "collected": utc_now(),
        "commands": [{"file": o.command.file, "command": o.command.text(), "rc": o.rc,
                      "seconds": round(o.seconds, 2), "bytes": o.bytes, "timed_out": o.timed_out, "error": o.error}
                     for o in outcomes],
    }
    if not problems:
        ctx.state.mark_stage("kubectl", "done", **details)
        return 0
    message = "; ".join(problems)
    console.log(f"kubectl: INCOMPLETE: {message}")
    ctx.state.mark_stage("kubectl", "incomplete", error=message, **details)
    return 1
