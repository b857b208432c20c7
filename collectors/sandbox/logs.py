"""What each sandbox node's logs say, written the way its distribution writes them.

Every log line a node shows comes from one list of events per node (LogEvent): the boot's kernel and
system messages (fixtures/journal/), the tails of its units' `systemctl status` (which are journal
lines), and its pack's events (packs.py). They go into its journal (journal export format, made into
a real journal file by nodes.py), and, where rsyslog runs, into syslog and kern.log (Ubuntu) or
messages (Amazon Linux with rsyslog installed). The HyperPod agents' logs come from fixtures/varlog/.
The node's other files, and the facts the lines name, are content.py's.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from collectors.sandbox import FIXTURES, packs
from collectors.sandbox.content import (
    DISTRIBUTIONS,
    ClusterFacts,
    Node,
    boot_time,
    cluster_variables,
    distribution_variables,
    iso_time,
    node_units,
    node_variables,
    render,
    stand_in_kind,
    started_line,
    syslog_time,
)


@dataclass(frozen=True)
class LogEvent:
    uptime: float  # seconds since its boot
    identifier: str  # "kernel", "systemd", "kubelet", ...
    pid: int | None
    message: str


# `${syslog_tN} ${hostname} IDENT[PID]: MESSAGE` in fixtures/journal/ and the status tails; the kernel's
# messages start with their own `[uptime]`.
TEMPLATE_LINE_RE = re.compile(r"^\$\{syslog_t(\d)\} \$\{hostname\} ([^\s\[:]+)(?:\[(\d+)\])?: (.*)$")
KERNEL_STAMP_RE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
PACK_LINE_RE = re.compile(r"^([^\s\[:]+)(?:\[(\d+)\])?: (.*)$")
TEMPLATE_OFFSETS_S = (0, 12, 40, 95, 160)  # ${syslog_tN}: N-th moment after boot (time_variables)


def parse_template_events(text: str) -> list[LogEvent]:
    events = []
    for line in text.splitlines():
        match = TEMPLATE_LINE_RE.match(line)
        if not match:
            continue
        moment, identifier, pid, message = match.groups()
        uptime = float(TEMPLATE_OFFSETS_S[int(moment)])
        stamped = KERNEL_STAMP_RE.match(message) if identifier == "kernel" else None
        if stamped:
            uptime, message = float(stamped.group(1)), stamped.group(2)
        events.append(LogEvent(uptime, identifier, int(pid) if pid else None, message))
    return events


def boot_events(cluster: ClusterFacts, node: Node, units: list[list[str]]) -> list[LogEvent]:
    """A boot's messages (the same every boot), with the cluster's and distribution's values in."""
    descriptions = {unit[0]: unit[4] for unit in units}
    # The lines' own moments (${syslog_tN}) stay for parse_template_events: each boot has its own.
    cluster_values = {name: value for name, value in cluster_variables(cluster).items() if not name.startswith("syslog_t")}
    variables = {
        **cluster_values, **distribution_variables(node),
        "starting_cloud_init": started_line("cloud-init.service", descriptions["cloud-init.service"], node)
        .replace("Started", "Starting", 1).removesuffix(".") + "...",
        "started_ntp": next(started_line(name, text, node) for name, text in descriptions.items()
                            if name in ("chrony.service", "chronyd.service")),
        "multi_user_target": "multi-user.target - Multi-User System" if DISTRIBUTIONS[node.os].names_units
        else "Multi-User System",
    }
    events = []
    for name in ("kernel.txt", "system.txt"):
        text = string.Template((FIXTURES / "journal" / name).read_text()).safe_substitute(variables)
        events += parse_template_events(text)
    for unit in units:  # the journal lines `systemctl status` shows under each unit
        status = FIXTURES / "systemctl" / "status" / unit[0]
        if status.exists():
            text = string.Template(status.read_text()).safe_substitute(
                {**variables, "started": started_line(unit[0], unit[4], node)})
            events += parse_template_events(text)
    # Once each (a status tail may repeat a line), in time order; sorted() keeps equal times in file order.
    return sorted(dict.fromkeys(events), key=lambda event: event.uptime)


