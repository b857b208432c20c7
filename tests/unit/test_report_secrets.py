"""The report's second net (issue 14): secrets the nodes' redaction missed, found by Kingfisher in the
downloaded bundles and listed as findings (file, line, kind), never with their value.

Planted secrets are made here from a seeded random source, in the shapes the scanner's rules name
(GitHub's `ghp_` + 36, Slack's `xoxb-` tokens, AWS key id and secret pairs, ...): fake values that
look real, since scanners rightly pass over AWS's documented EXAMPLE keys. Look-alikes and markers
come from tests/fixtures/redaction, the node catalogue's own cases.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import string
import tarfile
from pathlib import Path

import pytest

from collectors import pipeline
from collectors.report.kube import KUBECTL_BUNDLE
from collectors.report.secrets import FINDING_RULE, bundle_suspects
from collectors.settings import Settings
from tests.fixtures.bundles.builder import RunBuilder, add_directory, add_file, changed_files

REDACTION_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "redaction"
CASE_RE = re.compile(r"^(?P<kind>redact [^:]+|into|keep[^:]*): (?P<line>.*)$")
LETTERS_DIGITS = string.ascii_letters + string.digits


def planted_secrets(seed: int = 14) -> dict[str, tuple[str, list[str]]]:
    """Scanner rule id -> (a log line holding fake secrets of that kind, the secret values in it)."""
    rnd = random.Random(seed)

    def text(alphabet: str, length: int) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(length))

    key_id, secret_key = "AKIA" + text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16), text(LETTERS_DIGITS + "/+", 40)
    github, hf = "ghp_" + text(LETTERS_DIGITS, 36), "hf_" + text(string.ascii_letters, 34)
    slack = f"xoxb-{text(string.digits, 12)}-{text(string.digits, 13)}-{text(LETTERS_DIGITS, 24)}"
    password = text(LETTERS_DIGITS, 16)
    return {
        "betterleaks.aws-access-token": (f"export AWS_ACCESS_KEY_ID={key_id} AWS_SECRET_ACCESS_KEY={secret_key}",
                                         [key_id, secret_key]),
        "betterleaks.github-pat": (f"Jan 12 03:14:15 ip-10-1-4-1 train.sh[4242]: cloning with {github}", [github]),
        "betterleaks.slack-bot-token": (f"slack: posting as {slack}", [slack]),
        "betterleaks.huggingface-access-token": (f"HF_TOKEN={hf} python train.py", [hf]),
        "betterleaks.generic-credential-uri": (f"could not connect: postgres://trainer:{password}@db.internal/runs",
                                               [password]),
    }


def fixture_lines(*kinds: str) -> list[str]:
    """The lines of tests/fixtures/redaction of the given kinds: `into` (as the node ships them,
    with its markers) or `keep` (look-alikes no rule may touch)."""
    lines = []
    for path in sorted(REDACTION_FIXTURES.glob("*.txt")):
        for raw in path.read_text().splitlines():
            case = CASE_RE.match(raw)
            if case and case["kind"].split(" ")[0] in kinds:
                lines.append(case["line"])
    return lines


def run_with(root: Path, syslog: dict[int, list[str]], extra: dict[int, dict[str, bytes]] | None = None) -> RunBuilder:
    run = RunBuilder(root)
    for number in (1, 2, 3):
        host = f"ip-10-1-4-{number}"
        files = changed_files(append={"syslog": "\n".join(syslog[number])} if syslog.get(number) else None,
                              hostname=host)
        files.update((extra or {}).get(number, {}))
        run.add_node(f"i-0a1b2c3d4e5f6000{number}", host, files)
    run.write()
    return run


def node_bundle(run: RunBuilder, number: int) -> Path:
    return run.run_dir / "results" / f"worker-group-1_i-0a1b2c3d4e5f6000{number}.tar.gz"


def report(root: Path, capsys, **options) -> tuple[dict, str]:
    settings = Settings.from_config({"runs_dir": str(root)}, cluster="hp-test")
    assert pipeline.run_stage("report", settings, options) == 0
    run_dir = root / "hp-test" / "20261122_110000"
    doc = json.loads((run_dir / "findings.json").read_text())
    everything = "\n".join([capsys.readouterr().out, (run_dir / "findings.json").read_text(),
                            (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()])
    return doc, everything


def secret_findings(doc: dict) -> dict[str, dict]:
    return {finding["key"]: finding for finding in doc["findings"] if finding["rule"] == FINDING_RULE}


def test_planted_secrets_are_findings_with_file_line_and_kind_and_their_values_are_never_shown(tmp_path, capsys):
    planted = planted_secrets()
    lines = ["Nov 22 10:00:00 ip-10-1-4-2 systemd[1]: Started Session 42 of User root."]
    lines += [line for line, _ in planted.values()]
    run_with(tmp_path, {2: lines})

    doc, everything = report(tmp_path, capsys)

    found = secret_findings(doc)
    assert set(found) == set(planted)
    syslog_lines = changed_files(hostname="ip-10-1-4-2")["syslog"].decode().count("\n")
    for number, kind in enumerate(planted, start=2):
        finding = found[kind]
        assert finding["severity"] == "high" and finding["node_set"] == "ip-10-1-4-2"
        (node,) = finding["nodes"]
        assert node["instance_id"] == "i-0a1b2c3d4e5f60002"
        assert [(item["file"], item["line"]) for item in node["evidence"]] == [("syslog", syslog_lines + number)]
    assert doc["nodes"]["healthy"] == 2  # the node with secrets in its bundle is not counted healthy
    shown = [value for _, values in planted.values() for value in values if value in everything]
    assert shown == []


def test_the_nodes_markers_and_the_look_alikes_the_catalogue_keeps_are_never_suspected(tmp_path, capsys):
    markers, look_alikes = fixture_lines("into"), fixture_lines("keep")
    assert len(markers) > 50 and len(look_alikes) > 50  # the fixtures are read, not an empty list
    run_with(tmp_path, {1: markers, 3: look_alikes})

    doc, _ = report(tmp_path, capsys)

    assert secret_findings(doc) == {}


def test_the_lines_the_catalogue_must_redact_are_what_the_second_net_is_for(tmp_path):
    """The node catalogue's `redact` cases hold secrets of kinds the scanner knows too: unredacted,
    they are suspected (not all: AWS's EXAMPLE keys and 4-byte key bodies are passed over on purpose)."""
    run = run_with(tmp_path, {1: fixture_lines("redact")})

    kinds = {suspect.kind for suspect in bundle_suspects(node_bundle(run, 1))}

    assert {"betterleaks.jwt", "betterleaks.github-pat", "betterleaks.slack-bot-token", "betterleaks.pypi-upload-token",
            "betterleaks.generic-credential-uri", "veles.secrets/npmjsaccesstoken"} <= kinds


def test_compressed_logs_and_the_kubectl_bundle_are_read_too(tmp_path, capsys):
    planted = planted_secrets(seed=7)
    github_line, (token,) = planted["betterleaks.github-pat"]
    rotated = f"Nov 21 23:59:59 ip-10-1-4-3 kernel: [1.0] Linux version 6.8.0\n{github_line}\n"
    run = run_with(tmp_path, {}, extra={3: {"rotated_logs/syslog.2.gz": gzip.compress(rotated.encode()),
                                            "rotated_logs/syslog.3.gz": b"not gzip, a half-written file\n"}})
    database_line, (password,) = planted["betterleaks.generic-credential-uri"]
    write_configmaps(run.run_dir, {"DATABASE_URL": database_line.split(": ", 1)[1]})

    doc, everything = report(tmp_path, capsys)

    found = secret_findings(doc)
    (rotated_node,) = found["betterleaks.github-pat"]["nodes"]
    assert (rotated_node["evidence"][0]["file"], rotated_node["evidence"][0]["line"]) == ("rotated_logs/syslog.2.gz", 2)
    (kube_node,) = found["betterleaks.generic-credential-uri"]["nodes"]
    assert kube_node["hostname"] == "kubectl_resources.tar.gz"
    assert kube_node["evidence"][0]["file"] == "configmaps.json"
    assert token not in everything and password not in everything


def write_configmaps(run_dir: Path, data: dict[str, str]) -> None:
    """A kubectl bundle as the kubectl stage packs it, holding a ConfigMap (the stage redacts nothing)."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "trainer-env", "namespace": "ml"},
                  "data": data}
    document = {"apiVersion": "v1", "kind": "List", "items": [config_map], "metadata": {"resourceVersion": ""}}
    with tarfile.open(run_dir / KUBECTL_BUNDLE, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        add_directory(tar, "kubectl_resources")
        add_file(tar, "kubectl_resources/configmaps.json", json.dumps(document, indent=1).encode())


@pytest.mark.parametrize("line, suspected", [
    # Betterleaks' curl rule reads any later `-u`: this one is ps's (tests/fixtures/redaction/survivors.txt).
    ("curl -u $USER: -o /tmp/x https://example.com ; ps -u root:wheel", False),
    ("root 4242 curl -fsS -u deploy:Zq8vK2mPwX7rT4nL https://artifactory.example.com/api/", True),
])
def test_a_curl_password_is_suspected_and_another_commands_option_is_not(tmp_path, line, suspected):
    run = run_with(tmp_path, {1: [line]})

    kinds = [suspect.kind for suspect in bundle_suspects(node_bundle(run, 1))]

    assert kinds == (["betterleaks.curl-auth-user"] if suspected else [])


def test_a_private_key_in_base64_as_kubeconfig_holds_it_is_suspected(tmp_path):
    """client-key-data is a PEM key in base64 (the scanner decodes base64); client-certificate-data,
    public, is left alone. The key has an Ed25519 PKCS#8 key's length, with a random body."""
    body = "MC4CAQAwBQYDK2VwBCIEI" + "".join(random.Random(3).choices(LETTERS_DIGITS, k=43))
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"
    kubeconfig = [f"    client-key-data: {base64.b64encode(pem.encode()).decode()}",
                  "    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUM4akNDQWRxZ0F3SUJBZ0lJ"
                  "RkFLRUZBS0UKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="]
    run = run_with(tmp_path, {1: kubeconfig})

    found = bundle_suspects(node_bundle(run, 1))

    assert [(suspect.kind, suspect.file) for suspect in found] == [("betterleaks.private-key", "syslog")]
