"""The node's redaction catalogue (bash/redact.sh), run by real bash, grep, sed and awk on real files.

The catalogue's cases are data: tests/fixtures/redaction/*.txt (the format is in its README.md), each
case with the source of its shape. Every rule must redact its lines alone and with the whole catalogue,
and every look-alike must come through untouched. The rest covers how files are rewritten: keys over
several lines, big files read in parts, many changed lines, .gz files, odd bytes, the locale.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from collectors.nodescript import BASH_DIR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redaction"
CASE_RE = re.compile(r"^(redact|keep)(?: ([a-z0-9-]+))?: (.*)$")
INTO_RE = re.compile(r"^into: (.*)$")
MARKER = b"<REDACTED"
# The environment of a node's root shell, without this machine's locale settings.
NODE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


@dataclass(frozen=True)
class Case:
    where: str  # fixture file:line
    kind: str  # "redact" or "keep"
    rule: str | None
    line: str
    into: str | None


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(FIXTURES.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for number, text in enumerate(lines, 1):
            match = CASE_RE.match(text)
            if not match:
                assert text == "" or text.startswith(("#", "into: ")), f"{path.name}:{number}: not a case: {text!r}"
                continue
            kind, rule, line = match.groups()
            into = None
            if kind == "redact":
                follow = INTO_RE.match(lines[number]) if number < len(lines) else None
                assert follow, f"{path.name}:{number}: a redact line needs an into: line after it"
                into = follow.group(1)
            cases.append(Case(f"{path.name}:{number}", kind, rule, line, into))
    return cases


def catalogue() -> list[tuple[str, str, str, str]]:
    """(name, flags, words, regex) of every built-in rule, in order, as redact.sh declares them."""
    script = (f'source {BASH_DIR}/lib.sh; source {BASH_DIR}/redact.sh; r=("${{HPC_BUILTIN_RULES[@]}}"); '
              'for ((i = 0; i < ${#r[@]}; i += 5)); do printf "%s\\t" "${r[@]:i:4}"; printf "\\n"; done')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=NODE_ENV).stdout
    return [tuple(row.split("\t")[:4]) for row in out.splitlines()]


CASES = load_cases()
RULES = catalogue()
RULE_NAMES = [name for name, *_ in RULES]
# A bracket expression of an ERE, [:classes:] and a leading ] included.
BRACKET_RE = re.compile(r"\[\^?\]?(?:[^\]\[]|\[:[a-z]+:\]|\[)*\]")


def run_redaction(work: Path, paths: list[Path], *, only: str | None = None, patterns: str = "",
                  env: dict[str, str] | None = None) -> dict[Path, int]:
    """Redacts PATHS as a node does (prepare, then hpc_redact_files); returns each file's count.

    ONLY keeps that one built-in rule in the catalogue; PATTERNS are the operator's.
    """
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    (work / "list").write_bytes(b"".join(f"{p}\0".encode() for p in paths))
    keep_one = ('r=("${HPC_BUILTIN_RULES[@]}"); HPC_BUILTIN_RULES=(); for ((i = 0; i < ${#r[@]}; i += 5)); do '
                '[[ ${r[i]} == "$2" ]] && HPC_BUILTIN_RULES=("${r[@]:i:5}"); done; ') if only else ""
    script = (f"source {BASH_DIR}/lib.sh; source {BASH_DIR}/redact.sh; {keep_one}HPC_REDACT_PATTERNS=$3; "
              'hpc_check_redact_patterns; hpc_prepare_redaction "$1"; hpc_redact_files "$1" "$1/list" "$1/done"')
    subprocess.run(["bash", "-c", script, "redact", str(work), only or "", patterns], check=True, timeout=120,
                   env={**NODE_ENV, **(env or {})})
    done = (work / "done").read_bytes().split(b"\0")
    counts = {Path(name.decode()): int(count) for count, name in (entry.split(b"\t") for entry in done if entry)}
    assert set(counts) == set(paths), "a file was not finished"
    return counts


def redact(work: Path, files: dict[str, bytes], **options) -> dict[str, tuple[bytes, int]]:
    """Writes FILES (name -> bytes) into a report folder and redacts them; name -> (bytes after, count)."""
    paths = {name: work / "report" / name for name in files}
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
    counts = run_redaction(work, list(paths.values()), **options)
    return {name: (path.read_bytes(), counts[path]) for name, path in paths.items()}


def as_file(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def markers(data: bytes) -> int:
    return data.count(MARKER)


# ---------------------------------------------------------------- the catalogue

def test_every_rule_has_lines_to_redact_and_lines_to_keep():
    assert len(RULE_NAMES) == len(set(RULE_NAMES)) and len(RULE_NAMES) >= 30
    for name in RULE_NAMES:
        assert any(c.kind == "redact" and c.rule == name for c in CASES), f"{name}: no line to redact"
        assert any(c.kind == "keep" and c.rule == name for c in CASES), f"{name}: no look-alike to keep"
    unknown = {c.rule for c in CASES if c.rule} - set(RULE_NAMES)
    assert not unknown, f"fixtures name rules the catalogue lacks: {unknown}"


def test_rule_words_are_plain_lowercase_text():
    # grep -i takes them as they are; only `.` needs escaping in a regex (redact.any).
    for name, flags, words, _ in RULES:
        assert flags in ("i", "-"), name
        assert re.fullmatch(r"[a-z0-9 ._:/=-]+(\|[a-z0-9 ._:/=-]+)*", words), f"{name}: {words!r}"


def test_rule_regexes_keep_the_forms_the_fast_paths_rely_on():
    """Case-blind rules spell letters as [Xx] outside brackets only, so their brackets must hold
    both cases; quick forms run on grep -n's "N:LINE", so a line start may only be `(^|`."""
    for name, flags, _, regex in RULES:
        brackets = BRACKET_RE.findall(regex.replace("\\\\", ""))
        if flags == "i":
            for bracket in brackets:
                assert ("A-Z" in bracket) == ("a-z" in bracket), f"{name}: {bracket} holds one case"
        outside = BRACKET_RE.sub("", regex.replace("\\\\", ""))
        assert outside.count("^") == outside.count("(^|"), f"{name}: a ^ other than (^|"


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_each_rule_alone_redacts_its_lines(tmp_path, rule):
    """Its lines change with only this rule in the catalogue: it is this rule that does the work."""
    lines = [c.line for c in CASES if c.kind == "redact" and c.rule == rule]
    data, count = redact(tmp_path, {"f": as_file(lines)}, only=rule)["f"]
    after = data.decode().splitlines()
    for before, line in zip(lines, after):
        assert line != before and MARKER.decode() in line, f"{rule} left {before!r} as it was"
    assert count == markers(data) - markers(as_file(lines)) > 0


