"""Typed, validated settings: the only module that reads Invoke's config.

Every key is declared once, in KEYS below: its name, type, default and meaning. The settings
classes, their validation, the `INVOKE_HYPERPOD_*` variables, the task flags' help and the README's
table all come from there. Keys live under one top-level config key of our own (`hyperpod`), so
Invoke's own keys (`run`, `tasks`, `timeouts`) are never touched; related keys are grouped in
sub-trees (`ssh.user`, `session.rate`, `timeouts.node_script`). Precedence, lowest first: the
defaults, invoke.yaml, `INVOKE_HYPERPOD_*` environment variables, task flags.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Mapping

from collectors.errors import UsageError
from collectors.layout import MIN_NODE_BUDGET, NODE_DEADLINE_MARGIN

CONFIG_KEY = "hyperpod"
ENV_PREFIX = "INVOKE_" + CONFIG_KEY.upper() + "_"

# A journal window: 30m, 12h, 3d, 2w; an ISO 8601 date or date-time; or "all" (no window).
SINCE_RE = re.compile(
    r"^(?:all|\d{1,6}[smhdw]|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?)$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Key:
    """One setting. `path` is its place in the config (`ssh.user`); `flag` the task flag that sets it
    ("" for the path's own name, `ssh_user`; None for none); `alias` the flat name it had before it
    moved into a sub-tree, still accepted for one release."""

    path: str
    default: Any
    help: str
    kind: type = str
    choices: tuple[str, ...] = ()
    shape: tuple[re.Pattern[str], str] | None = None
    optional: bool = False
    flag: str | None = ""
    alias: str | None = None

    @property
    def group(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def flag_name(self) -> str | None:
        return self.path.replace(".", "_") if self.flag == "" else self.flag

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.path.replace(".", "_").upper()


KEYS: tuple[Key, ...] = (
    Key("cluster", None, "HyperPod cluster name or ARN", optional=True),
    Key("s3_path", None, "where to store the run: s3://bucket[/prefix]", optional=True),
    Key("region", None, "AWS region (default: your AWS configuration)", optional=True),
    Key("profile", None, "AWS named profile (default: your AWS configuration)", optional=True),
    Key("runs_dir", "runs", "local folder for run state and downloads", flag=None),
    Key("sandbox", False, "sandbox mode: refuse every AWS endpoint that is not on loopback", bool, flag=None),
    Key("sandbox_dir", None, "where the local emulated HyperPod keeps its state", optional=True, flag=None),
    # How many at once of each thing done in parallel (each has its own pool).
    Key("max_workers", 16, "most node sessions open at once", int),
    Key("api_workers", 8, "most SageMaker and CloudWatch Logs calls at once (DescribeClusterNode for nodes whose "
        "summary lacks a host name, the cluster stage's log streams)", int, flag=None),
    Key("download_workers", 16, "most tarballs downloaded at once", int, flag="workers"),
    Key("kubectl_workers", 8, "most kubectl commands running at once", int, flag=None),
    # The run stage.
    Key("presign_expiry", 7200, "seconds a presigned URL stays valid (signed just before each node's session); at "
        "least timeouts.node_script + timeouts.session_prompt, at most 604800 (SigV4's 7 days)", int, flag=None),
    Key("poll_interval", 5, "seconds between S3 checks for finished nodes (detached mode; one List call per 1000 "
        "nodes)", int, flag=None),
    Key("session.mode", "detached", "detached (sessions only launch the node script, which outlives them; "
        "completion is read from S3) or attached (wait in the session)", choices=("detached", "attached"),
        alias="session_mode"),
    Key("session.client", "direct", "direct (boto3 StartSession, then session-manager-plugin) or cli "
        "(aws ssm start-session)", choices=("direct", "cli"), alias="session_client"),
    Key("session.rate", 3.0, "StartSession calls per second at most (AWS allows about 3 per account; halved on "
        "every ThrottlingException, grown back on success)", float, alias="session_rate"),
    Key("session.attempts", 3, "sessions tried per node when one fails or drops before the script starts "
        "(throttling is not counted)", int, flag=None, alias="session_attempts"),
    Key("session.keepalive", 30, "seconds between keep-alive keystrokes in attached SSM sessions (Session Manager "
        "ends a session without input for its idle timeout, 1 to 60 minutes)", int, flag=None,
        alias="session_keepalive"),
    Key("discovery", "auto", "where the nodes come from: api (SageMaker), head-node (sinfo and "
        "resource_config.json on the --gateway head node, over SSH), auto (the API; the head node when the API "
        "cannot be reached and --transport ssh names a head node)", choices=("auto", "api", "head-node")),
    # Node-side options: the same for every node of a run, baked into the node script at render time.
    Key("since", "3d", "journal and log window on nodes: 30m, 12h, 3d, 2w, an ISO date/time, or all",
        shape=(SINCE_RE, "a duration (30m, 12h, 3d, 2w), an ISO date/time or all")),
    Key("file_cap_mb", 50, "per-file cap on nodes in MB; longer files keep their last bytes", int),
    Key("bundle_cap_mb", 2048, "cap on one node's report in MB, before compression", int),
    Key("nvidia_bug_report", True, "run nvidia-bug-report.sh on nodes (slow; --safe-mode after a timeout)", bool),
    Key("dcgm_diag", False, "run DCGM's level-1 diagnostic (dcgmi diag -r 1) on nodes that have DCGM; it loads "
        "the GPUs for a minute or two", bool),
    Key("upload_mode", "presigned", "presigned (nodes PUT with curl, no S3 rights needed) or awscli (aws s3 cp "
        "with the node's own role, which needs s3:PutObject on the run prefix)", choices=("presigned", "awscli")),
    Key("redact_patterns", (), "extra redaction patterns (extended regex) applied on nodes before upload; one per "
        "line in the environment variable", tuple, flag="redact_pattern"),
    Key("eks_log_collector_url", None, "URL of the AWS EKS log collector: fetched by upload, run on EKS nodes from "
        "the run's S3 prefix", optional=True, flag=None),
    Key("eks_log_collector_sha256", None, "the sha256 the EKS log collector must have (required with its URL)",
        optional=True, shape=(SHA256_RE, "64 lowercase hex digits"), flag=None),
    # The kubectl stage (EKS clusters).
    Key("kube_context", None, "kubeconfig context for the kubectl stage (default: the one whose cluster is the EKS "
        "cluster)", optional=True),
    # How nodes are reached.
    Key("transport", "ssm", "how nodes are reached: ssm (a Session Manager session per node) or ssh (Fabric)",
        choices=("ssm", "ssh")),
    Key("ssh.user", None, "SSH login user (default: ssh config's User, else yours); not root means sudo -n",
        optional=True, alias="ssh_user"),
    Key("ssh.key", None, "SSH private key file (default: ssh config's IdentityFile, the agent, ~/.ssh/id_*)",
        optional=True, alias="ssh_key"),
    Key("ssh.port", None, "SSH port on the nodes (default: ssh config's Port, else 22)", int, optional=True,
        alias="ssh_port"),
    Key("ssh.config", None, "ssh_config file to read (default: ~/.ssh/config and /etc/ssh/ssh_config)",
        optional=True, alias="ssh_config"),
    Key("ssh.known_hosts", None, "host keys: strict (unknown or changed keys refused), accept-new (unknown keys "
        "added, changed ones refused) or off; default: ssh config's StrictHostKeyChecking, else strict",
        optional=True, choices=("strict", "accept-new", "off"), alias="ssh_known_hosts"),
    Key("ssh.known_hosts_file", None, "known_hosts file (default: ssh config's UserKnownHostsFile and "
        "GlobalKnownHostsFile, else ~/.ssh/known_hosts)", optional=True, alias="ssh_known_hosts_file"),
    Key("ssh.gateway", None, "SSH jump host: [user@]host[:port], or a node of the run: controller (the first node "
        "of an instance group named *controller*), an instance id or an ip-a-b-c-d name", optional=True,
        flag="gateway", alias="ssh_gateway"),
    Key("ssh.gateway_via", "ssh", "how the jump host is reached: ssh, or ssm (an AWS-StartSSHSession session; it "
        "must be a node of the cluster)", choices=("ssh", "ssm"), flag="gateway_via", alias="ssh_gateway_via"),
    Key("ssh.data_path", "s3", "s3 (nodes fetch the script and upload their tarball by presigned URL) or sftp "
        "(pushed and pulled back over SSH, for nodes that cannot reach S3; attached mode only)",
        choices=("s3", "sftp"), alias="ssh_data_path"),
    Key("timeouts.run", 7200, "seconds the whole run stage may take; throttled nodes are retried until then", int,
        flag=None),
    Key("timeouts.session_prompt", 60, "seconds for a session to start and answer", int, flag=None),
    Key("timeouts.node_script", 900, "seconds for a node to collect and upload, at least 180: the node is given "
        "this less 60 s as its own deadline, and keeps at least 60 s of that for packaging and upload", int,
        flag=None),
    Key("timeouts.kubectl", 600, "seconds per kubectl command (the stage runs many at once)", int, flag=None),
)
KEYS_BY_PATH = {key.path: key for key in KEYS}
KEYS_BY_FLAG = {key.flag_name: key for key in KEYS if key.flag_name}
GROUPS = ("timeouts", "session", "ssh")

# SigV4 presigned URLs are valid at most 7 days (X-Amz-Expires <= 604800):
# docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_S3_PREFIX = "hyperpod-issue-reports"
# S3 keys are at most 1024 bytes of UTF-8; a run's keys add its cluster, run id and node file names.
MAX_S3_PREFIX_BYTES = 600


def _annotation(key: Key) -> Any:
    kinds = {tuple: tuple[str, ...], str: Path if key.path == "runs_dir" else str}
    kind = kinds.get(key.kind, key.kind)
    return kind | None if key.optional else kind


def _group_class(group: str) -> type:
    fields_ = [(key.name, _annotation(key), field(default=key.default)) for key in KEYS if key.group == group]
    cls = make_dataclass(group.capitalize(), fields_, frozen=True)
    cls.__module__ = __name__
    return cls


Timeouts = _group_class("timeouts")
Session = _group_class("session")
Ssh = _group_class("ssh")
GROUP_CLASSES = {"timeouts": Timeouts, "session": Session, "ssh": Ssh}


def _top_level_fields() -> list[tuple[str, Any, Any]]:
    top = [(key.name, _annotation(key), field(default=Path(key.default) if key.path == "runs_dir" else key.default))
           for key in KEYS if not key.group]
    return top + [(group, cls, field(default_factory=cls)) for group, cls in GROUP_CLASSES.items()]


class _SettingsMethods:
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, **flags: Any) -> "Settings":
        """Validate `ctx.config[CONFIG_KEY]` and apply task flags (None means 'not given')."""
        return cls(**_build(_nested(dict(config or {})), where_given="config")).with_flags(**flags)

    def with_flags(self, **flags: Any) -> "Settings":
        """These settings with the task flags given (by flag name: ssh_user, gateway; None: not given)."""
        values = asdict(self)
        for name, value in flags.items():
            key = KEYS_BY_FLAG.get(name) or KEYS_BY_PATH.get(name)
            if key is None:
                raise ValueError(f"not a setting: {name}")  # a programming error, not user input
            if value is not None:
                _put(values, key, _typed(key, value))
        settings = type(self)(**_build(values, where_given=None))
        _check_time_budgets(settings)
        return settings

    def require_cluster(self) -> str:
        if not self.cluster:
            raise UsageError("no cluster given: pass --cluster NAME (or set hyperpod.cluster)")
        return self.cluster

    def require_s3_path(self) -> "S3Path":
        if not self.s3_path:
            raise UsageError("no S3 path given: pass --s3-path s3://bucket/prefix (or set hyperpod.s3_path)")
        return S3Path.parse(self.s3_path)


Settings = make_dataclass("Settings", _top_level_fields(), bases=(_SettingsMethods,), frozen=True)
Settings.__module__ = __name__


def _nested(raw: dict[str, Any]) -> dict[str, Any]:
    """invoke.yaml's tree with the flat names of before (ssh_user) moved to their sub-trees (ssh.user)."""
    unknown = [name for name in raw if name not in GROUPS and name not in KEYS_BY_PATH
               and name not in {key.alias for key in KEYS if key.alias}]
    if unknown:
        raise UsageError(f"unknown config key(s) under {CONFIG_KEY!r}: {', '.join(sorted(unknown))}")
    tree = {name: value for name, value in raw.items() if name not in GROUPS}
    for group in GROUPS:
        subtree = raw.get(group)
        if subtree is None:
            subtree = {}
        if not isinstance(subtree, Mapping):
            raise UsageError(f"config {CONFIG_KEY}.{group} must be a mapping, got {subtree!r}")
        names = {key.name for key in KEYS if key.group == group}
        unknown = set(subtree) - names
        if unknown:
            raise UsageError(f"unknown config key(s) under {CONFIG_KEY}.{group}: {', '.join(sorted(unknown))}")
        tree[group] = dict(subtree)
    for key in KEYS:
        if key.alias and tree.get(key.alias) is not None:
            value = tree.pop(key.alias)
            if tree[key.group].get(key.name) is not None:
                raise UsageError(f"config sets both {CONFIG_KEY}.{key.alias} and {CONFIG_KEY}.{key.path}: "
                                 f"keep {key.path} ({key.alias} is its old name)")
            print(f"warning: config {CONFIG_KEY}.{key.alias} is now {CONFIG_KEY}.{key.path}; the old name goes in "
                  "the next release", file=sys.stderr)
            tree[key.group][key.name] = value
        elif key.alias:
            tree.pop(key.alias, None)
    return tree


def _get(values: Mapping[str, Any], key: Key) -> Any:
    return values.get(key.group, {}).get(key.name) if key.group else values.get(key.name)


def _put(values: dict[str, Any], key: Key, value: Any) -> None:
    if key.group:
        values.setdefault(key.group, {})[key.name] = value
    else:
        values[key.name] = value


def _build(values: Mapping[str, Any], where_given: str | None) -> dict[str, Any]:
    """The Settings constructor's arguments: every key typed (given, else its default)."""
    typed: dict[str, Any] = {}
    for key in KEYS:
        given = _get(values, key)
        _put(typed, key, key.default if given is None else (_typed(key, given) if where_given else given))
    typed["runs_dir"] = Path(typed["runs_dir"]).expanduser()
    return {name: GROUP_CLASSES[name](**value) if name in GROUP_CLASSES else value for name, value in typed.items()}


def config_tree() -> dict[str, Any]:
    """The tree tasks register so that Invoke loads `INVOKE_HYPERPOD_*` variables for every key.

    Leaves are None on purpose: Invoke then hands env values over as strings, and the typing and
    defaults happen here, with clear errors, instead of as a traceback inside Invoke. (The old flat
    names are not in it: INVOKE_HYPERPOD_SSH_USER already names ssh.user.)
    """
    tree: dict[str, Any] = {group: {} for group in GROUPS}
    for key in KEYS:
        _put(tree, key, None)
    return tree


def check_environment(environ: Mapping[str, str]) -> None:
    """Invoke would cast an `INVOKE_HYPERPOD_*` value by the type in invoke.yaml and crash on a bad one,
    and would silently ignore an unknown one; check them first and say which is wrong."""
    known = {key.env_name: key for key in KEYS}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            if name not in known:
                raise UsageError(f"unknown setting in environment variable {name}")
            _typed(known[name], value)


def markdown_table() -> str:
    """The README's table of settings, from KEYS."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in KEYS:
        default = "none" if key.default in (None, ()) else f"`{str(key.default).lower()}`" \
            if isinstance(key.default, bool) else f"`{key.default}`" if key.kind is str else str(key.default)
        flag = f" (flag `--{key.flag_name.replace('_', '-')}`)" if key.flag_name else ""
        rows.append(f"| `{key.path}` | {default} | {key.help}{flag} |")
    return "\n".join(rows)


# -- values ---------------------------------------------------------------------------------

def _typed(key: Key, value: Any) -> Any:
    """Check `value` against the key's declaration; environment variables arrive as strings."""
    where = f"{CONFIG_KEY}.{key.path}"
    if value is None or (key.optional and value == ""):
        if key.optional:
            return None
        raise UsageError(f"config {where} must be set")
    kinds = {bool: _as_bool, int: _as_positive_int, float: _as_positive_float, tuple: _as_str_tuple, str: _as_str}
    typed = kinds[key.kind](where, value)
    if key.choices and typed not in key.choices:
        raise UsageError(f"config {where} must be one of {', '.join(key.choices)}, got {value!r}")
    if key.shape and not key.shape[0].match(str(typed)):
        raise UsageError(f"config {where} must be {key.shape[1]}, got {value!r}")
    return typed


def _as_str(where: str, value: Any) -> str:
    if not isinstance(value, (str, Path)):
        raise UsageError(f"config {where} must be a string, got {value!r}")
    return str(value)


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


def _check_time_budgets(settings: Any) -> None:
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


if __name__ == "__main__":
    print(markdown_table())
