"""When an evidence line was written, in UTC, read from the stamp at the line's start.

The bundles hold the kernel's messages in three forms (bash/common.sh, bash/lib.sh):
- `journalctl -o short-iso`: `2026-11-22T10:01:02+0000`, the node's wall clock with its offset
  (systemd writes the offset without a colon: github.com/systemd/systemd/issues/26639);
- `dmesg -T`: `[Sun Nov 22 10:01:02 2026]`, local time without a zone, computed from the boot time
  (util-linux dmesg(1), --ctime: inaccurate after a suspend, which servers do not do);
- rsyslog's traditional files (kern.log, syslog, messages): `Nov 22 10:01:02`, local time without
  zone or year (RFC 3164 section 4.1.2; rsyslog's RSYSLOG_TraditionalFileFormat,
  www.rsyslog.com/doc/reference/templates/templates-reserved-names.html).
Agent, Slurm and rsyslog RFC 3339 lines start with an ISO 8601 stamp, with or without a zone.

A stamp without a zone is converted with the node's offset when one of its zoned lines gave it,
else taken as UTC and marked so. A stamp without a year is in the year before the collection.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

UTC = dt.timezone.utc
MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
ISO_RE = re.compile(r"^\[?(?P<date>\d{4}-\d\d-\d\d)[T ](?P<time>\d\d:\d\d:\d\d)(?:[.,]\d+)?"
                    r"(?P<zone>Z|[+-]\d\d:?\d\d)?(?![\d:])")
DMESG_RE = re.compile(r"^\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) "
                      r"(?P<time>\d\d:\d\d:\d\d) (?P<year>\d{4})\]")
SYSLOG_RE = re.compile(r"^(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d) ")
# A syslog stamp later than the collection by more than this is from the year before (clocks of
# nodes and operator differ by seconds, not days).
CLOCK_SLACK = dt.timedelta(days=1)


@dataclass(frozen=True)
class LineTime:
    utc: dt.datetime  # aware, in UTC
    zone_known: bool  # False: the line gave no zone and the node's offset was not known


def zone_offset(text: str) -> dt.timedelta | None:
    """The offset written in the line's ISO stamp, or None when the stamp has no zone."""
    match = ISO_RE.match(text)
    return _offset(match["zone"]) if match and match["zone"] else None


def line_time(text: str, offset: dt.timedelta | None, collected: dt.datetime) -> LineTime | None:
    """The line's moment in UTC. `offset` is the node's (None: not known); `collected` (aware)
    gives the year to stamps that carry none."""
    local, zone = _read_stamp(text, collected)
    if local is None:
        return None
    zone_known = zone is not None or offset is not None
    moment = local - (zone if zone is not None else offset or dt.timedelta(0))
    return LineTime(moment.replace(tzinfo=UTC), zone_known)


def _read_stamp(text: str, collected: dt.datetime) -> tuple[dt.datetime | None, dt.timedelta | None]:
    """The stamp as written (naive) and the zone it names, if any."""
    iso = ISO_RE.match(text)
    if iso:
        moment = _naive(f"{iso['date']}T{iso['time']}")
        return moment, _offset(iso["zone"]) if iso["zone"] else None
    dmesg = DMESG_RE.match(text)
    if dmesg:
        return _dated(int(dmesg["year"]), dmesg["month"], dmesg["day"], dmesg["time"]), None
    syslog = SYSLOG_RE.match(text)
    if syslog:
        reference = collected.astimezone(UTC).replace(tzinfo=None)
        moment = _dated(reference.year, syslog["month"], syslog["day"], syslog["time"])
        if moment is None or moment > reference + CLOCK_SLACK:  # None: Feb 29 of a leap year before
            moment = _dated(reference.year - 1, syslog["month"], syslog["day"], syslog["time"])
        return moment, None
    return None, None


def _dated(year: int, month: str, day: str, clock: str) -> dt.datetime | None:
    if month not in MONTHS:
        return None
    return _naive(f"{year:04d}-{MONTHS[month]:02d}-{int(day):02d}T{clock}")


def _naive(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:  # Feb 29 of the wrong year, a 25th hour: not a stamp
        return None


def _offset(zone: str) -> dt.timedelta:
    if zone == "Z":
        return dt.timedelta(0)
    digits = zone[1:].replace(":", "")
    size = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return size if zone[0] == "+" else -size
