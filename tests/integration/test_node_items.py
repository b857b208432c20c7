"""Every node item on real sandbox nodes (Linux namespaces), EKS and Slurm (real Slurm), item by item.

The composed script runs inside a node as root, the way a session would start it, and keeps its
tarball on the node (HPC_KEEP_DIR) or uploads it to the sandbox's S3 through presigned URLs. The
sandbox's fixture packs and faults make nodes sick (a GPU fallen off the bus, a hung nvidia-smi,
a full /tmp, a drained Slurm node). What they do not provide (lspci, fi_info, EFA counters under
/sys/class/infiniband, CNI and containerd configuration in /etc, pod logs, nvidia-bug-report.sh,
the EKS log collector) is added by these tests: stand-ins on the node's PATH, files in the node's
own /var/log, and for /etc and /sys a private mount namespace inside the node. The EKS log
collector is a tiny fake served from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import threading
import time
from pathlib import Path

import pytest

from collectors.nodescript import NodeOptions, compose
from collectors.sandbox import SandboxSpec, sandbox_client
from collectors.sandbox.nodes import node_dir
from tests.conftest import require_tool

ODD_GROUP = 'group "with quotes" and it\'s spaces'
ISSUE_COMMAND = "echo \"it's $HOME `id`\""  # `--command "echo \"it's \$HOME \`id\`\""` as it reaches the node
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DRAIN_REASON = "Xid 79: GPU fell off the bus"
# Inside the node, in its own /opt (a folder on the host): not /tmp, which a fault may replace.
TEST_DIR = "/opt/hpc-items"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs the rest of its arguments in a private mount namespace inside the node, with the test's
# fixtures over /etc (an overlay: the node's own files stay visible) and as /sys/class.
PRIVATE_MOUNTS = r"""set -e
fixtures=$1; shift
mount -t tmpfs none /mnt
mkdir /mnt/upper /mnt/work
cp -a "$fixtures/etc/." /mnt/upper/
mount -t overlay overlay -o lowerdir=/etc,upperdir=/mnt/upper,workdir=/mnt/work /etc
mount -t tmpfs none /sys/class
cp -a "$fixtures/sys_class/." /sys/class/
exec "$@"
"""
STAND_INS = {
    "lspci": 'echo "53:00.0 3D controller [0302]: NVIDIA Corporation GA102GL [A10G] [10de:2237] ($*)"',
    "fi_info": 'echo "provider: efa ($*)"',
    "lsmod": 'printf "Module Size Used by\\nnvidia 56823808 1\\nefa 159744 0\\n"',
    "containerd": 'printf \'version = 2\\n[plugins."io.containerd.grpc.v1.cri".registry.configs."r".auth]\\n'
                  '  password = "regpass-123"\\n\'',
    "nvidia-bug-report.sh": 'echo "nvidia-bug-report stand-in" | gzip > "$2.gz"',
}
# The fake EKS log collector: writes its bundle where the real one does, as the real one names it.
FAKE_COLLECTOR = r"""#!/bin/bash
set -e
stage=$(mktemp -d)
mkdir -p "$stage/kernel" "$stage/system"
echo "fake dmesg" > "$stage/kernel/dmesg.current"
echo "root 1 python train.py --api_key sk-live-0123456789" > "$stage/system/ps.txt"
tar -C "$stage" -czf "/var/log/eks_i-fake_$(date -u +%Y-%m-%d_%H%M)-UTC_0.7.9.tar.gz" .
rm -rf "$stage"
echo "Done... your bundled logs are located in /var/log/eks_i-fake.tar.gz"
"""


def write(path: Path, text: str | bytes, mode: int | None = None, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    if mode is not None:
        path.chmod(mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def host_path(sandbox, node: dict, path: str) -> Path:
    """Where a path under the node's /opt or /var/log is on the host."""
    top, _, rest = path.removeprefix("/").partition("/")
    folder = {"opt": "opt", "var": "varlog"}[top]
    return node_dir(sandbox.root, node["instance_id"]) / folder / rest.removeprefix("log/") if top == "var" \
        else node_dir(sandbox.root, node["instance_id"]) / folder / rest


