"""`iceburgd service install|uninstall|status|restart`: the daemon as a per-user launchd agent on macOS.

The plist is built as a dict and written with the stdlib `plistlib` (no text substitution, so any path is
safe); `launchctl` does the rest: `bootstrap`/`bootout` in the user's GUI domain, `kickstart -k` to restart,
`print` for the status. Elsewhere the commands say launchd is missing; `--dry-run` prints everything anywhere.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from iceburg_daemon.config import Config

LABEL = "com.iceburg.iceburgd"
THROTTLE_SECONDS = 10  # launchd waits this long between restarts after a crash
NICE = 10  # a background service: the user's own work comes first


@dataclass
class Plan:
    """What a service command will do: the plist (install) and the launchctl command lines, in order."""

    plist_path: Path
    plist: dict[str, Any] | None = None
    commands: list[list[str]] = field(default_factory=list)
    allowed_to_fail: set[int] = field(default_factory=set)  # indexes of commands whose failure is expected


def agent_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "iceburgd"


def render(cfg: Config, *, python: str, home: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The agent's plist: this environment's Python running `-m iceburg_daemon --config <abs> run`."""
    config_path = Path(cfg.config_path).resolve()
    environment = {"PATH": env.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")}
    if env.get("OLLAMA_HOST"):
        environment["OLLAMA_HOST"] = env["OLLAMA_HOST"]
    logs = log_dir(home)
    return {
        "Label": LABEL,
        "ProgramArguments": [str(Path(python).absolute()), "-m", "iceburg_daemon", "--config", str(config_path),
                             "run"],
        "WorkingDirectory": str(config_path.parent),
        "EnvironmentVariables": environment,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted after a crash, not after a clean stop (exit 0)
        "ThrottleInterval": THROTTLE_SECONDS,
        "ExitTimeOut": cfg.shutdown_seconds,  # SIGTERM, then this long for an orderly stop, then SIGKILL
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "Nice": NICE,
        "StandardOutPath": str(logs / "iceburgd.out.log"),
        "StandardErrorPath": str(logs / "iceburgd.err.log"),
    }


def plan(action: str, cfg: Config, *, uid: int, home: Path, python: str = sys.executable,
         env: Mapping[str, str] = os.environ) -> Plan:
    domain, target = f"gui/{uid}", f"gui/{uid}/{LABEL}"
    p = Plan(agent_path(home))
    if action == "install":
        p.plist = render(cfg, python=python, home=home, env=env)
        p.commands = [["launchctl", "bootout", target], ["launchctl", "bootstrap", domain, str(p.plist_path)]]
        p.allowed_to_fail = {0}  # nothing to boot out on a first install
    elif action == "uninstall":
        p.commands = [["launchctl", "bootout", target]]
    elif action == "restart":
        p.commands = [["launchctl", "kickstart", "-k", target]]
    elif action == "status":
        p.commands = [["launchctl", "print", target]]
    else:
        raise ValueError(f"unknown service action {action!r}")
    return p


def launchctl_available() -> bool:
    return shutil.which("launchctl") is not None


def run_commands(p: Plan) -> list[subprocess.CompletedProcess[str]]:
    """Run the plan's commands in order; stops at the first failure that is not expected."""
    done = []
    for i, argv in enumerate(p.commands):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        done.append(result)
        if result.returncode != 0 and i not in p.allowed_to_fail:
            break
    return done


def write_plist(p: Plan, home: Path) -> None:
    assert p.plist is not None
    p.plist_path.parent.mkdir(parents=True, exist_ok=True)
    log_dir(home).mkdir(parents=True, exist_ok=True)
    tmp = p.plist_path.with_name(p.plist_path.name + ".tmp")
    tmp.write_bytes(plistlib.dumps(p.plist))
    os.replace(tmp, p.plist_path)


def parse_print(text: str) -> dict[str, Any]:
    """The facts `launchctl print gui/<uid>/<label>` gives about a service (its top-level `key = value` lines)."""
    out: dict[str, Any] = {}
    wanted = {"state": "state", "pid": "pid", "last exit code": "last_exit_code", "runs": "runs",
              "program": "program", "path": "plist"}
    for line in text.splitlines():
        m = re.match(r"^\t(\w[\w ]*?) = (.*)$", line)  # one tab: the service's own keys, not nested blocks
        if m and m.group(1) in wanted and wanted[m.group(1)] not in out:
            value: Any = m.group(2).strip()
            if re.fullmatch(r"-?\d+", value):
                value = int(value)
            out[wanted[m.group(1)]] = value
    return out
