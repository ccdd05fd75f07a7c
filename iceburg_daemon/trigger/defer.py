"""Conditions + [defer] -> why a queued run must wait now (reason codes with a sentence each), and which of
them also pause a running run. Pure: the caller reads the probes and the local time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from iceburg_daemon.config_trigger import DeferConfig, parse_quiet_range
from iceburg_daemon.trigger.probes import Conditions

# [defer] pause_running_on names -> the reason code they pause on
PAUSE_CODES = {"battery": "on_battery", "user_active": "user_active", "quiet_hours": "quiet_hours",
               "thermal": "thermal", "low_disk": "low_disk"}
REASONS = ("on_battery", "low_disk", "quiet_hours", "busy_load", "user_active", "thermal")


@dataclass(frozen=True)
class Hold:
    code: str  # one of REASONS
    text: str  # for people: "on battery (41 %)"


def in_quiet_hours(ranges: tuple[str, ...], local: datetime) -> str | None:
    """The configured range that holds at this local time, if any (a range may wrap midnight)."""
    minute = local.hour * 60 + local.minute
    for text in ranges:
        parsed = parse_quiet_range(text)
        if parsed is None:
            continue
        start, end = parsed
        inside = start <= minute < end if start <= end else (minute >= start or minute < end)
        if inside:
            return text
    return None


def holds(cond: Conditions, cfg: DeferConfig, local: datetime) -> list[Hold]:
    out: list[Hold] = []
    p = cond.power
    if cfg.on_battery and p.on_battery:
        allowed = cfg.battery_min_percent > 0 and p.percent is not None and p.percent >= cfg.battery_min_percent
        if not allowed:
            pct = f" ({p.percent:.0f} %)" if p.percent is not None else ""
            out.append(Hold("on_battery", f"on battery{pct}"))
    if cfg.min_free_disk_gb > 0 and cond.free_disk_gb is not None and cond.free_disk_gb < cfg.min_free_disk_gb:
        out.append(Hold("low_disk", f"low disk ({cond.free_disk_gb:.1f} GB free, {cfg.min_free_disk_gb:g} needed)"))
    quiet = in_quiet_hours(cfg.quiet_hours, local)
    if quiet:
        out.append(Hold("quiet_hours", f"quiet hours ({quiet})"))
    if cfg.max_load > 0 and cond.load is not None and cond.load > cfg.max_load:
        out.append(Hold("busy_load", f"busy (load {cond.load:.2f} > {cfg.max_load:g})"))
    if cfg.min_idle_minutes > 0 and cond.idle_seconds is not None and cond.idle_seconds < cfg.min_idle_minutes * 60:
        out.append(Hold("user_active", f"user active {cond.idle_seconds / 60:.0f} min ago"))
    if cfg.min_cpu_speed_limit > 0 and cond.cpu_speed_limit is not None \
            and cond.cpu_speed_limit < cfg.min_cpu_speed_limit:
        out.append(Hold("thermal", f"CPU throttled to {cond.cpu_speed_limit:.0f} %"))
    return out


def pausing(current: list[Hold], cfg: DeferConfig) -> Hold | None:
    """The first hold that also pauses a running run ([defer] pause_running_on)."""
    codes = {PAUSE_CODES[c] for c in cfg.pause_running_on}
    return next((h for h in current if h.code in codes), None)