class NodeRun:
    """One run of the composed script inside a sandbox node, and its tarball (kept there, or in S3)."""

    def __init__(self, sandbox, node: dict, cluster_type: str, name: str, *, commands=(), options=None,
                 env: dict[str, str] | None = None, private_mounts: bool = False, upload: tuple | None = None):
        test_dir = host_path(sandbox, node, TEST_DIR)
        write(test_dir / f"{name}.sh", compose(cluster_type, commands, options=options))
        variables = {"PATH": f"{TEST_DIR}/bin:{NODE_PATH}", "INSTANCE_GROUP": node["group"],
                     "INSTANCE_ID": node["instance_id"], "CLUSTER_TYPE": cluster_type,
                     "HPC_KEEP_DIR": f"{TEST_DIR}/keep-{name}", **(env or {})}
        argv = ["env", *(f"{key}={value}" for key, value in variables.items())]
        if private_mounts:
            argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_MOUNTS, "mounts",
                     f"{TEST_DIR}/fixtures"]
        argv += ["bash", f"{TEST_DIR}/{name}.sh"]
        result = sandbox.node_exec(node["instance_id"], argv)
        self.rc, self.stdout, self.stderr = result.returncode, result.stdout, result.stderr
        last = self.stdout.splitlines()[-1] if self.stdout else ""
        assert last.startswith("HPC_RESULT "), self.stdout + self.stderr
        self.result = dict(part.split("=", 1) for part in last.split()[1:])
        if upload:
            s3, bucket, key = upload
            tarball = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            tarball = host_path(sandbox, node, self.result["kept"]).read_bytes()
        self.files = report_files(tarball)
        self.rows = {row["item"]: row for row in table(self.files, "manifest.tsv")}

    def text(self, name: str) -> str:
        return self.files[name].decode(errors="replace")


def report_files(tarball: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile() and "/" in m.name}


def table(files: dict[str, bytes], name: str) -> list[dict[str, str]]:
    lines = files[name].decode().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"), strict=True)) for line in lines[1:]]


def assert_every_item_is_honest(run: NodeRun) -> None:
    """Each manifest row: collected or failed with output (the tool's own words), or skipped with why."""
    for row in run.rows.values():
        if row["note"].startswith("skipped: "):
            assert re.match(r"skipped: (not present: \S+|off by configuration \(\w+=0\))$", row["note"]), row
            assert row["rc"] == "0" and row["bytes"] == "0", row
        elif row["note"].startswith("unsupported: "):  # the tool's own words for it are in the file
            assert row["rc"] == "0" and int(row["bytes"]) > 0, row
        elif row["note"].startswith("not run: "):  # and a file that says why
            assert row["rc"] != "0" and int(row["bytes"]) > 0, row
        else:
            assert int(row["bytes"]) > 0 and row["note"] == "", row
    assert int(run.result["items"]) == len(run.rows)
    assert int(run.result["failed_items"]) == sum(row["rc"] != "0" for row in run.rows.values())


def ran_ok(run: NodeRun, *items: str) -> None:
    for item in items:
        row = run.rows[item]
        assert row["rc"] == "0" and row["note"] == "" and int(row["bytes"]) > 0, row


# ---------------------------------------------------------------- a served fake EKS log collector

@pytest.fixture(scope="module")
def fake_collector():
    body = FAKE_COLLECTOR.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path.startswith("/eks-log-collector.sh")
            self.send_response(200 if found else 404)
            payload = body if found else b"no"
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    # As the run stage hands it over: a presigned-looking URL, which must never show anywhere.
    yield (f"http://127.0.0.1:{server.server_address[1]}/eks-log-collector.sh?X-Amz-Signature=c011ec70r5ec",
           hashlib.sha256(body).hexdigest())
    server.shutdown()
    server.server_close()
    thread.join()


# ---------------------------------------------------------------- EKS

def add_stand_ins(sandbox, node: dict) -> None:
    for name, body in STAND_INS.items():
        write(host_path(sandbox, node, f"{TEST_DIR}/bin/{name}"), f"#!/bin/sh\n{body}\n", mode=0o755)