def pack_events(node: Node) -> list[LogEvent]:
    events = [LogEvent(uptime, "kernel", None, text) for uptime, text in packs.kernel_events(node.pack,
                                                                                             node.instance_type)]
    for uptime, text in packs.syslog_events(node.pack):
        identifier, pid, message = PACK_LINE_RE.match(text).groups()
        events.append(LogEvent(uptime, identifier, int(pid) if pid else None, message))
    return events


def node_log_tokens(node: Node) -> dict[str, str]:
    model = packs.gpu_model(node.instance_type)
    _, serials = packs.gpu_identities(node.instance_id, model[1] if model else 0)
    tokens = {"@hostname@": node.hostname, "@instance_id@": node.instance_id,
              "@sick_bus@": packs.sick_bus(node.pack, node.instance_type)}
    tokens.update({f"@serial{index}@": serial for index, serial in enumerate(serials)})
    return tokens


def fill_tokens(text: str, tokens: dict[str, str]) -> str:
    for token, value in tokens.items():
        text = text.replace(token, value)
    return text


def node_message(event: LogEvent, variables: dict[str, str], tokens: dict[str, str]) -> str:
    return fill_tokens(string.Template(event.message).safe_substitute(variables), tokens)


# Kernel messages at KERN_ERR or KERN_WARNING (the rest are info): what `journalctl -p` and dmesg's
# levels see. NVRM prints Xids as errors; the OOM killer warns when it is invoked and errs when it kills.
KERNEL_ERRORS = ("NVRM: Xid", "GPU has fallen off the bus", "Out of memory: Killed process")
KERNEL_WARNINGS = ("invoked oom-killer", "taints kernel")


def priority(event: LogEvent) -> int:
    """syslog priority: 3 error, 4 warning, 6 info; daemons' own levels where their lines carry one
    (klog's E/W prefix, logrus' level=)."""
    text = event.message
    if event.identifier == "kernel":
        if any(marker in text for marker in KERNEL_ERRORS):
            return 3
        return 4 if any(marker in text for marker in KERNEL_WARNINGS) else 6
    if re.match(r"^E\d{4}", text) or "level=error" in text or "No space left on device" in text \
            or "no space left on device" in text:
        return 3
    return 4 if re.match(r"^W\d{4}", text) or "level=warning" in text else 6


# ---------------------------------------------------------------------------------------------
# Boots: the journal keeps earlier ones


@functools.cache
def host_boot_id() -> str:
    """The running kernel's boot id: nodes share it, so `journalctl -b` and `-k` mean this boot."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


# Earlier boots the node's journal remembers: one inside the script's default 3-day window, one
# outside it, so the window shows in what journalctl returns.
EARLIER_BOOTS = (timedelta(days=10), timedelta(days=2))


def node_boots(node: Node, started_at: datetime) -> list[tuple[str, datetime]]:
    """(boot id, boot time) of each boot the node's journal holds, oldest first."""
    current = boot_time(started_at)
    boots = [(hashlib.sha256(f"{node.instance_id}/boot{index}".encode()).hexdigest()[:32], current - ago)
             for index, ago in enumerate(EARLIER_BOOTS)]
    return boots + [(host_boot_id(), current)]


# ---------------------------------------------------------------------------------------------
# Writing them: rsyslog's files, the journal's export stream, the kernel ring buffer


def syslog_line(at: datetime, hostname: str, event: LogEvent, message: str, kernel_stamps: bool) -> str:
    if event.identifier == "kernel":
        text = f"[{event.uptime:12.6f}] {message}" if kernel_stamps else message
        return f"{syslog_time(at)} {hostname} kernel: {text}"
    who = f"{event.identifier}[{event.pid}]" if event.pid else event.identifier
    return f"{syslog_time(at)} {hostname} {who}: {message}"


def event_unit(event: LogEvent, message: str, units: list[list[str]]) -> tuple[str | None, str | None]:
    """(_SYSTEMD_UNIT, UNIT): a daemon's lines belong to its service; systemd's own lines are about
    the unit they name, which is how `journalctl -u` finds both (_PID=1 UNIT=...)."""
    names = {unit[0] for unit in units}
    if event.identifier == "kernel":
        return None, None
    if event.identifier == "systemd" and event.pid == 1:
        about = next((name for name, *_, text in units if f" {name} " in f" {message} " or f" {text}." in message
                      or f" {text}..." in message), None)
        return "init.scope", about
    service = f"{event.identifier}.service"
    return (service if service in names else None), None


