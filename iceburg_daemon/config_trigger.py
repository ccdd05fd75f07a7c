"""The trigger part of the typed config: [<role>.trigger] (when a role is retrained) and [defer] (when a queued
run waits, and when a running one is paused). Validation is here too, so config.py stays a loader."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PauseCause = Literal["battery", "user_active", "quiet_hours", "thermal", "low_disk"]
_QUIET = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class TriggerParams:
    min_new_records: int = 200  # accepted training records no succeeded run has trained on (eval split excluded)
    min_new_fraction: float = 0.0  # ...and at least this share of the last run's training set (0 = off)
    schedule: tuple[str, ...] = ()  # cron expressions ("0 3 * * 0": Sundays 03:00), local to `timezone`
    timezone: str = "local"  # "local" (the Mac's zone) or an IANA name such as "Europe/Berlin"
    min_interval_minutes: float = 360.0  # cooldown between two runs of the role (threshold and schedule)
    retry_base_minutes: float = 30.0  # after a failed run: wait this long, doubling per failure...
    retry_max_minutes: float = 1440.0  # ...up to this
    max_consecutive_failures: int = 3  # then the role needs attention: no automatic runs until fixed
    misfire_grace_minutes: float = 60.0  # a schedule missed while asleep or stopped still fires this late


@dataclass(frozen=True)
class DeferConfig:
    on_battery: bool = True  # a queued run waits while the Mac runs on battery...
    battery_min_percent: float = 0.0  # ...unless the charge is at least this (0: never on battery)
    min_free_disk_gb: float = 5.0  # free space in data_dir and models_dir
    quiet_hours: tuple[str, ...] = ()  # local "HH:MM-HH:MM" ranges (may wrap midnight) when nothing starts
    max_load: float = 0.0  # 1-minute load average above this defers (0: off)
    min_idle_minutes: float = 10.0  # the user touched keyboard or mouse within this (macOS; elsewhere unknown)
    min_cpu_speed_limit: float = 80.0  # macOS throttles the CPU below this percent (pmset -g therm); 0: off
    pause_running_on: tuple[PauseCause, ...] = ("battery", "user_active")  # these also pause a running run
    # For tests only: read the power state from this file ("ac", or "battery 41") instead of the platform.
    test_power_file: str = ""


def parse_quiet_range(text: str) -> tuple[int, int] | None:
    """"22:30-06:00" -> (start, end) in minutes after midnight; None when malformed."""
    m = _QUIET.match(text.strip())
    if not m:
        return None
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    return h1 * 60 + m1, h2 * 60 + m2


def validate_triggers(defer: DeferConfig, roles: dict[str, TriggerParams], problems: list[str]) -> None:
    from iceburg_daemon.trigger.cron import CronError, parse_schedule

    for text in defer.quiet_hours:
        if parse_quiet_range(text) is None:
            problems.append(f"defer.quiet_hours: {text!r} is not HH:MM-HH:MM (24-hour, local time)")
    for name in ("battery_min_percent", "min_cpu_speed_limit"):
        if not 0 <= getattr(defer, name) <= 100:
            problems.append(f"defer.{name}: must be between 0 and 100, got {getattr(defer, name)}")
    for name in ("min_free_disk_gb", "max_load", "min_idle_minutes"):
        if getattr(defer, name) < 0:
            problems.append(f"defer.{name}: must be >= 0, got {getattr(defer, name)}")
    for role, t in roles.items():
        where = f"{role}.trigger"
        if t.min_new_records < 1 or t.max_consecutive_failures < 1:
            problems.append(f"{where}: min_new_records and max_consecutive_failures must be >= 1")
        if t.min_new_fraction < 0:
            problems.append(f"{where}.min_new_fraction: must be >= 0, got {t.min_new_fraction}")
        for name in ("min_interval_minutes", "retry_base_minutes", "retry_max_minutes", "misfire_grace_minutes"):
            if getattr(t, name) < 0:
                problems.append(f"{where}.{name}: must be >= 0, got {getattr(t, name)}")
        if t.retry_max_minutes < t.retry_base_minutes:
            problems.append(f"{where}: retry_max_minutes must be >= retry_base_minutes")
        try:
            parse_schedule(t.schedule, t.timezone)
        except CronError as exc:
            problems.append(f"{where}: {exc}")