def provision_eks_node(sandbox, node: dict) -> None:
    """What a real HyperPod EKS node has and the sandbox's fixture pack does not."""
    add_stand_ins(sandbox, node)
    fixtures = host_path(sandbox, node, f"{TEST_DIR}/fixtures")
    write(fixtures / "etc" / "cni" / "net.d" / "10-aws.conflist", '{"cniVersion": "0.4.0", "name": "aws-cni"}\n')
    write(fixtures / "etc" / "kubernetes" / "kubelet" / "config.json", '{"kind": "KubeletConfiguration"}\n')
    write(fixtures / "etc" / "kubernetes" / "kubelet" / "kubeconfig", "users:\n- name: kubelet\n")
    counters = fixtures / "sys_class" / "infiniband" / "efa_0" / "ports" / "1" / "hw_counters"
    write(counters / "rdma_read_wr_err", "5\n")
    write(counters / "rx_drops", "0\n")
    varlog = node_dir(sandbox.root, node["instance_id"]) / "varlog"
    write(varlog / "messages", "Jan  1 00:00:00 node kernel: messages line\n")
    write(varlog / "syslog.1", "Jan  1 00:00:00 node app: yesterday's syslog\n")
    write(varlog / "syslog.2", "Dec  1 00:00:00 node app: last month\n", mtime=time.time() - 30 * 86400)
    write(varlog / "fabricmanager.log", "[INFO] Fabric Manager started\n")
    write(varlog / "pods" / "kube-system_aws-node-x1_0a1b" / "aws-node" / "0.log", "aws-node log line\n")
    write(varlog / "pods" / "default_trainer-0_9f8e" / "trainer" / "0.log", "a customer's job log\n")
    write(varlog / "aws-routed-eni" / "ipamd.log", f"ipamd: using AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n")
    # A bundle an engineer left from a manual run: never taken, never deleted.
    write(varlog / "eks_i-old_2026-01-01_0000-UTC_0.7.9.tar.gz", b"old bundle")


@pytest.fixture(scope="module")
def eks(sandbox_factory):
    require_tool("unshare", "util-linux")
    sandbox, status, _ = sandbox_factory(SandboxSpec.simple(type="eks", nodes=1))
    node = status["nodes"][0]
    provision_eks_node(sandbox, node)
    return sandbox, node


@pytest.fixture(scope="module")
def eks_full(eks, fake_collector):
    sandbox, node = eks
    url, sha256 = fake_collector
    options = NodeOptions(eks_log_collector=True, eks_log_collector_sha256=sha256)
    run = NodeRun(sandbox, node, "eks", "full", commands=(ISSUE_COMMAND,), options=options, private_mounts=True,
                  env={"INSTANCE_GROUP": ODD_GROUP, "HPC_EKS_COLLECTOR_URL": url})
    return run, sandbox, node, url


NVIDIA_QUERIES = ("nvidia_smi_q", "nvidia_smi_gpus", "nvidia_smi_remapped_rows", "nvidia_smi_nvlink_status",
                  "nvidia_smi_nvlink_errors")


def test_eks_every_item_runs_and_says_what_it_found(eks_full):
    run, _, node, _ = eks_full
    assert_every_item_is_honest(run)
    # Nothing skipped, unsupported or cut, but DCGM, which sandbox nodes do not have (yet): its items
    # say "not present: dcgmi" (or, for the diagnostic, off by configuration), checked just above.
    dcgm = {"dcgm_discovery", "dcgm_health", "dcgm_diag"}
    assert not [item for item, row in run.rows.items() if row["note"] and item not in dcgm]
    assert run.rc == 0 and run.result["status"] == "ok", run.stdout + run.stderr
    ran_ok(run, "instance_group", "instance_id", "cluster_type", "hostname", "timestamp", "uname", "uptime",
           "versions", "nvidia_smi", *NVIDIA_QUERIES, "fabricmanager", "lspci", "lsmod", "fi_info_efa", "efa_counters", "dmesg_T",
           "journal_kernel", "syslog", "messages", "kern_log", "rotated_logs", "resource_config", "cluster_logs",
           "systemd_services", "systemd_failed", "disk_usage", "disk_inodes", "memory", "processes",
           "kubelet_status", "containerd_status", "kubelet_journal", "containerd_journal", "containerd_config",
           "kubelet_config", "cni_config", "cni_logs", "pod_logs", "command_01", "nvidia_bug_report",
           "eks_log_collector")


