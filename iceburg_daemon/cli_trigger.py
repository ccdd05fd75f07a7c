"""`iceburgd trigger show [ROLE] | reset ROLE`: why each role will (not) train now, and clearing a role's
failures after a fix."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from iceburg_daemon import ROLES
from iceburg_daemon.config import Config
from iceburg_daemon.store import Store
from iceburg_daemon.trigger.clock import now_instant

EXIT_OK = 0


def add_parsers(sub: Any) -> None:
    trigger = sub.add_parser("trigger", help="why each role will (not) train; reset a role after failures")
    trigger_sub = trigger.add_subparsers(dest="trigger_command", required=True)
    show = trigger_sub.add_parser("show", help="the current decision for each role, in a sentence")
    show.add_argument("role", nargs="?", choices=ROLES)
    show.add_argument("--json", action="store_true")
    reset = trigger_sub.add_parser("reset", help="clear a role's failures and needs_attention flag")
    reset.add_argument("role", choices=ROLES)
    reset.add_argument("--json", action="store_true")


def run_trigger(cfg: Config, args: argparse.Namespace) -> int:
    if args.trigger_command == "reset":
        return _reset(cfg, args.role, as_json=args.json)
    from iceburg_daemon.trigger.defer import holds
    from iceburg_daemon.trigger.explain import role_view, sentence
    from iceburg_daemon.trigger.probes import Probes

    now = time.time()
    current = holds(Probes([cfg.data_dir, cfg.models_dir], power_file=cfg.defer.test_power_file).read(), cfg.defer,
                    datetime.fromtimestamp(now).astimezone())
    store = Store.open_readonly(cfg.db_path)
    try:
        roles = [args.role] if args.role else [r for r in ROLES if cfg.role(r).enabled]
        views = [role_view(cfg, store, r, now_instant(now)) for r in roles]
    finally:
        store.close()
    if args.json:
        print(json.dumps({"roles": views, "would_defer": [{"reason": h.code, "detail": h.text} for h in current]},
                         indent=2))
    else:
        for view in views:
            print(sentence(view, current))
    return EXIT_OK


def _reset(cfg: Config, role: str, *, as_json: bool) -> int:
    now = time.time()
    store = Store.open(cfg.db_path)
    try:
        row = store.role_trigger(role)
        before = {"failures": row["failures"] if row else 0, "needs_attention": bool(row["needs_attention"]) if row
                  else False}
        with store.transaction():
            store.save_role_trigger(role, failures=0, needs_attention=0, last_failure_wall=None,
                                    last_failure_mono=None, last_failure_boot=None, updated_at=now)
            store.add_event("trigger_reset", role, now, **before)
    finally:
        store.close()
    text = (f"{role}: reset ({before['failures']} failures cleared"
            + (", no longer needs attention)" if before["needs_attention"] else ")"))
    print(json.dumps({"role": role, "reset": True, "before": before}) if as_json else text)
    return EXIT_OK
