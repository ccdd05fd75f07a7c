"""Idle cost of a running daemon with an empty inbox (default config): RSS and CPU over a window.

Usage: python benchmarks/idle.py [SECONDS]   (default 60)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.testing import spawn_daemon

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text("")  # all defaults, metrics endpoint included
        env = {"ICEBURGD_METRICS_PORT": "0"}
        cfg = load_config(home / "config.toml", env={})
        proc = spawn_daemon(home / "config.toml", env=env)
        try:
            while not cfg.db_path.exists():
                time.sleep(0.05)
            time.sleep(3)  # start-up done
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            peak = rss_mb(proc.pid)
            while time.monotonic() - t0 < window:
                time.sleep(1)
                peak = max(peak, rss_mb(proc.pid))
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"idle window: {window:.0f} s, heartbeat every {cfg.daemon.heartbeat_seconds} s")
    print(f"RSS peak: {peak:.1f} MB (target < 150 MB), CPU: {cpu:.2f} % of one core (target < 1 %)")


if __name__ == "__main__":
    main()