def test_eks_identity_and_the_issue_command_are_exact(eks_full):
    run, sandbox, node, _ = eks_full
    assert run.files["instance_group.txt"] == f"{ODD_GROUP}\n".encode()
    assert run.text("instance_id.txt") == f"{node['instance_id']}\n" and run.text("cluster_type.txt") == "eks\n"
    assert run.text("hostname.txt") == f"{node['hostname']}\n"
    identity = sandbox.node_exec(node["instance_id"], ["id"]).stdout
    command_file = next(name for name in run.files if name.startswith("command_01_"))
    assert run.text(command_file) == f"it's /root {identity}"


def test_eks_node_files_and_tools(eks_full):
    run, _, node, _ = eks_full
    assert "NVIDIA-SMI 535.183.01" in run.text("nvidia_smi.txt") and "A10G" in run.text("nvidia_smi.txt")
    assert "Product Name" in run.text("nvidia_smi_q.txt") and "Remapped Rows" in run.text("nvidia_smi_q.txt")
    gpus = run.text("nvidia_smi_gpus.csv").splitlines()
    assert gpus[0].startswith("index, pci.bus_id, name, serial, uuid") and len(gpus) == 2 and "A10G" in gpus[1]
    assert run.text("nvidia_smi_remapped_rows.csv").startswith("gpu_bus_id, gpu_uuid, remapped_rows.correctable")
    assert run.rows["nvidia_smi_nvlink_status"]["rc"] == "0"  # A10G: no NVLink, nothing to list
    assert "Fabric Manager started" in run.text("fabricmanager.txt")
    assert "(-vvv -d 10de:)" in run.text("lspci.txt") and "(-p efa)" in run.text("fi_info_efa.txt")
    assert "efa 159744 0" in run.text("lsmod.txt")
    assert run.text("efa_counters.txt").count("./efa_0/ports/1/hw_counters/rdma_read_wr_err:5") == 2
    assert node["hostname"] in run.text("syslog") and "messages line" in run.text("messages")
    assert run.text("rotated_logs/syslog.1") == "Jan  1 00:00:00 node app: yesterday's syslog\n"
    assert "rotated_logs/syslog.2" not in run.files
    assert node["instance_id"] in run.text("resource_config.json")
    assert "cluster_logs/sagemaker-cluster-agent.log" in run.files
    assert "kubelet.service" in run.text("systemd_services.txt")
    assert "Kubernetes Kubelet" in run.text("kubelet_status.txt")
    assert "containerd" in run.text("containerd_status.txt")
    assert 'password = "<REDACTED>"' in run.text("containerd_config.txt")
    assert run.text("kubelet_config/etc_kubernetes_kubelet/config.json") == '{"kind": "KubeletConfiguration"}\n'
    assert not any("kubeconfig" in name for name in run.files if name.startswith("kubelet_config/"))
    assert run.text("cni_config/10-aws.conflist").startswith('{"cniVersion"')
    assert run.text("cni_logs/ipamd.log") == "ipamd: using AWS_SECRET_ACCESS_KEY=<REDACTED>\n"
    assert run.text("pod_logs/kube-system_aws-node-x1_0a1b/aws-node/0.log") == "aws-node log line\n"
    assert not any("trainer" in name for name in run.files)
    assert run.files["nvidia_bug_report/nvidia-bug-report.log.gz"]


def test_eks_log_collector_is_fetched_checked_run_and_unpacked(eks_full):
    run, sandbox, node, url = eks_full
    assert run.text("eks-logs/kernel/dmesg.current") == "fake dmesg\n"
    assert run.text("eks-logs/system/ps.txt") == "root 1 python train.py --api_key <REDACTED>\n"
    assert "bundled logs" in run.text("eks-logs/eks-log-collector-output.txt")
    assert int(run.rows["eks_log_collector"]["redactions"]) == 1
    varlog = node_dir(sandbox.root, node["instance_id"]) / "varlog"
    # its own bundle is unpacked and removed; an older one from a manual run is left alone
    assert [p.name for p in varlog.glob("eks_*.tar.gz")] == ["eks_i-old_2026-01-01_0000-UTC_0.7.9.tar.gz"]
    signature = url.split("X-Amz-Signature=")[1]
    everything = b"".join(run.files.values()).decode(errors="replace") + run.stdout + run.stderr
    assert signature not in everything and "HPC_EKS_COLLECTOR_URL" not in everything
    assert AWS_SECRET not in everything and "regpass-123" not in everything and "sk-live" not in everything