def export_entry(fields: list[tuple[str, object]]) -> str:
    return "".join(f"{name}={value}\n" for name, value in fields) + "\n"


def journal_fields(event: LogEvent, message: str, at: datetime, boot_id: str, node: Node,
                   units: list[list[str]]) -> list[tuple[str, object]]:
    """One entry as journald records it (systemd.journal-fields(7))."""
    fields: list[tuple[str, object]] = [
        ("__REALTIME_TIMESTAMP", int(at.timestamp() * 1_000_000)),
        ("__MONOTONIC_TIMESTAMP", int(event.uptime * 1_000_000)),
        ("_BOOT_ID", boot_id), ("_MACHINE_ID", node.machine_id), ("_HOSTNAME", node.hostname),
        ("PRIORITY", priority(event)),
    ]
    if event.identifier == "kernel":
        return fields + [("_TRANSPORT", "kernel"), ("SYSLOG_FACILITY", 0), ("SYSLOG_IDENTIFIER", "kernel"),
                         ("_SOURCE_MONOTONIC_TIMESTAMP", int(event.uptime * 1_000_000)), ("MESSAGE", message)]
    own_unit, about = event_unit(event, message, units)
    fields += [("_TRANSPORT", "journal" if event.pid == 1 else "stdout"), ("SYSLOG_FACILITY", 3),
               ("SYSLOG_IDENTIFIER", event.identifier), ("_PID", event.pid or 1), ("_UID", 0), ("_GID", 0),
               ("_COMM", event.identifier)]
    if own_unit:
        fields += [("_SYSTEMD_UNIT", own_unit), ("_SYSTEMD_CGROUP", f"/system.slice/{own_unit}"),
                   ("_SYSTEMD_SLICE", "system.slice" if own_unit != "init.scope" else "-.slice")]
    if about:
        fields.append(("UNIT", about))
    return fields + [("MESSAGE", message)]


@dataclass(frozen=True)
class RotatedLog:
    name: str  # under /var/log
    data: bytes
    mtime: float  # when its last line was written: what the node script's --since window reads


@dataclass
class NodeLogs:
    """What one node's logs hold, by destination."""

    files: dict[str, str]  # /var/log/<name> -> text (rsyslog's files, the HyperPod agents' logs)
    rotated: list[RotatedLog]  # rsyslog's files of the earlier boots, as logrotate left them
    journal_export: str  # journal export format: every boot's entries, oldest first
    kmsg: str  # the kernel ring buffer of this boot, for the dmesg stand-in: "[uptime] message" lines


class LogSources:
    """What every node's logs are made from, read once per sandbox: the agents' log templates, and
    each kind of node's units and boot messages."""

    def __init__(self, cluster: ClusterFacts) -> None:
        self.cluster = cluster
        self.templates = log_templates(cluster)
        self.kinds: dict[str, tuple[list[list[str]], list[LogEvent]]] = {}

    def units_and_boot(self, node: Node) -> tuple[list[list[str]], list[LogEvent]]:
        kind = stand_in_kind(node)
        if kind not in self.kinds:
            units = node_units(node, self.cluster.type)
            self.kinds[kind] = (units, boot_events(self.cluster, node, units))
        return self.kinds[kind]


