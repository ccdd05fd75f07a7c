"""What the machine is doing, for deferral: power source and charge, user idle time, CPU speed limit, load, free
disk. Each probe is a parser over the platform's own output plus a thin reader; a probe that fails says
"unknown", which never defers, and is logged once.

Sources: macOS `pmset -g batt`, `pmset -g therm`, `ioreg -c IOHIDSystem` (HIDIdleTime, ns); Linux
`/sys/class/power_supply/*/{type,online,status,capacity,scope}`; everywhere `os.getloadavg()` and the free space
of data_dir and models_dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from iceburg_daemon.logs import get_logger

log = get_logger("iceburgd.probes")
_PCT = re.compile(r"(\d{1,3})%")
_IDLE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')
_SPEED = re.compile(r"CPU_Speed_Limit\s*=\s*(\d+)")
_DRAWING = re.compile(r"Now drawing from '([^']+)'")


@dataclass(frozen=True)
class Power:
    on_battery: bool | None  # None: unknown (treated as on AC)
    percent: float | None = None


@dataclass(frozen=True)
class Conditions:
    power: Power = Power(None)
    idle_seconds: float | None = None  # since the last keyboard or mouse input; None: unknown (idle)
    cpu_speed_limit: float | None = None  # percent; None: no limit reported
    load: float | None = None  # 1-minute load average
    free_disk_gb: float | None = None  # the smaller of data_dir's and models_dir's file systems


def parse_pmset_batt(text: str) -> Power:
    """`pmset -g batt`: the source line says AC, Battery or UPS power; the battery line gives the charge."""
    m = _DRAWING.search(text)
    if m is None:
        raise ValueError("no \"Now drawing from\" line")
    pct = _PCT.search(text)
    return Power(m.group(1) in ("Battery Power", "UPS Power"), float(pct.group(1)) if pct else None)


def parse_power_supplies(supplies: dict[str, dict[str, str]]) -> Power:
    """Linux power_supply folders -> on battery? Mains or USB online means AC; a discharging system battery
    without it means battery; no supply at all (a desktop, a VM) is unknown."""
    mains = [s for s in supplies.values() if s.get("type") in ("Mains", "USB")]
    batteries = [s for s in supplies.values() if s.get("type") == "Battery" and s.get("scope", "System") == "System"]
    percent = next((float(b["capacity"]) for b in batteries if b.get("capacity", "").isdigit()), None)
    if any(s.get("online") == "1" for s in mains):
        return Power(False, percent)
    if any(b.get("status") == "Discharging" for b in batteries):
        return Power(True, percent)
    if mains and batteries:  # adapter reported offline, battery not saying "Discharging" (e.g. "Unknown")
        return Power(True, percent)
    return Power(None, percent) if not batteries else Power(False, percent)


def parse_ioreg_idle(text: str) -> float:
    m = _IDLE.search(text)
    if m is None:
        raise ValueError("no HIDIdleTime in ioreg output")
    return int(m.group(1)) / 1e9


def parse_pmset_therm(text: str) -> float | None:
    """`pmset -g therm`: CPU_Speed_Limit in percent, or None when no CPU power status was recorded."""
    m = _SPEED.search(text)
    if m is not None:
        return float(m.group(1))
    if "No CPU power status has been recorded" in text or "CPU Power notify" not in text:
        return None
    raise ValueError("CPU power status without CPU_Speed_Limit")


def parse_power_file(text: str) -> Power:
    """The tests' stand-in: "ac", "battery" or "battery 41"."""
    words = text.split()
    if not words or words[0] not in ("ac", "battery"):
        raise ValueError(f"power file says {text.strip()!r}; expected 'ac' or 'battery [PERCENT]'")
    return Power(words[0] == "battery", float(words[1]) if len(words) > 1 else None)


def read_power_supplies(root: Path = Path("/sys/class/power_supply")) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        values = {}
        for name in ("type", "online", "status", "capacity", "scope"):
            try:
                values[name] = (folder / name).read_text().strip()
            except OSError:
                continue
        out[folder.name] = values
    return out


Runner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise OSError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


class Probes:
    """Reads Conditions for one data folder; failures are logged once per probe and read as unknown."""

    def __init__(self, folders: Sequence[Path], *, power_file: str = "", platform: str = sys.platform,
                 run: Runner = run_command, sys_root: Path = Path("/sys/class/power_supply")):
        self.folders, self.power_file, self.platform = list(folders), power_file, platform
        self.run, self.sys_root = run, sys_root
        self.failed: set[str] = set()

    def read(self, *, need_idle: bool = True, need_thermal: bool = True) -> Conditions:
        return Conditions(
            power=self._guard("power", self.power, Power(None)),
            idle_seconds=self._guard("idle", self.idle, None) if need_idle else None,
            cpu_speed_limit=self._guard("thermal", self.thermal, None) if need_thermal else None,
            load=self._guard("load", lambda: os.getloadavg()[0], None),
            free_disk_gb=self._guard("disk", self.free_disk_gb, None),
        )

    def power(self) -> Power:
        if self.power_file:
            path = Path(self.power_file)
            return parse_power_file(path.read_text()) if path.exists() else Power(None)
        if self.platform == "darwin":
            return parse_pmset_batt(self.run(["pmset", "-g", "batt"]))
        return parse_power_supplies(read_power_supplies(self.sys_root))

    def idle(self) -> float | None:
        return parse_ioreg_idle(self.run(["ioreg", "-c", "IOHIDSystem"])) if self.platform == "darwin" else None

    def thermal(self) -> float | None:
        return parse_pmset_therm(self.run(["pmset", "-g", "therm"])) if self.platform == "darwin" else None

    def free_disk_gb(self) -> float:
        free = []
        for folder in self.folders:
            existing = folder
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            free.append(shutil.disk_usage(existing).free / 1e9)
        return min(free)

    def _guard(self, name: str, probe: Callable[[], object], unknown: object) -> object:
        try:
            return probe()
        except Exception as exc:  # noqa: BLE001 - a probe never stops a run; unknown never defers
            if name not in self.failed:
                self.failed.add(name)
                log.warning("probe_failed", probe=name, error=f"{type(exc).__name__}: {exc}")
            return unknown
