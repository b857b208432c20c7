"""Typed, validated settings: the only module that reads Invoke's config.

Every key lives under one top-level config key of our own (`hyperpod`), so Invoke's own keys
(`run`, `tasks`, `timeouts`) are never touched. Precedence, lowest first: DEFAULTS below,
invoke.yaml, `INVOKE_HYPERPOD_*` environment variables, task flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from collectors.errors import UsageError
from collectors.nodescript import MIN_NODE_BUDGET, NODE_DEADLINE_MARGIN

CONFIG_KEY = "hyperpod"

# Each key: (default, meaning). Types are checked against the default's type (None = optional str).
SCHEMA: dict[str, tuple[Any, str]] = {
    "cluster": (None, "HyperPod cluster name or ARN"),
    "s3_path": (None, "s3://bucket[/prefix] where scripts and node tarballs go"),
    "region": (None, "AWS region (default: the AWS CLI/boto3 chain)"),
    "profile": (None, "AWS named profile (default: the AWS CLI/boto3 chain)"),
    "max_workers": (16, "most node sessions open at once"),
    "runs_dir": ("runs", "local folder for run state and downloads"),
    "sandbox": (False, "sandbox mode: refuse every AWS endpoint that is not on loopback"),
    "sandbox_dir": (None, "where the local emulated HyperPod keeps its state"),
    "presign_expiry": (7200, "seconds a presigned script/upload URL stays valid"),
    "session_mode": ("detached", "detached: sessions only launch the node script; attached: wait in the session"),
    "session_client": ("direct", "direct: boto3 StartSession + session-manager-plugin; cli: aws ssm start-session"),
    "session_rate": (3.0, "StartSession calls per second at most (AWS allows about 3 per account; halved on throttling)"),
    "session_attempts": (3, "sessions tried per node when a launch fails or drops (throttling aside)"),
    "poll_interval": (5, "seconds between S3 checks for finished nodes (detached mode)"),
    "session_keepalive": (30, "seconds between keep-alive keystrokes in attached SSM sessions (Session Manager "
                              "ends a session without input for its idle timeout, 1 to 60 minutes)"),
    "discovery": ("auto", "where the nodes come from: api (SageMaker), head-node (sinfo and resource_config.json on "
                          "the --gateway head node, over SSH), auto (the API; the head node when the API cannot "
                          "be reached and a --gateway host is set for --transport ssh)"),
    # Node-side options: the same for every node of a run, baked into the node script at render time.
    "since": ("3d", "journal and log window on nodes: 30m, 12h, 3d, 2w, an ISO date/time, or all"),
    "file_cap_mb": (50, "per-file cap on nodes in MB (longer files keep their last bytes)"),
    "bundle_cap_mb": (2048, "cap on one node's report in MB, before compression"),
    "nvidia_bug_report": (True, "run nvidia-bug-report.sh on nodes (slow; --safe-mode after a timeout)"),
    "upload_mode": ("presigned", "how nodes upload: presigned (curl PUT, no S3 rights on nodes) or awscli (aws s3 cp)"),
    "redact_patterns": ((), "extra redaction patterns (extended regex) applied on nodes; one per line in env"),
    "eks_log_collector_url": (None, "URL of the AWS EKS log collector; fetched here, run on EKS nodes"),
    "eks_log_collector_sha256": (None, "the sha256 the EKS log collector must have (required with its URL)"),
    # The kubectl stage (EKS clusters).
    "kube_context": (None, "kubeconfig context for the kubectl stage (default: the one whose cluster is the EKS cluster)"),
    "kubectl_workers": (8, "most kubectl commands running at once"),
    # How nodes are reached: SSM sessions, or SSH (Fabric) for Slurm clusters reached through a head node.
    "transport": ("ssm", "ssm: one Session Manager session per node; ssh: SSH to each node (Fabric)"),
    "ssh_user": (None, "SSH login user (default: the ssh config's User, else your user name); not root means sudo -n"),
    "ssh_key": (None, "SSH private key file (default: the ssh config's IdentityFile, the agent, ~/.ssh/id_*)"),
    "ssh_port": (None, "SSH port on the nodes (default: the ssh config's Port, else 22)"),
    "ssh_config": (None, "ssh_config file to read (default: ~/.ssh/config and /etc/ssh/ssh_config)"),
    "ssh_known_hosts": (None, "host keys: strict (unknown or changed keys refused), accept-new (unknown keys "
                              "added, changed ones refused), off (not checked); default: the ssh config's "
                              "StrictHostKeyChecking, else strict"),
    "ssh_known_hosts_file": (None, "known_hosts file (default: the ssh config's UserKnownHostsFile and "
                                   "GlobalKnownHostsFile, else ~/.ssh/known_hosts)"),
    "ssh_gateway": (None, "jump host: [user@]host[:port], or a node of the run: controller (the first node of an "
                          "instance group named *controller*), an instance id or an ip-a-b-c-d name"),
    "ssh_gateway_via": ("ssh", "how the jump host is reached: ssh, or ssm (an AWS-StartSSHSession session; the "
                               "jump host must be a node of the cluster)"),
    "ssh_data_path": ("s3", "s3: nodes fetch the script and upload their tarball by presigned URL; sftp: pushed "
                            "and pulled back over SSH, for nodes that cannot reach S3 (attached mode only)"),
}
CHOICES = {"session_mode": ("detached", "attached"), "session_client": ("direct", "cli"),
           "upload_mode": ("presigned", "awscli"), "transport": ("ssm", "ssh"), "ssh_gateway_via": ("ssh", "ssm"),
           "ssh_data_path": ("s3", "sftp"),
           "discovery": ("auto", "api", "head-node")}
# Optional integers: None means "not given" (a lower layer, such as the ssh config, decides).
OPTIONAL_INTS = ("ssh_port",)
# String settings with a fixed shape: (regex, what it must be).
FORMATS = {
    "since": (re.compile(r"^(?:all|\d{1,6}[smhdw]|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
                         r"(?:Z|[+-]\d{2}:?\d{2})?)?)$"),
              "a duration (30m, 12h, 3d, 2w), an ISO date/time or all"),
    "eks_log_collector_sha256": (re.compile(r"^[0-9a-f]{64}$"), "64 lowercase hex digits"),
    "ssh_known_hosts": (re.compile(r"^(?:strict|accept-new|off)$"), "strict, accept-new or off"),
}
TIMEOUTS_SCHEMA: dict[str, tuple[int, str]] = {
    "run": (7200, "seconds the whole run stage may take; throttled nodes are retried until then"),
    "session_prompt": (60, "seconds to wait for a session to start and answer"),
    "node_script": (900, "seconds a node may take to collect and upload"),
    "kubectl": (600, "seconds per kubectl command"),
}

# SigV4 presigned URLs are valid at most 7 days (X-Amz-Expires <= 604800):
# docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_S3_PREFIX = "hyperpod-issue-reports"
# S3 keys are at most 1024 bytes of UTF-8; a run's keys add its cluster, run id and node file names.
MAX_S3_PREFIX_BYTES = 600


def config_tree() -> dict[str, Any]:
    """The tree tasks.py registers so that Invoke loads `INVOKE_HYPERPOD_*` variables for every key.

    Leaves are None on purpose: Invoke then hands env values over as strings, and the typing and
    defaults happen here, with clear errors, instead of as a traceback inside Invoke.
    """
    tree: dict[str, Any] = {key: None for key in SCHEMA}
    tree["timeouts"] = {key: None for key in TIMEOUTS_SCHEMA}
    return tree


ENV_PREFIX = "INVOKE_" + CONFIG_KEY.upper() + "_"


def check_environment(environ: Mapping[str, str]) -> None:
    """Invoke would cast an `INVOKE_HYPERPOD_*` value by the type in invoke.yaml and crash on a bad one,
    and would silently ignore an unknown one; check them first and say which is wrong."""
    known = {key.upper(): (key, default) for key, (default, _) in SCHEMA.items()}
    known.update({f"TIMEOUTS_{key.upper()}": (f"timeouts.{key}", default)
                  for key, (default, _) in TIMEOUTS_SCHEMA.items()})
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = known.get(name[len(ENV_PREFIX):])
        if key is None:
            raise UsageError(f"unknown setting in environment variable {name}")
        _typed(key[0], value, key[1])


@dataclass(frozen=True)
class Timeouts:
    run: int = 7200
    session_prompt: int = 60
    node_script: int = 900
    kubectl: int = 600


@dataclass(frozen=True)
class S3Path:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> "S3Path":
        """`s3://bucket` → prefix `hyperpod-issue-reports` (as the earlier tool); `s3://b/a/b/` → `a/b`.

        The prefix is kept exactly as given (one trailing `/` aside): S3 keys are plain strings, so
        `a//b` and `a/../b` are other keys than `a/b`, which the nodes' URLs and the downloads would
        then disagree about; they are refused rather than guessed at.
        """
        if not text.startswith("s3://"):
            raise UsageError(f"--s3-path must look like s3://bucket[/prefix], got {text!r}")
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not S3_BUCKET_RE.match(bucket) or ".." in bucket:
            raise UsageError(f"--s3-path has an invalid bucket name {bucket!r}")
        prefix = prefix[:-1] if prefix.endswith("/") else prefix
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise UsageError(f"--s3-path prefix {prefix!r} has an empty, '.' or '..' segment; "
                             "write it as S3 should store it, e.g. s3://bucket/a/b")
        if any(ch in prefix for ch in "\n\r\t\\") or not prefix.isprintable():
            raise UsageError(f"--s3-path prefix {prefix!r} contains control characters or backslashes")
        if len(prefix.encode()) > MAX_S3_PREFIX_BYTES:
            raise UsageError(f"--s3-path prefix is {len(prefix.encode())} bytes; S3 keys are at most 1024 bytes, "
                             f"and the run's keys need room after it (at most {MAX_S3_PREFIX_BYTES})")
        return cls(bucket, prefix or DEFAULT_S3_PREFIX)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}"


@dataclass(frozen=True)
class Settings:
    cluster: str | None = None
    s3_path: str | None = None
    region: str | None = None
    profile: str | None = None
    max_workers: int = 16
    runs_dir: Path = Path("runs")
    sandbox: bool = False
    sandbox_dir: str | None = None
    presign_expiry: int = 7200
    session_mode: str = "detached"
    session_client: str = "direct"
    session_rate: float = 3.0
    session_attempts: int = 3
    poll_interval: int = 5
    session_keepalive: int = 30
    discovery: str = "auto"
    since: str = "3d"
    file_cap_mb: int = 50
    bundle_cap_mb: int = 2048
    nvidia_bug_report: bool = True
    upload_mode: str = "presigned"
    redact_patterns: tuple[str, ...] = ()
    eks_log_collector_url: str | None = None
    eks_log_collector_sha256: str | None = None
    kube_context: str | None = None
    kubectl_workers: int = 8
    transport: str = "ssm"
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_port: int | None = None
    ssh_config: str | None = None
    ssh_known_hosts: str | None = None
    ssh_known_hosts_file: str | None = None
    ssh_gateway: str | None = None
    ssh_gateway_via: str = "ssh"
    ssh_data_path: str = "s3"
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, **flags: Any) -> "Settings":
        """Validate `ctx.config[CONFIG_KEY]` and apply task flags (None means 'not given')."""
        raw = dict(config or {})
        unknown = set(raw) - set(SCHEMA) - {"timeouts"}
        if unknown:
            raise UsageError(f"unknown config key(s) under {CONFIG_KEY!r}: {', '.join(sorted(unknown))}")
        values = {key: _typed(key, _given(raw.get(key), default), default) for key, (default, _) in SCHEMA.items()}
        values["timeouts"] = _timeouts(raw.get("timeouts") or {})
        values["runs_dir"] = Path(values["runs_dir"]).expanduser()
        settings = cls(**values)
        return settings.with_flags(**flags)

    def with_flags(self, **flags: Any) -> "Settings":
        given = {key: value for key, value in flags.items() if value is not None}
        names = {f.name for f in fields(self)}
        bad = set(given) - names
        if bad:
            raise ValueError(f"not settings: {sorted(bad)}")  # a programming error, not user input
        for key, value in given.items():
            if key in SCHEMA:
                given[key] = _typed(key, value, SCHEMA[key][0])
        settings = replace(self, **given)
        _check_time_budgets(settings)
        return settings

    def require_cluster(self) -> str:
        if not self.cluster:
            raise UsageError("no cluster given: pass --cluster NAME (or set hyperpod.cluster)")
        return self.cluster

    def require_s3_path(self) -> S3Path:
        if not self.s3_path:
            raise UsageError("no S3 path given: pass --s3-path s3://bucket/prefix (or set hyperpod.s3_path)")
        return S3Path.parse(self.s3_path)


def _check_time_budgets(settings: Settings) -> None:
    """Settings whose times cannot all hold: a node that would be called timed out while it works on,
    or URLs that S3 would refuse before the node is done with them."""
    node_script = settings.timeouts.node_script
    least = MIN_NODE_BUDGET + NODE_DEADLINE_MARGIN
    if node_script < least:
        raise UsageError(f"config {CONFIG_KEY}.timeouts.node_script is {node_script}s; it must be at least {least}s "
                         f"(a node needs {MIN_NODE_BUDGET}s to collect, package and upload, and stops "
                         f"{NODE_DEADLINE_MARGIN}s before the orchestrator stops waiting)")
    if settings.presign_expiry > MAX_PRESIGN_EXPIRY:
        raise UsageError(f"config {CONFIG_KEY}.presign_expiry is {settings.presign_expiry}s; SigV4 presigned URLs "
                         f"last at most 7 days ({MAX_PRESIGN_EXPIRY}s)")
    # URLs are signed before the session starts; the node uses them until it is done.
    needed = node_script + settings.timeouts.session_prompt
    if settings.presign_expiry < needed:
        raise UsageError(f"config {CONFIG_KEY}.presign_expiry is {settings.presign_expiry}s, but a node may still "
                         f"upload {needed}s after its URLs are signed (timeouts.node_script + "
                         "timeouts.session_prompt); S3 would refuse its tarball")


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _typed(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the default's type; env vars arrive as strings, so cast those."""
    where = f"{CONFIG_KEY}.{key}"
    if key in OPTIONAL_INTS:
        return None if value is None else _as_positive_int(where, value)
    if default is None:
        if value is None or isinstance(value, str):
            return _formatted(key, where, value) or None
        raise UsageError(f"config {where} must be a string, got {value!r}")
    if isinstance(default, tuple):
        return _as_str_tuple(where, value)
    if isinstance(default, bool):
        return _as_bool(where, value)
    if isinstance(default, int):
        return _as_positive_int(where, value)
    if isinstance(default, float):
        return _as_positive_float(where, value)
    if not isinstance(value, (str, Path)):
        raise UsageError(f"config {where} must be a string, got {value!r}")
    allowed = CHOICES.get(key.rsplit(".", 1)[-1])
    if allowed and value not in allowed:
        raise UsageError(f"config {where} must be one of {', '.join(allowed)}, got {value!r}")
    return _formatted(key, where, value)