def node_logs(node: Node, sources: LogSources) -> NodeLogs:
    units, base = sources.units_and_boot(node)
    variables = {**node_variables(node), **distribution_variables(node)}
    tokens = node_log_tokens(node)
    this_boot = sorted(base + pack_events(node), key=lambda event: event.uptime)
    lines = [(event, node_message(event, variables, tokens)) for event in this_boot]
    files = {relative: fill_tokens(string.Template(template).safe_substitute(variables), tokens)
             for relative, template in sources.templates.items()}
    agent_lines = event_lines(sources.cluster.started_at, packs.agent_events(node.pack), "{iso} {text}")
    if agent_lines:
        files["aws/clusters/sagemaker-cluster-agent.log"] += fill_tokens("\n".join(agent_lines), tokens) + "\n"
    rotated = []
    if node.rsyslog:
        files.update(rsyslog_files(node, boot_time(sources.cluster.started_at), lines))
        earlier = [(event, node_message(event, variables, tokens)) for event in base]
        rotated = rotated_logs(node, sources.cluster.started_at, earlier)
    kmsg = "".join(f"[{event.uptime:12.6f}] {message}\n" for event, message in lines if event.identifier == "kernel")
    journal = journal_export(node, sources.cluster.started_at, units, base, this_boot, variables, tokens)
    return NodeLogs(files=files, rotated=rotated, journal_export=journal, kmsg=kmsg)


def rsyslog_files(node: Node, booted: datetime, lines: list[tuple[LogEvent, str]]) -> dict[str, str]:
    """Ubuntu's rsyslog: everything in syslog, the kernel's in kern.log too; Amazon Linux's: messages."""
    distribution = DISTRIBUTIONS[node.os]
    everything = [syslog_line(booted + timedelta(seconds=event.uptime), node.hostname, event, message,
                              distribution.kernel_stamps) for event, message in lines]
    kernel = [text for (event, _), text in zip(lines, everything) if event.identifier == "kernel"]
    return {name: "\n".join(kernel if name == "kern.log" else everything) + "\n" for name in distribution.rsyslog_files}


def rotated_logs(node: Node, started_at: datetime, lines: list[tuple[LogEvent, str]]) -> list[RotatedLog]:
    """The earlier boots' rsyslog files, newest first, as logrotate names them: Ubuntu's daily
    rotation keeps `syslog.1` and compresses older ones (`syslog.2.gz`, delaycompress); Amazon Linux's
    names them by date (`messages-20261130`)."""
    rotated = []
    earlier_boots = [booted for boot_id, booted in node_boots(node, started_at) if boot_id != host_boot_id()]
    for age, booted in enumerate(reversed(earlier_boots), 1):
        last = booted + timedelta(seconds=lines[-1][0].uptime)
        for name, text in rsyslog_files(node, booted, lines).items():
            if node.os == "al2023":
                rotated.append(RotatedLog(f"{name}-{(last + timedelta(days=1)).strftime('%Y%m%d')}", text.encode(),
                                          last.timestamp()))
            elif age == 1:
                rotated.append(RotatedLog(f"{name}.1", text.encode(), last.timestamp()))
            else:
                rotated.append(RotatedLog(f"{name}.{age}.gz", gzip.compress(text.encode(), mtime=0), last.timestamp()))
    return rotated


def journal_export(node: Node, started_at: datetime, units: list[list[str]], base: list[LogEvent],
                   this_boot: list[LogEvent], variables: dict[str, str], tokens: dict[str, str]) -> str:
    """Every boot's entries, oldest first: earlier boots had the same boot messages, this one its pack's too."""
    entries = []
    for boot_id, booted in node_boots(node, started_at):
        for event in this_boot if boot_id == host_boot_id() else base:
            at = booted + timedelta(seconds=event.uptime)
            message = node_message(event, variables, tokens)
            entries.append(export_entry(journal_fields(event, message, at, boot_id, node, units)))
    return "".join(entries)


def log_templates(cluster: ClusterFacts) -> dict[str, str]:
    """The /var/log templates (the HyperPod agents' logs) with the cluster's values filled in, once
    for every node."""
    source_root = FIXTURES / "varlog"
    variables = cluster_variables(cluster)
    return {
        str(source.relative_to(source_root)): render(source, variables)
        for source in source_root.rglob("*")
        if source.is_file()
    }


def event_lines(started_at: datetime, events: list[tuple[float, str]], line_format: str) -> list[str]:
    """Pack events (seconds after boot, text) as log lines, in time order."""
    boot = boot_time(started_at)
    lines = []
    for uptime, text in sorted(events):
        moment = boot + timedelta(seconds=uptime)
        lines.append(line_format.format(syslog=syslog_time(moment), iso=iso_time(moment), uptime=uptime, text=text))
    return lines
