"""The node side uses only what the oldest HyperPod node has: curl 7.68 (Ubuntu 20.04) and bash 4.2.

Sandbox nodes share the host's newer curl and bash, so running the scripts there cannot catch a newer
option; this checks the text instead. The lists come from the tools' own records:

- curl: the `Added:` field of each option's page in curl/curl docs/cmdline-opts/<option>.md, and the
  "(Added in ...)" notes of docs/cmdline-opts/write-out.md for `--write-out` variables (read at curl
  commit 5c61e16869): every option and variable added after 7.68.0.
- bash: bminor/bash NEWS (at 637f5c86), the sections "new features added to bash-4.3" and later; each
  entry below names the section and its letter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from collectors.transports import ssm

BASH_DIR = Path(__file__).resolve().parents[2] / "bash"

CURL_OPTIONS_AFTER_7_68 = {
    "--mail-rcpt-allowfails": "7.69.0", "--ssl-revoke-best-effort": "7.70.0", "--retry-all-errors": "7.71.0",
    "--curves": "7.73.0", "--output-dir": "7.73.0", "--hsts": "7.74.0", "--aws-sigv4": "7.75.0",
    "--create-file-mode": "7.75.0", "--doh-cert-status": "7.76.0", "--doh-insecure": "7.76.0",
    "--fail-with-body": "7.76.0", "--proxy-ssl-auto-client-cert": "7.77.0", "--ssl-auto-client-cert": "7.77.0",
    "--hostpubsha256": "7.80.0", "--form-escape": "7.81.0", "--json": "7.82.0", "--no-clobber": "7.83.0",
    "--remove-on-error": "7.83.0", "--rate": "7.84.0", "--url-query": "7.87.0", "--http3-only": "7.88.0",
    "--proxy-http2": "8.1.0", "--ca-native": "8.2.0", "--haproxy-clientip": "8.2.0", "--proxy-ca-native": "8.2.0",
    "--trace-ids": "8.2.0", "--trace-config": "8.3.0", "--variable": "8.3.0", "--ipfs-gateway": "8.4.0",
    "--ech": "8.8.0", "--ip-tos": "8.9.0", "--keepalive-cnt": "8.9.0", "--mptcp": "8.9.0",
    "--vlan-priority": "8.9.0", "--dump-ca-embed": "8.10.0", "--skip-existing": "8.10.0",
    "--tls-earlydata": "8.11.0", "--ssl-sessions": "8.12.0", "--upload-flags": "8.13.0", "--sigalgs": "8.14.0",
    "--follow": "8.16.0", "--out-null": "8.16.0", "--parallel-max-host": "8.16.0", "--knownhosts": "8.17.0",
    "--proxy-http3": "8.21.0", "--httpsig-algo": "8.22.0", "--httpsig-headers": "8.22.0",
    "--httpsig-keyid": "8.22.0", "--httpsig-key": "8.22.0",
}
CURL_WRITE_OUT_AFTER_7_68 = {
    "json": "7.70.0", "method": "7.72.0", "num_headers": "7.73.0", "errormsg": "7.75.0", "exitcode": "7.75.0",
    "onerror": "7.75.0", "url": "7.75.0", "urlnum": "7.75.0", "referer": "7.76.0", "header_json": "7.83.0",
    "certs": "7.88.0", "num_certs": "7.88.0", "conn_id": "8.2.0", "xfer_id": "8.2.0", "proxy_used": "8.7.0",
    "num_retries": "8.9.0", "time_posttransfer": "8.10.0", "time_queue": "8.12.0", "tls_earlydata": "8.13.0",
}
# `%{url.host}`-style parts (8.1.0), `%header{name}` (7.84.0) and `%output{file}` (8.3.0).
CURL_WRITE_OUT_FORMS_AFTER_7_68 = {r"%\{urle?\.\w+\}": "8.1.0", r"%header\{": "7.84.0", r"%output\{": "8.3.0"}


@dataclass(frozen=True)
class BashFeature:
    what: str
    since: str  # "bash-4.3 NEWS w", ...
    pattern: str


BASH_FEATURES_AFTER_4_2 = [
    BashFeature("wait -n", "bash-4.3 NEWS cc", r"\bwait\s+(?:-\w+\s+)*-\w*n"),
    BashFeature("namerefs (declare/local/typeset -n)", "bash-4.3 NEWS w",
                r"\b(?:declare|local|typeset)\s+(?:-\w+\s+)*-\w*n\w*\s"),
    BashFeature("assigning or unsetting a negative array subscript", "bash-4.3 NEWS x",
                r"\b\w+\[-\d+\]\+?=|\bunset\s+[^;\n]*\b\w+\[-"),
    BashFeature("[[ -v array[subscript] ]]", "bash-4.3 NEWS ll", r"-v\s+['\"]?\w+\["),
    BashFeature("shopt globasciiranges", "bash-4.3 NEWS e", r"\bshopt\s[^;\n]*\bglobasciiranges\b"),
    BashFeature("mapfile/readarray -d", "bash-4.4 NEWS d", r"\b(?:mapfile|readarray)\s[^;\n]*-d\b"),
    BashFeature("${parameter@operator} transformations", "bash-4.4 NEWS o (U, u, L, K: 5.1; k: 5.2)",
                r"\$\{[#!]?\w+(?:\[[^]]*\])?@[QEPAaULuKk]\}"),
    BashFeature("local -", "bash-4.4 NEWS s", r"\blocal\s+-(?:\s|;|$)"),
    BashFeature("shopt inherit_errexit", "bash-4.4 NEWS ii", r"\bshopt\s[^;\n]*\binherit_errexit\b"),
    BashFeature("BASH_ARGV0", "bash-5.0 NEWS e", r"\bBASH_ARGV0\b"),
    BashFeature("shopt localvar_inherit or assoc_expand_once", "bash-5.0 NEWS o, w",
                r"\bshopt\s[^;\n]*\b(?:localvar_inherit|assoc_expand_once|localvar_unset)\b"),
    BashFeature("SRANDOM", "bash-5.1 NEWS i", r"\bSRANDOM\b"),
    BashFeature("wait -p VARNAME", "bash-5.1 NEWS q", r"\bwait\s+(?:-\w+\s+)*-\w*p\b"),
    BashFeature("shopt patsub_replacement or array_expand_once", "bash-5.2 NEWS x, bash-5.3 NEWS t",
                r"\bshopt\s[^;\n]*\b(?:patsub_replacement|array_expand_once)\b"),
]
# Bash 5.0's clocks (bash-5.0 NEWS b, c) are empty on 4.2: read them only behind a test that they are
# set, in the same function (lib.sh's hpc_clock falls back to date).
BASH5_CLOCKS = ("EPOCHSECONDS", "EPOCHREALTIME")


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line without its comment), backslash-continued lines joined onto their first."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.lstrip().startswith("#"):
            line = ""
        line = re.sub(r"(^|\s)#[^'\"]*$", r"\1", line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def curl_findings(text: str) -> list[str]:
    findings = []
    for number, line in code_lines(text):
        for command in re.finditer(r"(?:^|[\s;|&(])curl\s([^;|&]*)", line):
            arguments = command.group(1)
            for option in re.findall(r"(?<![\w-])--[a-z0-9-]+", arguments):
                if option in CURL_OPTIONS_AFTER_7_68:
                    findings.append(f"{number}: curl {option} is curl {CURL_OPTIONS_AFTER_7_68[option]}")
            for variable in re.findall(r"%\{(\w+)\}", arguments):
                if variable in CURL_WRITE_OUT_AFTER_7_68:
                    findings.append(f"{number}: curl -w %{{{variable}}} is curl {CURL_WRITE_OUT_AFTER_7_68[variable]}")
            findings += [f"{number}: curl -w {form} is curl {since}"
                         for form, since in CURL_WRITE_OUT_FORMS_AFTER_7_68.items() if re.search(form, arguments)]
    return findings


def bash_findings(text: str) -> list[str]:
    findings = []
    lines = code_lines(text)
    for number, line in lines:
        findings += [f"{number}: {feature.what} is {feature.since}"
                     for feature in BASH_FEATURES_AFTER_4_2 if re.search(feature.pattern, line)]
    return findings + unguarded_clocks(lines)


def unguarded_clocks(lines: list[tuple[int, str]]) -> list[str]:
    """Uses of EPOCHSECONDS/EPOCHREALTIME not preceded, in their function, by `-n ${NAME:-}`."""
    findings, guarded = [], set()
    for number, line in lines:
        if re.match(r"^\s*(?:function\s+)?\w+\s*\(\)", line):
            guarded = set()
        for name in BASH5_CLOCKS:
            if re.search(rf"-n\s+\"?\$\{{{name}:-\}}", line):
                guarded.add(name)
            elif re.search(rf"\b{name}\b", line) and name not in guarded:
                findings.append(f"{number}: {name} is bash-5.0 NEWS b/c, read without testing it is set")
    return findings


def node_side_texts() -> dict[str, str]:
    """bash/*.sh, and the shell lines the SSM transport types on nodes (curl runs there too)."""
    texts = {path.name: path.read_text() for path in sorted(BASH_DIR.glob("*.sh"))}
    texts["ssm.py typed lines"] = "\n".join([ssm.FETCH, ssm.RUN_ATTACHED, ssm.RUN_DETACHED, ssm.AS_ROOT])
    return texts


def test_the_node_side_uses_no_curl_newer_than_7_68_and_no_bash_newer_than_4_2():
    findings = [f"{name}:{finding}" for name, text in node_side_texts().items()
                for finding in curl_findings(text) + bash_findings(text)]
    assert not findings, "\n".join(findings)


def test_the_check_finds_each_newer_feature():
    """Each listed feature, one a line, is found on its line; what curl 7.68 and bash 4.2 have is not."""
    newer = (
        [f"curl -fsS {option} https://x" for option in CURL_OPTIONS_AFTER_7_68]
        + [f"curl -w '%{{{name}}}' https://x" for name in CURL_WRITE_OUT_AFTER_7_68]
        + ["curl -w '%{url.host}' https://x", "curl -w '%header{etag}' x", "curl -w '%output{f}' x",
           "wait -n", "wait -p pid", "local -n ref=$1", "declare -rn ref=x", "typeset -n r",
           "a[-1]=x", "unset 'a[-1]'", "[[ -v map[key] ]]", "mapfile -d '' -t names <f", "readarray -t -d , x",
           'echo "${x@Q}"', 'echo "${y@U}"', 'echo "${z[0]@a}"', 'echo "${m@k}"', "local -",
           "shopt -s inherit_errexit", "echo $BASH_ARGV0", "shopt -s localvar_inherit", "echo $SRANDOM",
           "shopt -s patsub_replacement", "t=$EPOCHSECONDS", "shopt -s globasciiranges",
           "shopt -s assoc_expand_once"])
    text = "\n".join(newer)
    found_on = {int(finding.split(":")[0]) for finding in curl_findings(text) + bash_findings(text)}
    missed = [line for number, line in enumerate(newer, 1) if number not in found_on]
    assert not missed, missed
    older = "\n".join([
        "printf 'url = \"%s\"\\n' \"$u\" | curl -fsS --retry 3 --retry-connrefused --connect-timeout 10 \\",
        "  --max-time 60 --retry-max-time 60 -X PUT -T f -o /dev/null --config - -w '%{http_code}'",
        "hpc_clock() {", '  if [[ -n ${EPOCHREALTIME:-} ]]; then', "    m=${EPOCHREALTIME/[.,]/}", "  fi", "}",
        "wait \"$pid\"", "local name=$1", "declare -A map", "echo ${a[-1]}", "mapfile -t lines <f",
        "exec {fd}</dev/null", "shopt -s nullglob lastpipe", "# wait -n in a comment", "x=1  # local -n y",
    ])
    assert curl_findings(older) + bash_findings(older) == []
