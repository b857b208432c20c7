"""Start, inspect and stop the local emulated HyperPod (the sandbox).

`Sandbox(root).up(spec)` starts the patched moto server (server/), creates the S3 bucket and the
HyperPod cluster through the real API (hyperpod.py), starts one namespace node per cluster node
(nodes.py), the nodes' services, arms the scenario's faults and puts the stand-in
session-manager-plugin (plugin.py) in ROOT/bin. Nodes get the real AWS CLI (node_aws.py) and, through
the server's instance metadata service, their role's temporary credentials, allowed to write under the
cluster's reports prefix only. A spec (spec.py) comes from flags or a scenario file (docs/scenarios.md).
Every process is recorded in ROOT by PID and start time, so a later process (`invoke sandbox.down`)
can stop exactly those.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from collectors.errors import SandboxError
from collectors.sandbox.clients import sandbox_client
from collectors.sandbox.content import ClusterFacts
from collectors.sandbox.credentials import FAKE_CREDENTIALS
from collectors.sandbox.entry import (
    is_same_process,
    node_shell_env,
    nsenter_command,
    read_init_pid,
    read_init_pids,
)
from collectors.sandbox.faults import NODE_FAULT_DEFAULTS
from collectors.sandbox.history import cluster_history
from collectors.sandbox.hyperpod import create_bucket, create_cluster, execution_role_name, list_all_nodes
from collectors.sandbox.kube.lifecycle import start_kube, stop_kube
from collectors.sandbox.node_aws import give_nodes_aws
from collectors.sandbox.nodes import namespaces_problem, read_process_record, start_nodes, stop_nodes
from collectors.sandbox.processes import PACKAGE_PARENT, await_server, start_server, stop_server
from collectors.sandbox.services import start_node_services, stop_node_services
from collectors.sandbox.spec import SandboxSpec

MARKER_FILE = ".hyperpod-collect-sandbox"
REPORTS_PREFIX = "hyperpod-issue-reports"


def default_root() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return Path(runtime_dir) / "hyperpod-collect-sandbox"
    return Path(f"/tmp/hyperpod-collect-sandbox-{os.getuid()}")


def plugin_wrapper(root: Path) -> str:
    return (
        "#!/bin/sh\n"
        "# Sandbox stand-in for AWS's session-manager-plugin (collectors/sandbox/plugin.py).\n"
        f"PYTHONPATH={shlex.quote(str(PACKAGE_PARENT))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        # -S: no site-packages to scan; the plugin needs only the standard library and this package,
        # and it starts once per session (a thousand times in a fleet run).
        f"exec {shlex.quote(sys.executable)} -S -m collectors.sandbox.plugin --root {shlex.quote(str(root))} \"$@\"\n"
    )


def merged_no_proxy(current: str) -> str:
    """Keep the sandbox's loopback endpoint away from any HTTP proxy the caller has configured."""
    entries = [entry for entry in current.split(",") if entry]
    return ",".join(entries + [host for host in ("127.0.0.1", "localhost") if host not in entries])