def _formatted(key: str, where: str, value: Any) -> Any:
    shape = FORMATS.get(key)
    if shape and value and not shape[0].match(str(value)):
        raise UsageError(f"config {where} must be {shape[1]}, got {value!r}")
    return value


def _as_str_tuple(where: str, value: Any) -> tuple[str, ...]:
    """A list in invoke.yaml or a flag; one item per line in an environment variable."""
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"config {where} must be a list of strings, got {value!r}")
    return tuple(item for item in value if item)


def _as_bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"config {where} must be true or false, got {value!r}")


def _as_positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool):
        raise UsageError(f"config {where} must be a positive integer, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise UsageError(f"config {where} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise UsageError(f"config {where} must be a positive integer, got {value!r}")
    return number


def _as_positive_float(where: str, value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise UsageError(f"config {where} must be a positive number, got {value!r}")
    return number


def _timeouts(raw: Mapping[str, Any]) -> Timeouts:
    if not isinstance(raw, Mapping):
        raise UsageError(f"config {CONFIG_KEY}.timeouts must be a mapping, got {raw!r}")
    unknown = set(raw) - set(TIMEOUTS_SCHEMA)
    if unknown:
        raise UsageError(f"unknown config key(s) under {CONFIG_KEY}.timeouts: {', '.join(sorted(unknown))}")
    return Timeouts(**{
        key: _as_positive_int(f"{CONFIG_KEY}.timeouts.{key}", _given(raw.get(key), default))
        for key, (default, _) in TIMEOUTS_SCHEMA.items()
    })
