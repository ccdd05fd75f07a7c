"""Instants that survive clock jumps: the wall clock for calendars (cron, quiet hours), a monotonic clock that
counts sleep for intervals (cooldown, back-off), and the boot it belongs to.

A monotonic reading is comparable across processes of one boot (the daemon, `iceburgd status`), so an interval
stored by one process is measured by another without trusting the wall clock. Across a reboot only the wall
clock is left; a backwards jump then reads as no time elapsed (never a skipped cooldown).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Instant:
    wall: float  # Unix seconds
    mono: float | None = None  # system monotonic seconds, counting sleep
    boot: str | None = None  # which boot `mono` belongs to

    def elapsed_since(self, earlier: "Instant") -> float:
        """Seconds from `earlier` to this instant; never negative, never inflated by a wall-clock leap within
        one boot."""
        if self.boot is not None and self.boot == earlier.boot and self.mono is not None and earlier.mono is not None:
            return max(0.0, self.mono - earlier.mono)
        return max(0.0, self.wall - earlier.wall)


def system_mono() -> float:
    """Monotonic seconds including sleep: CLOCK_BOOTTIME on Linux, CLOCK_MONOTONIC on macOS (whose
    time.monotonic() stops while asleep), else time.monotonic()."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None and sys.platform == "darwin":
        clock = time.CLOCK_MONOTONIC
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


@lru_cache(maxsize=1)
def boot_id() -> str | None:
    """An identifier of this boot: Linux's boot_id, macOS's kern.boottime; None when unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        pass
    try:
        out = subprocess.run(["sysctl", "-n", "kern.boottime"], capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.split(",")[0].strip() or None  # "{ sec = 1764650000"


def now_instant(wall: float) -> Instant:
    return Instant(wall, system_mono(), boot_id())
