"""Reading bundles: streamed in blocks of whole lines, line numbers exact, damaged bundles kept."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc

from collectors.report import bundles
from collectors.report.catalog import load
from collectors.report.engine import build_report
from collectors.report.bundles import blocks
from collectors.report.scan import scan_bundle, scan_bundles
from tests.fixtures.bundles.builder import (
    GROUP,
    HOSTNAME,
    INSTANCE_ID,
    RunBuilder,
    changed_files,
    write_bundle,
)

XID_79 = "kernel: NVRM: Xid (PCI:0000:53:00): 79, pid=1, GPU has fallen off the bus."


def xid_hits(scan):
    return [hit for hit in scan.hits if hit.rule == "gpu.xid"]


def test_line_numbers_hold_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles, "BLOCK_BYTES", 64)  # many blocks, lines cut at every block edge
    filler = "".join(f"Nov 22 10:00:{n % 60:02d} ip-10-1-4-1 kernel: line {n}\n" for n in range(500))
    files = changed_files(replace={"kern.log": filler + XID_79 + "\n" + filler + XID_79 + "\n"})
    result = scan_bundle(write_bundle(tmp_path, GROUP, INSTANCE_ID, files), load())
    (hit,) = xid_hits(result)
    assert hit.count == 2
    assert [(item.file, item.line) for item in hit.evidence] == [("kern.log", 501), ("kern.log", 1002)]


def test_blocks_end_at_line_ends_and_keep_every_byte():
    text = b"".join(b"x" * (n % 97) + b"\n" for n in range(3000)) + b"no newline at the end"
    original = bundles.BLOCK_BYTES
    try:
        bundles.BLOCK_BYTES = 1000
        pieces = list(blocks(io.BytesIO(text)))
    finally:
        bundles.BLOCK_BYTES = original
    assert b"".join(pieces) == text
    assert all(piece.endswith(b"\n") for piece in pieces[:-1])


def test_gzipped_rotated_logs_are_read(tmp_path):
    files = changed_files()
    files["rotated_logs/kern.log.2.gz"] = gzip.compress(f"Nov 20 07:00:00 {HOSTNAME} {XID_79}\n".encode())
    result = scan_bundle(write_bundle(tmp_path, GROUP, INSTANCE_ID, files), load())
    (hit,) = xid_hits(result)
    assert hit.evidence[0].file == "rotated_logs/kern.log.2.gz"


def test_a_truncated_bundle_keeps_what_was_read_and_becomes_a_finding(tmp_path):
    run = RunBuilder(tmp_path)
    files = {"kern.log": (XID_79 + "\n").encode(), "zz_big.log": b"filler line\n" * 200_000}
    run.add_node(INSTANCE_ID, HOSTNAME, files)
    bundle = next((run.run_dir / "results").glob("*.tar.gz"))
    bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    doc = build_report(run.write(), run.state(), workers=1)
    by_id = {finding["id"]: finding for finding in doc["findings"]}
    assert by_id["gpu.xid:79"]["node_set"] == HOSTNAME
    evidence = by_id["collect.bundle_missing"]["nodes"][0]["evidence"][0]["text"]
    assert bundle.name in evidence and "Error" in evidence


def test_a_big_member_is_streamed_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles, "BLOCK_BYTES", 256 * 1024)
    big = b"".join(b"Nov 22 10:00:00 ip-10-1-4-1 kernel: nothing to see here, line %d\n" % n for n in range(200_000))
    files = changed_files(replace={"kern.log": (big + XID_79.encode() + b"\n").decode()})
    bundle = write_bundle(tmp_path, GROUP, INSTANCE_ID, files)
    catalog = load()
    tracemalloc.start()
    try:
        result = scan_bundle(bundle, catalog)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(big) > 12 * 2**20
    assert peak < 4 * 2**20  # a few blocks, never the 12 MB file
    assert xid_hits(result)[0].evidence[0].line == 200_001


def test_worker_processes_give_the_same_report_as_one_process(tmp_path):
    paths = []
    for number in range(bundles.PARALLEL_FROM + 2):
        hostname = f"ip-10-1-4-{number + 1}"
        extra = {"kern.log": f"{hostname} {XID_79}"} if number % 5 == 0 else None
        paths.append(write_bundle(tmp_path, GROUP, f"i-0a1b2c3d4e5f6{number:04d}",
                                  changed_files(append=extra, hostname=hostname)))
    serial = scan_bundles(paths, workers=1, catalog=load())
    parallel = scan_bundles(paths, workers=2, catalog=load())
    assert parallel == serial
    assert sum(1 for result in serial if xid_hits(result)) == 4


def test_a_bundle_named_otherwise_is_still_read(tmp_path):
    path = tmp_path / "odd-name.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        content = (XID_79 + "\n").encode()
        info = tarfile.TarInfo("top/kern.log")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    result = scan_bundle(path, load())
    assert result.instance_id is None and xid_hits(result)


def test_a_test_fed_only_the_lines_with_its_literal_still_names_the_right_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles, "BLOCK_BYTES", 64)  # lines cut at block edges too
    filler = "".join(f"Nov 22 10:00:{n % 60:02d} ip-10-1-4-1 kernel: line {n}\n" for n in range(300))
    failed = "Nov 22 10:01:02 ip-10-1-4-1 systemd[1]: kubelet.service: Failed with result 'exit-code'.\n"
    files = changed_files(replace={"syslog": filler + failed + filler})
    result = scan_bundle(write_bundle(tmp_path, GROUP, INSTANCE_ID, files), load())
    (hit,) = [hit for hit in result.hits if hit.rule == "svc.failed"]
    assert hit.key == "kubelet (restarted since)"
    assert [(item.file, item.line) for item in hit.evidence] == [("syslog", 301)]