def test_the_catalogue_redacts_every_case_and_keeps_every_look_alike(tmp_path):
    lines = [c.line for c in CASES]
    data, count = redact(tmp_path, {"f": as_file(lines)})["f"]
    after = data.decode().splitlines()
    assert len(after) == len(CASES)
    for case, line in zip(CASES, after):
        expected = case.into if case.kind == "redact" else case.line
        assert line == expected, f"{case.where} ({case.kind} {case.rule}):\n got  {line!r}\n want {expected!r}"
    assert count == markers(data) - markers(as_file(lines))


def test_a_redacted_file_is_left_alone_the_second_time(tmp_path):
    """No replacement matches any rule again: that is what makes the counts exact."""
    first, _ = redact(tmp_path / "first", {"f": as_file([c.line for c in CASES])})["f"]
    second, count = redact(tmp_path / "second", {"f": first})["f"]
    assert second == first and count == 0


def test_the_operators_patterns_run_after_the_catalogue(tmp_path):
    data, count = redact(tmp_path, {"f": b"ticket corp-12345 opened\nabab twice, ab once\npassword=x corp-7\n"},
                         patterns="corp-[0-9]+\n(ab)\\1")["f"]
    assert data == b"ticket <REDACTED> opened\n<REDACTED> twice, ab once\npassword=<REDACTED> <REDACTED>\n"
    assert count == 4


# ---------------------------------------------------------------- keys over several lines

