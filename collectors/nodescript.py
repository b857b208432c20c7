"""Compose the node-side bash parts into the one `collector_script.sh` a node runs.

The parts in `bash/` are static; the only generated text is one block before collect.sh:
the node options of the run (the same for every node, chosen at render time) as defaults
that an environment variable of the same name still overrides, and the array of the
operator's extra commands. Every value is `shlex.quote`d, so its text reaches the node
literally (no shell on this side ever interprets it).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from collectors.settings import KEYS_BY_PATH, SHA256_RE, SINCE_RE

# The node script's parts: the checkout's bash/ (collectors/bash links to it), shipped inside the
# package when installed, so that an installed command needs no checkout.
BASH_DIR: Path = Path(__file__).resolve().parent / "bash"

_CLUSTER_PARTS = {"eks": "eks.sh", "slurm": "slurm.sh"}
_COMMON_PARTS = ("lib.sh", "redact.sh", "common.sh")
_ENTRY_PART = "collect.sh"

UPLOAD_MODES = KEYS_BY_PATH["upload_mode"].choices
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")
S3_DESTINATION_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9]/(?:.*/)?$")
# What a redaction pattern may not hold: the node's sed delimiter, tabs and newlines.
_PATTERN_FORBIDDEN = ("\x01", "\t", "\n", "\r", "\0")


@dataclass(frozen=True)
class NodeOptions:
    """Node-side options, the same for every node of a run; see bash/collect.sh for their meaning."""

    # The defaults are the settings' (collectors/settings.py), where each is declared once.
    since: str = KEYS_BY_PATH["since"].default
    file_cap_mb: int = KEYS_BY_PATH["file_cap_mb"].default
    bundle_cap_mb: int = KEYS_BY_PATH["bundle_cap_mb"].default
    nvidia_bug_report: bool = KEYS_BY_PATH["nvidia_bug_report"].default
    dcgm_diag: bool = KEYS_BY_PATH["dcgm_diag"].default
    upload_mode: str = KEYS_BY_PATH["upload_mode"].default
    s3_destination: str = ""  # awscli mode: s3://bucket/<run prefix>/instances/
    s3_region: str = ""  # awscli mode: the bucket's region, where `aws s3 cp` must send its requests
    eks_log_collector: bool = False
    eks_log_collector_sha256: str = ""
    redact_patterns: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact_patterns", tuple(self.redact_patterns))
        _check_options(self)

    def as_dict(self) -> dict[str, Any]:
        """For the run state: plain JSON types."""
        values = asdict(self)
        values["redact_patterns"] = list(self.redact_patterns)
        return values


def _check_options(options: NodeOptions) -> None:
    if not SINCE_RE.match(options.since):
        raise ValueError(f"since must be a duration (30m, 12h, 3d, 2w), an ISO date/time or 'all', "
                         f"not {options.since!r}")
    for name in ("file_cap_mb", "bundle_cap_mb"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 999_999_999:
            raise ValueError(f"{name} must be a whole number of MB from 1, not {value!r}")
    if options.upload_mode not in UPLOAD_MODES:
        raise ValueError(f"upload_mode must be one of {', '.join(UPLOAD_MODES)}, not {options.upload_mode!r}")
    if options.s3_destination and not S3_DESTINATION_RE.match(options.s3_destination):
        raise ValueError(f"s3_destination must look like s3://bucket/prefix/, not {options.s3_destination!r}")
    if options.s3_region and not REGION_RE.match(options.s3_region):
        raise ValueError(f"s3_region must be an AWS region name, not {options.s3_region!r}")
    if options.eks_log_collector and not SHA256_RE.match(options.eks_log_collector_sha256):
        raise ValueError("the EKS log collector needs its sha256 (64 lowercase hex digits)")
    for pattern in options.redact_patterns:
        if not isinstance(pattern, str) or not pattern or any(ch in pattern for ch in _PATTERN_FORBIDDEN):
            raise ValueError(f"a redaction pattern must be one non-empty line without tabs, not {pattern!r}")


def compose(cluster_type: str, commands: Sequence[str] = (), *, options: NodeOptions | None = None) -> str:
    """Return the text of one self-contained bash script for nodes of `cluster_type`.

    Order: header, lib.sh, redact.sh, common.sh, eks.sh or slurm.sh, the generated block
    (node options, then the command array), collect.sh (which runs everything, so it
    comes last). Same inputs, same text.
    """
    if cluster_type not in _CLUSTER_PARTS:
        raise ValueError(f"cluster type must be one of {sorted(_CLUSTER_PARTS)}, not {cluster_type!r}")
    commands = _checked_commands(commands)
    options = options or NodeOptions()
    before = [*_COMMON_PARTS, _CLUSTER_PARTS[cluster_type]]
    pieces = [_header(cluster_type, [*before, _ENTRY_PART], len(commands))]
    pieces += [_part(name) for name in before]
    pieces.append(_options_block(options))
    pieces.append(_commands_block(commands))
    pieces.append(_part(_ENTRY_PART))
    return "".join(pieces)


def node_options(values: Mapping[str, Any]) -> NodeOptions:
    """NodeOptions from a mapping with (some of) its field names, e.g. recorded run state."""
    known = {name: values[name] for name in NodeOptions.__dataclass_fields__ if name in values}
    return NodeOptions(**known)


def _checked_commands(commands: Sequence[str]) -> list[str]:
    # A lone string is a Sequence[str] too; iterating it would run one command per character.
    if isinstance(commands, str):
        raise TypeError("commands must be a sequence of strings, not one string")
    for command in commands:
        if not isinstance(command, str):
            raise TypeError(f"each command must be a string, not {type(command).__name__}")
        # Bash strings cannot hold NUL: the node would silently run a truncated command.
        if "\0" in command:
            raise ValueError(f"command contains a NUL character: {command!r}")
    return list(commands)


def _header(cluster_type: str, parts: list[str], command_count: int) -> str:
    sources = ", ".join(f"bash/{name}" for name in parts)
    return (
        "#!/usr/bin/env bash\n"
        f"# collector_script.sh for {cluster_type} nodes: generated by collectors/nodescript.py "
        "from the files below; do not edit.\n"
        f"# Parts: {sources}, with node options and {command_count} operator command(s) before bash/{_ENTRY_PART}.\n"
    )


def _part(name: str) -> str:
    text = (BASH_DIR / name).read_text(encoding="utf-8")
    end = "" if text.endswith("\n") else "\n"
    return f"\n# ---- bash/{name} ----\n{text}{end}"


def _options_block(options: NodeOptions) -> str:
    values = {
        "HPC_SINCE": options.since,
        "HPC_FILE_CAP_MB": str(options.file_cap_mb),
        "HPC_BUNDLE_CAP_MB": str(options.bundle_cap_mb),
        "HPC_NVIDIA_BUG_REPORT": "1" if options.nvidia_bug_report else "0",
        "HPC_DCGM_DIAG": "1" if options.dcgm_diag else "0",
        "HPC_UPLOAD_MODE": options.upload_mode,
        "HPC_S3_DESTINATION": options.s3_destination,
        "HPC_S3_REGION": options.s3_region,
        "HPC_EKS_COLLECTOR": "1" if options.eks_log_collector else "0",
        "HPC_EKS_COLLECTOR_SHA256": options.eks_log_collector_sha256,
        "HPC_REDACT_PATTERNS": "\n".join(options.redact_patterns),
    }
    lines = ["", "# ---- generated: node options chosen at render time; the environment overrides each ----"]
    lines += [f"hpc_default {name} {shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def _commands_block(commands: list[str]) -> str:
    lines = ["", "# ---- generated: operator commands, literal text, one item each ----"]
    if not commands:
        lines.append("HPC_USER_COMMANDS=()")
    else:
        lines.append("HPC_USER_COMMANDS=(")
        lines += [f"  {shlex.quote(command)}" for command in commands]
        lines.append(")")
    return "\n".join(lines) + "\n"
