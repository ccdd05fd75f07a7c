"""Cron schedules -> next fire time, with APScheduler 3.x's CronTrigger doing the calendar arithmetic.

APScheduler only computes times here: it owns no thread and no job store. Two rules are ours, because 3.11
with zoneinfo answers a time in the past inside the repeated hour of a DST fall-back:
- a fire time is always strictly after the moment asked about;
- each local wall-clock time fires at most once (02:30 on a fall-back night fires once, not twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_PROBES = 3000  # bounded search: the repeated hour needs at most 60 one-minute steps per expression


class CronError(ValueError):
    """A schedule expression or time zone that cannot be used."""


@dataclass(frozen=True)
class Schedule:
    triggers: tuple[CronTrigger, ...]
    tz: tzinfo
    key: str  # the expressions and zone: a stored next fire time belongs to this key only


def zone(name: str) -> tzinfo:
    if name == "local":
        import tzlocal

        return tzlocal.get_localzone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r} (use \"local\" or an IANA name such as Europe/Berlin)") from exc


def parse_schedule(expressions: Sequence[str], tz_name: str) -> Schedule | None:
    """None when there is no schedule; CronError naming the bad expression otherwise."""
    tz = zone(tz_name)  # checked even without expressions: a typo should not wait for the first schedule
    if not expressions:
        return None
    triggers = []
    for expr in expressions:
        try:
            triggers.append(CronTrigger.from_crontab(expr, timezone=tz))
        except ValueError as exc:
            raise CronError(f"schedule {expr!r}: {exc} (five fields: minute hour day month weekday)") from exc
    return Schedule(tuple(triggers), tz, f"{tz_name}|" + "|".join(expressions))


def next_fire(schedule: Schedule, after: float, last_fire: float | None = None) -> float | None:
    """The first fire time (Unix seconds) strictly after `after` whose local wall time is later than that of
    `last_fire` (so a repeated DST hour never fires twice). None if the schedule never fires again."""
    after_dt = datetime.fromtimestamp(after, timezone.utc)
    last_local = _local(last_fire, schedule.tz) if last_fire is not None else None
    probe = after_dt
    for _ in range(_PROBES):
        found = [t.get_next_fire_time(None, probe) for t in schedule.triggers]
        candidates = [c for c in found if c is not None]
        if not candidates:
            return None
        best = min(candidates)
        if best <= after_dt:  # APScheduler answered the past (DST fold): look a minute further on
            probe = probe + timedelta(minutes=1)
            continue
        if last_local is not None and _local(best.timestamp(), schedule.tz) <= last_local:
            probe = max(probe + timedelta(minutes=1), best + timedelta(seconds=1))
            continue
        return best.timestamp()
    return None


def _local(ts: float, tz: tzinfo) -> datetime:
    """The naive local wall-clock time of a Unix time."""
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def describe(ts: float | None, tz: tzinfo, now: float) -> str:
    """"Sun 03:00 CET" within six days, else the date: how people read a next fire time."""
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz).strftime("%a %H:%M %Z" if abs(ts - now) < 6 * 86400 else "%Y-%m-%d %H:%M %Z")
