"""The composed node script, run by real bash, uploading to a real local S3 (moto server).

Stand-ins for nvidia-smi, systemctl and sinfo sit first on PATH; everything else (timeout,
tar, curl, df, ps) is the real tool.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shutil
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

from collectors.nodescript import BASH_DIR, compose
from tests.conftest import require, require_namespaces, require_tool

BUCKET = "hpc-node-script-test"
GROUP = "workers"
INSTANCE = "i-0123456789abcdef0"
RESULT_RE = re.compile(r"HPC_RESULT status=(\S+) items=(\d+) failed_items=(\d+) "
                       r"bytes=(\d+) sha256=(\S+) tarball=(\S+)")
REPORT_DIR_RE = re.compile(rf"hyperpod_report_{GROUP}_{INSTANCE}_\d{{8}}_\d{{6}}")
COMMON_ITEMS = ["instance_group", "instance_id", "cluster_type", "hostname", "timestamp",
                "nvidia_smi", "disk_usage", "systemd_services"]
EKS_ITEMS = COMMON_ITEMS + ["containerd_status", "kubelet_status"]
SLURM_ITEMS = COMMON_ITEMS + ["sinfo", "sinfo_R", "slurmd_status"]
LITERAL = "echo '$HOME `id` \"q\"'"
TWO_LINES = "echo first\necho second"
RUN_LIMIT = 60  # seconds; a wedged script fails the test instead of hanging it

NVIDIA_OK = 'echo "NVIDIA-SMI 550.54.15 stand-in"'
SYSTEMCTL = """echo "systemctl stand-in: $*"
case "$*" in
  "list-units "*) echo "kubelet.service loaded active running kubelet" ;;
  "status kubelet --no-pager") echo "Active: inactive (dead)"; exit 3 ;;