# A key body: made-up base64, 64 characters a line as PEM writes it.
BODY = ["RkFLRS1LRVktTUFURVJJQUwtMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw"] * 3 + ["RkFLRQ=="]


def test_a_key_over_several_lines_keeps_its_frame_and_loses_its_body(tmp_path):
    text = [
        "before token=fake-token",
        "-----BEGIN RSA PRIVATE KEY-----", *BODY, "-----END RSA PRIVATE KEY-----",
        # YAML block scalar (a Kubernetes secret's tls.key in a manifest), with a header.
        "  tls.key: |", "    -----BEGIN EC PRIVATE KEY-----", "    Proc-Type: 4,ENCRYPTED",
        "    DEK-Info: AES-128-CBC,0123456789ABCDEF", "", *[f"    {b}" for b in BODY],
        "    -----END EC PRIVATE KEY-----",
        # Printed by a program into the journal: every line has its prefix.
        "Jan 12 03:14:15 ip-10-1-2-3 init.sh[812]: -----BEGIN OPENSSH PRIVATE KEY-----",
        *[f"Jan 12 03:14:15 ip-10-1-2-3 init.sh[812]: {b}" for b in BODY],
        "Jan 12 03:14:15 ip-10-1-2-3 init.sh[812]: -----END OPENSSH PRIVATE KEY-----",
        "after password=fake-pass",
    ]
    data, count = redact(tmp_path, {"f": as_file(text)})["f"]
    assert data.decode().splitlines() == [
        "before token=<REDACTED>",
        "-----BEGIN RSA PRIVATE KEY-----", "<REDACTED PRIVATE KEY>", "-----END RSA PRIVATE KEY-----",
        "  tls.key: |", "    -----BEGIN EC PRIVATE KEY-----", "<REDACTED PRIVATE KEY>",
        "    -----END EC PRIVATE KEY-----",
        "Jan 12 03:14:15 ip-10-1-2-3 init.sh[812]: -----BEGIN OPENSSH PRIVATE KEY-----", "<REDACTED PRIVATE KEY>",
        "Jan 12 03:14:15 ip-10-1-2-3 init.sh[812]: -----END OPENSSH PRIVATE KEY-----",
        "after password=<REDACTED>",
    ]
    assert count == 5  # three keys, two keyed values


def test_a_key_cut_short_loses_its_body_up_to_the_first_line_of_another_kind(tmp_path):
    # A capped log (its head cut off) or a crash: no END line. The block ends at the first line
    # that is not key material, which goes through the rules as usual.
    text = ["-----BEGIN PRIVATE KEY-----", *BODY[:2], "[12345.678] kernel: usb 1-1: reset, secret=fake.",
            "more log."]
    data, count = redact(tmp_path, {"f": as_file(text)})["f"]
    assert data.decode().splitlines() == ["-----BEGIN PRIVATE KEY-----", "<REDACTED PRIVATE KEY>",
                                          "[12345.678] kernel: usb 1-1: reset, secret=<REDACTED>", "more log."]
    assert count == 2


# ---------------------------------------------------------------- how files are rewritten

def ordinary(number: int) -> bytes:
    return (f"Jan 12 03:14:15 ip-10-1-2-3 kernel: [{number}.000001] NVRM: Xid (PCI:0000:86:00): 79, "
            f"pid={number}, GPU-5f2b1c3d-4e6a-7b8c-9d0e-1f2a3b4c5d6e sha256:{number:064x}\n").encode()


