"""`iceburgd service install|uninstall|status|restart [--dry-run] [--json]` (printing only; see service.py)."""

from __future__ import annotations

import json
import os
import plistlib
import sys
from pathlib import Path
from typing import Any

from iceburg_daemon import service
from iceburg_daemon.config import Config

EXIT_OK, EXIT_FAILURE, EXIT_NO_LAUNCHD = 0, 1, 4


def add_parsers(sub: Any) -> None:
    svc = sub.add_parser("service", help="install, remove, restart or inspect the macOS launchd agent")
    actions = svc.add_subparsers(dest="service_command", required=True)
    for name, text in (("install", "write the agent's plist (after `config check`) and load it"),
                       ("uninstall", "unload the agent and remove its plist"),
                       ("restart", "restart the running agent (launchctl kickstart -k)"),
                       ("status", "what launchd says about the agent")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--dry-run", action="store_true", help="print the plist and the commands, change nothing")
        action.add_argument("--json", action="store_true")


def run(cfg: Config, args: Any) -> int:
    """The config was loaded and validated before this runs: an invalid one never reaches install."""
    home = Path(os.environ.get("HOME") or Path.home())
    p = service.plan(args.service_command, cfg, uid=os.getuid(), home=home)
    report: dict[str, Any] = {"action": args.service_command, "label": service.LABEL, "plist": str(p.plist_path),
                              "commands": [" ".join(c) for c in p.commands]}
    if args.dry_run:
        return _print_dry_run(p, report, as_json=args.json)
    if not service.launchctl_available():
        print("iceburgd: launchctl not found: `iceburgd service` manages a macOS launchd agent. Elsewhere run"
              " `iceburgd run` under your service manager (it stays in the foreground and stops on SIGTERM);"
              " `--dry-run` shows what would be installed.", file=sys.stderr)
        return EXIT_NO_LAUNCHD
    if p.plist is not None:
        service.write_plist(p, home)
    results = service.run_commands(p)
    failed = [r for i, r in enumerate(results) if r.returncode != 0 and i not in p.allowed_to_fail]
    if args.service_command == "uninstall" and not failed:
        p.plist_path.unlink(missing_ok=True)
    if args.service_command == "status":
        known = results[0].returncode == 0
        report.update(loaded=known, **(service.parse_print(results[0].stdout) if known else {}))
        failed = []  # "not loaded" is an answer, not a failure of the command
    report["ok"] = not failed
    if failed:
        report["error"] = (failed[0].stderr or failed[0].stdout).strip()[:500]
    _print(report, as_json=args.json)
    return EXIT_FAILURE if failed else EXIT_OK


def _print_dry_run(p: service.Plan, report: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({**report, "dry_run": True, "plist_content": p.plist}, indent=2))
        return EXIT_OK
    if p.plist is not None:
        print(f"# {p.plist_path}")
        print(plistlib.dumps(p.plist).decode())
    for command in report["commands"]:
        print(f"$ {command}")
    return EXIT_OK


def _print(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if report["action"] == "status":
        if not report["loaded"]:
            print(f"{service.LABEL}: not loaded (install it with `iceburgd service install`)")
        else:
            print(f"{service.LABEL}: {report.get('state', '?')}, pid {report.get('pid', '-')}, last exit code"
                  f" {report.get('last_exit_code', '-')}, runs {report.get('runs', '-')}")
        return
    if report["ok"]:
        done = {"install": f"installed and loaded {report['plist']}", "uninstall": "unloaded and removed",
                "restart": "restarted"}[report["action"]]
        print(f"{service.LABEL}: {done}")
    else:
        print(f"iceburgd: launchctl failed: {report['error']}", file=sys.stderr)