def kubectl_env(kubernetes: dict | None) -> dict[str, str]:
    """EKS sandboxes: kubectl uses the sandbox's kubeconfig (loopback, no credentials) and its own discovery
    cache, so a cache left by an earlier sandbox on the same port is never reused."""
    if not kubernetes:
        return {}
    return {"KUBECONFIG": kubernetes["kubeconfig"], "KUBECACHEDIR": kubernetes["cache_dir"]}


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Kept so that processes started here are reaped here, not left as zombies.
        self.started: list[subprocess.Popen] = []
        self.node_role: dict | None = None  # the nodes' role and what it may do, once start_aws has set it

    # -- paths ------------------------------------------------------------------------------

    @property
    def status_file(self) -> Path:
        return self.root / "sandbox.json"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    # -- lifecycle --------------------------------------------------------------------------

    def up(self, spec: SandboxSpec) -> dict:
        spec.validate()
        if self.is_up():
            raise SandboxError(f"a sandbox is already up in {self.root}; run `invoke sandbox.down` first")
        self.down()  # leftovers of a sandbox that crashed
        problem = namespaces_problem()
        if problem:
            raise SandboxError(problem)
        try:
            return self.start(spec)
        except BaseException as error:
            self.down()
            if isinstance(error, Exception) and not isinstance(error, SandboxError):
                raise SandboxError(f"sandbox did not start: {error}") from error
            raise

    def start(self, spec: SandboxSpec) -> dict:
        endpoint, cluster, settings = self.start_aws(spec)
        start_nodes(self.root, cluster)
        give_nodes_aws(self.root, cluster, json.loads((self.root / "server.json").read_text()))
        status = self.initial_status(spec, cluster, endpoint, settings)
        status["node_role"] = self.node_role
        # The nodes' services start here, with the status dict, once the nodes are up; each adds its
        # keys to the status.
        status.update(start_node_services(self.root, status))  # Slurm and sshd, once the nodes are up
        if status["type"] == "eks":
            status["kubernetes"] = start_kube(self.root, status)  # the API server real kubectl talks to
        # Faults last, so a slow or hung command never gets in the way of starting the services.
        node_faults = {iid: node["faults"] for iid, node in settings.items() if node["faults"] != NODE_FAULT_DEFAULTS}
        self.post_faults({"faults": spec.faults, "nodes": node_faults})
        self.write_json(self.status_file, status)
        return status

    def start_aws(self, spec: SandboxSpec) -> tuple[str, ClusterFacts, dict[str, dict]]:
        """The sandbox's AWS alone (no nodes yet): the server, the bucket, the cluster in the API, the
        nodes' role. Returns the endpoint, the cluster and each node's scenario settings."""
        self.create_root()
        endpoint = self.start_server()
        clients = {
            service: sandbox_client(service, endpoint, spec.region, self.root) for service in ("s3", "eks", "sagemaker")
        }
        cluster, settings = create_cluster(spec, clients)
        for instance_id, node in settings.items():
            if node["status"] != "Running":
                self.post_node_status(spec.cluster, spec.region, instance_id, node["status"], node["message"])
        self.control("POST", "/_emu/cluster-history", {
            "cluster": cluster.arn, "region": spec.region, "history": cluster_history(cluster, settings).as_json(),
        })
        self.node_role = self.control("POST", "/_emu/node-role", {
            "role": execution_role_name(spec), "bucket": spec.bucket, "prefix": f"{REPORTS_PREFIX}/{spec.cluster}",
        })
        return endpoint, cluster, settings

    def create_bucket(self, name: str, region: str) -> None:
        """Another bucket, in any region (S3 keeps its LocationConstraint), e.g. to test a bucket elsewhere."""
        endpoint = json.loads((self.root / "server.json").read_text())["endpoint"]
        create_bucket(sandbox_client("s3", endpoint, region, self.root), name, region)

    @staticmethod
    def write_json(path: Path, data: dict) -> None:
        path.write_text(json.dumps(data, indent=2) + "\n")

    def create_root(self) -> None:
        self.root.mkdir(parents=True, mode=0o700)
        (self.root / MARKER_FILE).touch()
        # Our own AWS config files, so nothing in ~/.aws reaches the sandbox. The config holds only an
        # empty [default] profile: with AWS_PROFILE=default a caller's own AWS_PROFILE is overridden.
        (self.root / "aws-config").write_text("[default]\n")
        (self.root / "aws-credentials").touch()
        self.bin_dir.mkdir()
        plugin = self.bin_dir / "session-manager-plugin"
        plugin.write_text(plugin_wrapper(self.root))
        plugin.chmod(0o755)

    def start_server(self) -> str:
        server = start_server("collectors.sandbox.server", self.root, self.root)
        self.started.append(server)
        return await_server(self.root, server, "the sandbox AWS server")["endpoint"]

    def down(self) -> None:
        """Stop every recorded node and the server, then remove ROOT. Safe to repeat."""
        if not self.root.exists():
            return
        if not (self.root / MARKER_FILE).exists():
            raise SandboxError(f"{self.root} is not a sandbox folder; not touching it")
        # The nodes' daemons first: they are stopped by host PID while their nodes still run.
        survivors = stop_node_services(self.root) + stop_nodes(self.root) + stop_server(self.root) + stop_kube(self.root)
        if survivors:
            raise SandboxError(f"sandbox processes {survivors} did not stop; {self.root} is kept")
        shutil.rmtree(self.root)

    # -- inspection -------------------------------------------------------------------------

    def is_up(self) -> bool:
        record = read_process_record(self.root)
        return bool(record) and is_same_process(*record["server"]) and self.status_file.exists()

    def recorded_status(self) -> dict:
        if not self.is_up():
            raise SandboxError(f"no sandbox is up in {self.root}; run `invoke sandbox.up`")
        return json.loads(self.status_file.read_text())

    def status(self) -> dict:
        """The recorded status, with each node's API status, PID 1 (None once it is gone) and faults now."""
        status = self.recorded_status()
        sagemaker = sandbox_client("sagemaker", status["endpoint"], status["region"], self.root)
        nodes_now = list_all_nodes(sagemaker, status["cluster"])
        live = {node["InstanceId"]: node["InstanceStatus"]["Status"] for node in nodes_now}
        faults = self.faults()
        status["faults"] = faults["faults"]
        init_pids = read_init_pids(self.root)
        for node in status["nodes"]:
            node["status"] = live.get(node["instance_id"], "NotFound")
            node["init_pid"] = init_pids.get(node["instance_id"])
            node["scenario"]["faults"] = faults["nodes"].get(node["instance_id"], dict(NODE_FAULT_DEFAULTS))
        return status

    def initial_status(self, spec: SandboxSpec, cluster: ClusterFacts, endpoint: str, settings: dict) -> dict:
        server_pid = read_process_record(self.root)["server"][0]
        roles = {group.name: group.role for group in spec.groups}
        init_pids = read_init_pids(self.root)
        return {
            "cluster": cluster.name,
            "cluster_arn": cluster.arn,
            "cluster_id": cluster.arn.rsplit("/", 1)[-1],
            "type": cluster.type,
            "region": cluster.region,
            "bucket": spec.bucket,
            "s3_path": f"s3://{spec.bucket}/{REPORTS_PREFIX}",
            "endpoint": endpoint,
            "server_pid": server_pid,
            "root": str(self.root),
            "shell": spec.shell,
            "faults": spec.faults,
            "nodes": [
                {
                    "instance_id": node.instance_id,
                    "group": node.group,
                    "instance_type": node.instance_type,
                    "hostname": node.hostname,
                    "ip": node.ip,
                    "init_pid": init_pids[node.instance_id],
                    "status": settings[node.instance_id]["status"],
                    "role": roles[node.group],
                    "scenario": settings[node.instance_id],
                }
                for node in cluster.nodes
            ],
        }

    def env(self) -> dict[str, str]:
        """Environment for the toolkit, boto3 and the AWS CLI to use this sandbox instead of AWS."""
        status = self.recorded_status()
        no_proxy = merged_no_proxy(os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")))
        return {
            "AWS_ENDPOINT_URL": status["endpoint"],
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": status["region"],
            "AWS_REGION": status["region"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.root / "aws-config"),
            "AWS_PROFILE": "default",
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials"),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
            "INVOKE_HYPERPOD_SANDBOX": "true",
            "INVOKE_HYPERPOD_CLUSTER": status["cluster"],
            "INVOKE_HYPERPOD_S3_PATH": status["s3_path"],
            "INVOKE_HYPERPOD_REGION": status["region"],
            **kubectl_env(status.get("kubernetes")),
        }

    # -- changing and using nodes -----------------------------------------------------------

    def control(self, method: str, path: str, body: dict | None = None) -> dict | list:
        """A request to the server's control API (/_emu/...); SandboxError with its reason when refused."""
        endpoint = json.loads((self.root / "server.json").read_text())["endpoint"]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{endpoint}{path}", data=data, method=method, headers={"Content-Type": "application/json"},
        )
        # No proxy handler: the request must go straight to the loopback server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            reason = error.read().decode(errors="replace")
            try:
                reason = json.loads(reason)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise SandboxError(f"sandbox control {method} {path}: {reason}") from error

    def set_node_status(self, instance_id: str, status: str, message: str = "") -> None:
        """Change a node's HyperPod InstanceStatus (as ListClusterNodes and DescribeClusterNode show it)."""
        sandbox = self.recorded_status()
        self.post_node_status(sandbox["cluster"], sandbox["region"], instance_id, status, message)

    def post_node_status(self, cluster: str, region: str, instance_id: str, status: str, message: str) -> None:
        self.control("POST", "/_emu/node-status", {
            "cluster": cluster, "region": region, "instance": instance_id, "status": status, "message": message,
        })

    # -- faults (docs/scenarios.md): what the scenario armed, changed at run time ---------------

    def faults(self) -> dict:
        """{"faults": scenario-wide faults, "nodes": {instance id: that node's faults}}, as they are now."""
        return self.control("GET", "/_emu/faults")

    def post_faults(self, change: dict) -> dict:
        return self.control("POST", "/_emu/faults", change)

    def set_faults(self, **faults) -> dict:
        """Change scenario-wide faults, e.g. `set_faults(start_session_rate=1)`; None puts one back."""
        return self.post_faults({"faults": faults})["faults"]

    def set_node_faults(self, instance_id: str, **faults) -> dict:
        """Change one node's faults, e.g. `set_node_faults(iid, hang=["nvidia-smi"])`; None puts one back."""
        return self.post_faults({"nodes": {instance_id: faults}})["nodes"][instance_id]

    def node_exec(self, instance_id: str, argv: list[str]) -> subprocess.CompletedProcess:
        """Run `argv` as root inside a node, with a node shell's clean environment."""
        init_pid = read_init_pid(self.root, instance_id)
        if init_pid is None:
            raise SandboxError(f"sandbox node {instance_id} is not running")
        command = nsenter_command(init_pid) + node_shell_env("dumb") + argv
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