def test_eks_bare_node_every_item_honest_and_a_bad_collector_loses_nothing_else(eks, fake_collector):
    """Without the test's stand-ins and fixtures: absent tools are skipped, and a collector whose
    sha256 is not the pinned one is not run, while everything else is collected."""
    sandbox, node = eks
    url, _ = fake_collector
    options = NodeOptions(eks_log_collector=True, eks_log_collector_sha256="0" * 64)
    run = NodeRun(sandbox, node, "eks", "bare", options=options,
                  env={"PATH": NODE_PATH, "HPC_EKS_COLLECTOR_URL": url})
    assert_every_item_is_honest(run)
    for item in ("lspci", "fi_info_efa", "efa_counters", "cni_config", "kubelet_config"):
        assert run.rows[item]["note"].startswith("skipped: not present: "), run.rows[item]
    collector = run.rows["eks_log_collector"]
    assert collector["rc"] == "1"
    assert "expected 0000000000" in run.text("eks-logs.log") and "not run" in run.text("eks-logs.log")
    ran_ok(run, "nvidia_smi", "syslog", "kern_log", "resource_config", "cluster_logs", "kubelet_status",
           "containerd_status", "pod_logs", "cni_logs")
    assert run.result["status"] == "ok_with_errors" and run.rc == 3


# ---------------------------------------------------------------- Slurm

# Real Slurm; one worker's GPU fell off the bus and Slurm drained it, the other has a hung
# nvidia-smi and a full /tmp (docs/scenarios.md: fixture packs and faults).
SLURM_SCENARIO = {
    "cluster": "hp-items-slurm",
    "type": "slurm",
    "instance_groups": [{"name": "worker-group-1", "instance_type": "ml.g5.8xlarge", "count": 2}],
    "nodes": {
        "worker-group-1/0": {"fixture": "xid79", "slurm": {"state": "drain", "reason": DRAIN_REASON}},
        "worker-group-1/1": {"faults": {"hang": ["nvidia-smi"], "tmp_free_mb": 1}},
    },
}


@pytest.fixture(scope="module")
def slurm_cluster(sandbox_factory):
    require_tool("slurmctld", "slurm-wlm")
    sandbox, status, _ = sandbox_factory(SandboxSpec.from_scenario(SLURM_SCENARIO))
    return sandbox, status


@pytest.fixture(scope="module")
def slurm_full(slurm_cluster):
    sandbox, status = slurm_cluster
    node = status["nodes"][0]
    with open(host_path(sandbox, node, "/var/log/syslog"), "a") as syslog:
        syslog.write(f"Jan  1 00:00:00 {node['hostname']} app: aws_secret_access_key = {AWS_SECRET}\n")
    run = NodeRun(sandbox, node, "slurm", "full", commands=(ISSUE_COMMAND,), env={"INSTANCE_GROUP": ODD_GROUP})
    return run, sandbox, node


def test_slurm_every_item_runs_or_says_why_not(slurm_full):
    run, _, _ = slurm_full
    assert_every_item_is_honest(run)
    ran_ok(run, "instance_group", "hostname", "dmesg_T", "syslog", "kern_log", "resource_config", "cluster_logs",
           "systemd_services", "sinfo", "sinfo_R", "scontrol_show_node", "squeue_node", "slurmctld_status",
           "slurmd_status", "slurmctld_journal", "slurmd_journal", "opt_slurm_etc", "var_log_slurm", "command_01")
    assert run.files["instance_group.txt"] == f"{ODD_GROUP}\n".encode()


def test_slurm_a_gpu_off_the_bus_fails_its_items_and_the_logs_show_why(slurm_full):
    run, _, _ = slurm_full
    lost = "Unable to determine the device handle for GPU0000:"
    for item in ("nvidia_smi", "nvidia_smi_q", *NVIDIA_QUERIES[1:]):
        assert run.rows[item]["rc"] == "15", run.rows[item]  # nvidia-smi's "GPU has fallen off the bus"
    assert lost in run.text("nvidia_smi.txt") and lost in run.text("nvidia_smi_gpus.csv")
    xid = "NVRM: Xid (PCI:0000:"
    assert xid in run.text("kern.log") and xid in run.text("dmesg_T.txt") and xid in run.text("syslog")
    assert run.result["status"] == "ok_with_errors" and run.rc == 3