def test_a_big_file_read_in_parts_gets_exactly_its_secret_lines_replaced(tmp_path):
    """Over 32 MB the first look runs in parts (4 here: a stand-in nproc says 4 CPUs); secrets
    right at the part boundaries and on the first and last lines are all found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nproc").write_text("#!/bin/sh\necho 4\n")
    (bin_dir / "nproc").chmod(0o755)
    lines = [ordinary(n) for n in range(300_000)]
    secret_at = [0, 74_999, 75_000, 75_001, 149_999, 150_000, 224_999, 225_000, 299_999]
    for n in secret_at:
        lines[n] = f"app[{n}]: export DB_PASSWORD=fake-{n}\n".encode()
    original = b"".join(lines)
    assert len(original) > 32 * 2**20
    data, count = redact(tmp_path / "work", {"big.log": original},
                         env={"PATH": f"{bin_dir}:{NODE_ENV['PATH']}"})["big.log"]
    expected = list(lines)
    for n in secret_at:
        expected[n] = f"app[{n}]: export DB_PASSWORD=<REDACTED>\n".encode()
    assert data == b"".join(expected) and count == len(secret_at)


def test_many_changed_lines_and_a_last_line_without_newline_come_out_whole(tmp_path):
    # Over 64 changed lines the whole file goes through sed at once instead of the splice;
    # the missing newline at the end stays missing either way.
    many = b"".join(f"{n} token={n}\n".encode() for n in range(100)) + b"last password=x"
    few = b"one token=1\ntwo\nlast password=x"
    out = redact(tmp_path, {"many": many, "few": few})
    assert out["many"] == (b"".join(f"{n} token=<REDACTED>\n".encode() for n in range(100))
                           + b"last password=<REDACTED>", 101)
    assert out["few"] == (b"one token=<REDACTED>\ntwo\nlast password=<REDACTED>", 2)


def test_odd_bytes_nul_crlf_and_long_lines(tmp_path):
    data = (b"\x00\x00\x00 crash filler \x00 token=fake\x00tail\n"
            b"windows line password=fake-pw\r\n"
            + b"x" * 200_000 + b" secret=fake " + b"y" * 200_000 + b"\n"
            b"\xff\xfe not utf-8 \xff password=fa\xffke\n")
    out, count = redact(tmp_path, {"f": data})["f"]
    assert out == (b"\x00\x00\x00 crash filler \x00 token=<REDACTED>\n"
                   b"windows line password=<REDACTED>\r\n"
                   + b"x" * 200_000 + b" secret=<REDACTED> " + b"y" * 200_000 + b"\n"
                   b"\xff\xfe not utf-8 \xff password=<REDACTED>\n")
    assert count == 4


def test_a_utf8_locale_on_the_node_changes_nothing(tmp_path):
    """Nodes run with LANG=C.UTF-8 or en_US.UTF-8: grep, sed and awk must still work bytewise (in
    UTF-8, `.` stops at the first byte that is not UTF-8, and the key after it would be shipped)."""
    data = b'{"k": "-----BEGIN PRIVATE KEY-----\\n\xff\xfeRkFLRQ==\\n-----END PRIVATE KEY-----"} password=fa\xffke\n'
    out, count = redact(tmp_path, {"f": data}, env={"LANG": "C.UTF-8"})["f"]
    assert out == b'{"k": "<REDACTED PRIVATE KEY>"} password=<REDACTED>\n' and count == 2


def test_gz_files_are_redacted_through_their_text(tmp_path):
    # A rotated log with its secret on the first line and megabytes after it: the whole text is
    # read (a first look that stopped early once cut gzip short and took the file for clean).
    rotated = b"app: password=fake-early\n" + b"".join(ordinary(n) for n in range(40_000))
    clean = gzip.compress(b"nothing to see\n" * 1000)
    # A .gz that is not gzip (a tool's half-written file) is redacted as the text it is.
    out = redact(tmp_path, {"kern.log.1.gz": gzip.compress(rotated), "clean.gz": clean,
                            "partial.log.gz": b"token=fake-partial\n"})
    data, count = out["kern.log.1.gz"]
    assert gzip.decompress(data) == rotated.replace(b"fake-early", b"<REDACTED>") and count == 1
    assert out["clean.gz"] == (clean, 0)
    assert out["partial.log.gz"] == (b"token=<REDACTED>\n", 1)


def test_a_file_with_nothing_to_redact_is_not_rewritten(tmp_path):
    path = tmp_path / "report" / "f"
    path.parent.mkdir()
    path.write_bytes(b"token bucket refilled, pass 3 of 5, key rotation scheduled\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = path.stat()
    assert run_redaction(tmp_path, [path]) == {path: 0}
    after = path.stat()
    assert (after.st_ino, after.st_mtime) == (before.st_ino, before.st_mtime)