esac"""


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-west-2",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(signature_version="s3v4"))
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        yield client
    finally:
        server.stop()


def presigned_put(s3, key: str) -> str:
    return s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)


@dataclass
class FailingEndpoint:
    """An HTTP server that answers every PUT with one status code, counting the attempts."""
    code: int
    hits: list[str] = field(default_factory=list)

    def __post_init__(self):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.hits.append(self.path)
                body = b"<Error><Code>AccessDenied</Code></Error>"
                self.send_response(endpoint.code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
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

    def start(code: int) -> FailingEndpoint:
        endpoints.append(FailingEndpoint(code))
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
    def result(self) -> re.Match:
        last = self.stdout.splitlines()[-1]
        match = RESULT_RE.fullmatch(last)
        assert match, f"last stdout line is not the result line: {last!r}"
        return match

    @property
    def status(self) -> str:
        return self.result.group(1)


class Node:
    """A temp folder standing in for one node: bin/ first on PATH, a work root, a home."""

    def __init__(self, root: Path, cluster_type: str = "eks", commands: tuple[str, ...] = ()):
        self.root = root
        self.bin = root / "bin"
        self.work = root / "work"
        for folder in (self.bin, self.work, root / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        self.script = root / "collector_script.sh"
        self.script.write_text(compose(cluster_type, commands))
        self.env = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root / "home"),
                    "LANG": "C.UTF-8", "INSTANCE_GROUP": GROUP, "INSTANCE_ID": INSTANCE,
                    "CLUSTER_TYPE": cluster_type, "HPC_WORK_ROOT": str(self.work),
                    "HPC_ITEM_TIMEOUT": "20"}
        self.stand_in("nvidia-smi", NVIDIA_OK)
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


def manifest(files: dict[str, bytes]) -> list[dict[str, str]]:
    lines = files["manifest.tsv"].decode().splitlines()
    assert lines[0] == "item\trc\tseconds\tbytes\ttimed_out"
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def row(rows: list[dict[str, str]], item: str) -> dict[str, str]:
    return next(r for r in rows if r["item"] == item)


def safe(command: str) -> str:
    return re.sub(rb"[^A-Za-z0-9._-]", b"_", command.encode())[:50].decode()


def uploaded(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def run_uploading(s3, node: Node, key: str, **env: str) -> tuple[Run, dict[str, bytes]]:
    run = node.run(HPC_UPLOAD_URL=presigned_put(s3, key), **env)
    body = uploaded(s3, key)
    assert int(run.result.group(4)) == len(body)
    assert run.result.group(5) == hashlib.sha256(body).hexdigest()
    return run, report_files(body)


# ---------------------------------------------------------------- one full EKS run, checked from several sides

EKS_COMMANDS = ("df -h", LITERAL, TWO_LINES, "env", "ps axeww", "nice", "ionice")
SCRIPT_URL = "http://127.0.0.1:9/bucket/collector_script.sh?X-Amz-Signature=5cr1pt5ecret"


@pytest.fixture(scope="module")
def eks_run(s3, tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("eks"), "eks", EKS_COMMANDS)
    key = f"runs/eks/instances/{GROUP}_{INSTANCE}.tar.gz"
    url = presigned_put(s3, key)
    run = node.run(HPC_UPLOAD_URL=url, HPC_SCRIPT_URL=SCRIPT_URL)
    return run, url, uploaded(s3, key)


def test_uploads_the_tarball_the_result_line_describes(eks_run):
    run, _, body = eks_run
    assert run.rc == 0, run.stderr
    assert run.status == "ok"
    assert run.result.group(4) == str(len(body))
    assert run.result.group(5) == hashlib.sha256(body).hexdigest()
    assert run.result.group(6) == f"{GROUP}_{INSTANCE}.tar.gz"


def test_tarball_holds_the_earlier_tool_files(eks_run):
    files = report_files(eks_run[2])
    assert files["instance_group.txt"] == f"{GROUP}\n".encode()
    assert files["instance_id.txt"] == f"{INSTANCE}\n".encode()
    assert files["cluster_type.txt"] == b"eks\n"
    assert files["hostname.txt"].decode().strip() == socket.gethostname()
    assert b"UTC" in files["timestamp.txt"]
    assert files["nvidia_smi.txt"] == b"NVIDIA-SMI 550.54.15 stand-in\n"
    assert b"Filesystem" in files["disk_usage.txt"] and b"Size" in files["disk_usage.txt"]
    assert b"list-units --type=service --all --no-pager" in files["systemd_services.txt"]
    assert b"status containerd --no-pager" in files["containerd_status.txt"]
    assert b"inactive (dead)" in files["kubelet_status.txt"]
    assert not any(name.startswith(("sinfo", "slurmd")) for name in files)
    # resource_config.json and cluster_logs/ are absent here (see the namespace test)
    assert "resource_config.json" not in files and "cluster_logs/" not in files


def test_manifest_and_progress_have_one_entry_per_item(eks_run):
    run, _, body = eks_run
    rows = manifest(report_files(body))
    commands = [f"command_{n:02d}" for n in range(1, len(EKS_COMMANDS) + 1)]
    assert [r["item"] for r in rows] == EKS_ITEMS + commands
    # kubelet's `systemctl status` exits 3 (inactive): collected, so not a failed item
    assert all(r["rc"] == "0" and r["timed_out"] == "0" for r in rows)
    assert all(re.fullmatch(r"\d+\.\d{3}", r["seconds"]) and int(r["bytes"]) > 0 for r in rows)
    assert run.result.group(2) == str(len(rows)) and run.result.group(3) == "0"
    progress = [line for line in run.stdout.splitlines() if re.match(r"\[hpc\] \S+ rc=", line)]
    assert [line.split()[1] for line in progress] == [r["item"] for r in rows]
    assert re.fullmatch(r"\[hpc\] nvidia_smi rc=0 \d+\.\ds \d+(\.\d)?[KM]?B", progress[5])


def test_user_commands_run_literally_one_file_each(eks_run):
    files = report_files(eks_run[2])
    assert b"Filesystem" in files[f"command_01_{safe('df -h')}.txt"]
    assert files[f"command_02_{safe(LITERAL)}.txt"] == b"$HOME `id` \"q\"\n"
    assert files[f"command_03_{safe(TWO_LINES)}.txt"] == b"first\nsecond\n"
    assert "command_02_echo___HOME__id___q__.txt" in files


def test_no_item_sees_the_presigned_urls(eks_run):
    run, url, body = eks_run
    files = report_files(body)
    seen_env = files["command_04_env.txt"].decode()
    seen_ps = files["command_05_ps_axeww.txt"].decode()
    assert "INSTANCE_ID=" in seen_env and "ps axeww" in seen_ps  # the commands did run
    signature = url.split("X-Amz-Signature=")[1]
    for text in [*(f.decode(errors="replace") for f in files.values()), run.stdout, run.stderr]:
        assert signature not in text and "5cr1pt5ecret" not in text
        assert "HPC_UPLOAD_URL" not in text and "HPC_SCRIPT_URL" not in text


def test_items_run_at_low_cpu_and_io_priority(eks_run):
    files = report_files(eks_run[2])
    assert int(files["command_06_nice.txt"]) >= 10
    assert files["command_07_ionice.txt"] == b"best-effort: prio 7\n"


def test_work_folder_is_removed(eks_run):
    assert list(eks_run[0].work.iterdir()) == []


# ---------------------------------------------------------------- other runs

def test_slurm_items_and_keep_dir_without_upload(tmp_path):
    node = Node(tmp_path, "slurm")
    node.stand_in("sinfo", 'echo "sinfo stand-in: $*"')
    keep = tmp_path / "keep"
    run = node.run(HPC_KEEP_DIR=str(keep))
    assert run.rc == 0, run.stdout + run.stderr
    tarball = keep / f"{GROUP}_{INSTANCE}.tar.gz"
    assert run.result.group(5) == hashlib.sha256(tarball.read_bytes()).hexdigest()
    files = report_files(tarball.read_bytes())
    assert [r["item"] for r in manifest(files)] == SLURM_ITEMS
    assert files["sinfo.txt"] == b"sinfo stand-in: \n"
    assert files["sinfo_R.txt"] == b"sinfo stand-in: -R\n"
    assert b"status slurmd --no-pager" in files["slurmd_status.txt"]
    assert "containerd_status.txt" not in files and "kubelet_status.txt" not in files


def test_absent_tools_are_skipped_not_failed(tmp_path):
    node = Node(tmp_path, "slurm")
    (node.bin / "nvidia-smi").unlink()
    for tool in ("nvidia-smi", "sinfo"):
        require(shutil.which(tool, path=node.env["PATH"]) is None, f"needs a machine without a real {tool}")
    run = node.run(HPC_KEEP_DIR=str(tmp_path / "keep"))
    assert run.rc == 0 and run.status == "ok", run.stdout + run.stderr
    assert "[hpc] nvidia_smi skipped: nvidia-smi not present" in run.stdout.splitlines()
    files = report_files((tmp_path / "keep" / f"{GROUP}_{INSTANCE}.tar.gz").read_bytes())
    items = [r["item"] for r in manifest(files)]
    assert "nvidia_smi" not in items and "sinfo" not in items and "slurmd_status" in items


def test_failing_item_gives_ok_with_errors(s3, tmp_path):
    node = Node(tmp_path, "eks", ("true",))
    node.stand_in("nvidia-smi", "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9")
    run, files = run_uploading(s3, node, "fail/one.tar.gz")
    assert run.rc == 3 and run.status == "ok_with_errors"
    assert run.result.group(3) == "1"
    rows = manifest(files)
    assert row(rows, "nvidia_smi")["rc"] == "9" and row(rows, "nvidia_smi")["timed_out"] == "0"
    assert files["nvidia_smi.txt"] == b"NVIDIA-SMI has failed: no driver\n"
    assert [r["rc"] for r in rows if r["item"] != "nvidia_smi"] == ["0"] * (len(rows) - 1)


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


def test_hanging_items_are_killed_and_the_rest_still_uploaded(s3, tmp_path):
    # nvidia-smi wedged behind a TERM-ignoring child; an operator command that ignores
    # TERM itself, so only --kill-after's KILL ends it. The sleeps have unusual lengths so
    # that a survivor can be found.
    node = Node(tmp_path, "eks", ("trap '' TERM; sleep 6002", "echo after"))
    node.stand_in("nvidia-smi", "trap '' TERM\necho partial output\nsleep 6001")
    run, files = run_uploading(s3, node, "hang/one.tar.gz", HPC_ITEM_TIMEOUT="1")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = manifest(files)
    assert [r["item"] for r in rows] == EKS_ITEMS + ["command_01", "command_02"]
    assert row(rows, "nvidia_smi")["rc"] == "124" and row(rows, "nvidia_smi")["timed_out"] == "1"
    assert row(rows, "command_01")["rc"] == "137" and row(rows, "command_01")["timed_out"] == "1"
    assert files["nvidia_smi.txt"].startswith(b"partial output\n")
    assert b"cut after 1s" in files["nvidia_smi.txt"]
    assert all(r["rc"] == "0" for r in rows if r["item"] not in ("nvidia_smi", "command_01"))
    assert files["command_02_echo_after.txt"] == b"after\n"
    assert run.stdout.count("TIMED OUT") == 2
    assert sleeping("6001") == [] and sleeping("6002") == []


def test_node_deadline_caps_items_and_upload_still_happens(s3, tmp_path):
    node = Node(tmp_path, "eks", ("echo late",))
    node.stand_in("nvidia-smi", "exec sleep 600")
    run, files = run_uploading(s3, node, "deadline/one.tar.gz",
                               HPC_ITEM_TIMEOUT="600", HPC_DEADLINE_SECONDS="2")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = manifest(files)
    assert row(rows, "nvidia_smi")["rc"] == "124" and row(rows, "nvidia_smi")["timed_out"] == "1"
    for item in ("disk_usage", "systemd_services", "kubelet_status", "command_01"):
        assert row(rows, item) == {"item": item, "rc": "124", "seconds": "0.000",
                                   "bytes": row(rows, item)["bytes"], "timed_out": "1"}
    assert files["command_01_echo_late.txt"].startswith(b"[hpc] command_01 not run: node deadline")


def test_too_little_free_space_skips_items_with_a_note(s3, tmp_path):
    node = Node(tmp_path, "slurm")
    run, files = run_uploading(s3, node, "space/one.tar.gz", HPC_MIN_FREE_MB="999999999")
    assert run.rc == 3 and run.status == "ok_with_errors"
    rows = manifest(files)
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
        for _ in range(200):
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


@pytest.mark.parametrize("code, attempts", [(403, 1), (500, 4)])
def test_refused_upload_is_upload_failed_and_keeps_the_url_secret(tmp_path, failing_endpoint, code, attempts):
    endpoint = failing_endpoint(code)
    run = Node(tmp_path).run(HPC_UPLOAD_URL=endpoint.url)
    assert run.rc == 4 and run.status == "upload_failed"
    assert len(endpoint.hits) == attempts  # curl --retry covers 5xx, not 403
    assert int(run.result.group(4)) > 0 and re.fullmatch(r"[0-9a-f]{64}", run.result.group(5))
    assert f"error: {code}" in run.stdout
    assert "0badc0ffee" not in run.stdout + run.stderr
    assert list(run.work.iterdir()) == []


@pytest.mark.parametrize("env, message", [
    ({"INSTANCE_ID": ""}, "INSTANCE_ID is not set"),
    ({"INSTANCE_GROUP": "a/b"}, "INSTANCE_GROUP must use only"),
    ({"CLUSTER_TYPE": "k8s"}, "CLUSTER_TYPE must be eks or slurm"),
    ({"CLUSTER_TYPE": "slurm"}, "composed for another cluster type"),
    ({"HPC_UPLOAD_URL": ""}, "HPC_UPLOAD_URL is not set"),
    ({"HPC_UPLOAD_URL": "ftp://x/y"}, "not an http(s) URL"),
    ({"HPC_ITEM_TIMEOUT": "soon"}, "HPC_ITEM_TIMEOUT must be a whole number"),
    ({"HPC_WORK_ROOT": "/nonexistent/hpc"}, "HPC_WORK_ROOT"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, env, message):
    node = Node(tmp_path, "eks")
    run = node.run(**{"HPC_UPLOAD_URL": "http://127.0.0.1:9/b/k?X-Amz-Signature=1", **env})
    assert run.rc == 2
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr, run.stderr
    assert list(node.work.iterdir()) == []


def test_copies_resource_config_and_cluster_logs(tmp_path):
    """/opt/ml and /var/log/aws/clusters exist only on nodes: mount fixtures there in a mount namespace."""
    require_namespaces()
    ml = tmp_path / "ml"
    (ml / "config").mkdir(parents=True)
    (ml / "config" / "resource_config.json").write_text('{"InstanceGroups": []}\n')
    logs = tmp_path / "clusters"
    (logs / "sub").mkdir(parents=True)
    (logs / "sagemaker-cluster-agent.log").write_text("agent line\n")
    (logs / "sub" / "host.log").write_text("host line\n")
    unshare = ["unshare", "--mount", "--propagation", "private", "--fork"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    mounts = ('mount -t tmpfs none /opt && mkdir /opt/ml && mount --bind "$1" /opt/ml && '
              'mount -t tmpfs none /var/log && mkdir -p /var/log/aws/clusters && '
              'mount --bind "$2" /var/log/aws/clusters && shift 2 && exec "$@"')
    node = Node(tmp_path / "node")
    keep = tmp_path / "keep"
    run = node.run((*unshare, "sh", "-c", mounts, "mounts", str(ml), str(logs)), HPC_KEEP_DIR=str(keep))
    assert run.rc == 0, run.stdout + run.stderr
    files = report_files((keep / f"{GROUP}_{INSTANCE}.tar.gz").read_bytes())
    assert files["resource_config.json"] == b'{"InstanceGroups": []}\n'
    assert files["cluster_logs/sagemaker-cluster-agent.log"] == b"agent line\n"
    assert files["cluster_logs/sub/host.log"] == b"host line\n"
    assert "cluster_logs.log" not in files
    rows = manifest(files)
    assert row(rows, "cluster_logs")["rc"] == "0" and int(row(rows, "cluster_logs")["bytes"]) > 0


def test_shellcheck_clean_alone_and_composed(tmp_path):
    require_tool("shellcheck", "shellcheck")
    parts = sorted(BASH_DIR.glob("*.sh"))
    assert {p.name for p in parts} >= {"lib.sh", "common.sh", "eks.sh", "slurm.sh", "collect.sh"}
    for cluster_type in ("eks", "slurm"):
        composed = tmp_path / f"{cluster_type}.sh"
        composed.write_text(compose(cluster_type, [LITERAL, TWO_LINES]))
        parts.append(composed)
    # shellcheck checks each file on its own (nothing here is `source`d)
    proc = subprocess.run(["shellcheck", "-S", "warning", *map(str, parts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