def test_slurm_state_comes_from_the_real_controller(slurm_full):
    run, _, node = slurm_full
    assert re.search(rf"\bdrain\b.*\b{node['hostname']}\b", run.text("sinfo.txt"))
    assert re.match(rf"{re.escape(DRAIN_REASON)}\s+root\s+\S+\s+{node['hostname']}$",
                    run.text("sinfo_R.txt").splitlines()[1])
    assert f"NodeName={node['hostname']} " in run.text("scontrol_show_node.txt")
    assert f"Reason={DRAIN_REASON}" in run.text("scontrol_show_node.txt")
    assert run.text("squeue_node.txt").split()[:2] == ["JOBID", "PARTITION"]
    assert "Slurm node daemon" in run.text("slurmd_status.txt")
    assert "var_log_slurm/slurmd.log" in run.files


def test_slurm_secrets_are_redacted_on_the_node(slurm_full):
    run, sandbox, node = slurm_full
    real = host_path(sandbox, node, "/opt/slurm/etc/slurmdbd.conf").read_text()
    password = re.search(r"^StoragePass=(.+)$", real, re.M).group(1)
    assert "StoragePass=<REDACTED>\n" in run.text("opt_slurm_etc/slurmdbd.conf")
    assert run.text("opt_slurm_etc/slurmdbd.conf") == real.replace(password, "<REDACTED>")
    assert run.text("syslog").endswith("app: aws_secret_access_key = <REDACTED>\n")
    files = {row["file"]: row for row in table(run.files, "manifest_files.tsv")}
    assert files["opt_slurm_etc/slurmdbd.conf"]["redactions"] == "1" and files["syslog"]["redactions"] == "1"
    everything = b"".join(run.files.values())
    assert password.encode() not in everything and AWS_SECRET.encode() not in everything


def test_slurm_hung_nvidia_smi_and_full_tmp_still_upload_everything_else(slurm_cluster):
    """The sandbox's own faults: nvidia-smi never returns (and ignores TERM), /tmp has 1 MB free."""
    sandbox, status = slurm_cluster
    node = status["nodes"][1]
    add_stand_ins(sandbox, node)  # nvidia-bug-report.sh among them
    s3 = sandbox_client("s3", status["endpoint"], status["region"], sandbox.root)
    key, status_key = f"items/{node['instance_id']}.tar.gz", f"items/{node['instance_id']}.json"
    urls = {"HPC_UPLOAD_URL": s3.generate_presigned_url("put_object", Params={"Bucket": status["bucket"], "Key": key}),
            "HPC_STATUS_URL": s3.generate_presigned_url("put_object",
                                                        Params={"Bucket": status["bucket"], "Key": status_key})}
    run = NodeRun(sandbox, node, "slurm", "faults", env={"HPC_ITEM_TIMEOUT": "3", "HPC_KEEP_DIR": "", **urls},
                  upload=(s3, status["bucket"], key))
    assert run.result["status"] == "ok_with_errors" and run.rc == 3, run.stdout + run.stderr
    assert_every_item_is_honest(run)
    assert "/tmp has less than 100 MB free: working in /var/tmp" in run.stdout
    hung = run.rows["nvidia_smi"]
    assert hung["rc"] == "124" and hung["timed_out"] == "1"
    for item in NVIDIA_QUERIES:
        assert run.rows[item]["note"] == "not run: nvidia-smi did not return in nvidia_smi"
    assert b"--safe-mode only" in run.files["nvidia_bug_report.log"]
    failed = {item for item, row in run.rows.items() if row["rc"] != "0"}
    assert failed == {"nvidia_smi", *NVIDIA_QUERIES}
    done = json.loads(s3.get_object(Bucket=status["bucket"], Key=status_key)["Body"].read())
    assert done["state"] == "done" and done["status"] == "ok_with_errors" and done["rc"] == 3
    assert done["sha256"] == run.result["sha256"] and done["bytes"] == int(run.result["bytes"])
