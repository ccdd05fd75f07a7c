"""Why a role will (not) train: one plain dict per role for `status` and `trigger show`, and the sentence
people read ("surveyor: 212 of 500 new records; next schedule Sun 03:00 CET; would defer: on battery (41 %)").
Read-only: decide() runs on what the store holds now, and nothing is applied."""

from __future__ import annotations

import json
from typing import Any, Sequence

from iceburg_daemon.config import Config
from iceburg_daemon.store import RunStatus, Store
from iceburg_daemon.trigger.clock import Instant
from iceburg_daemon.trigger.cron import describe
from iceburg_daemon.trigger.decide import backoff_seconds, cooldown_left, decide, schedule_of, span
from iceburg_daemon.trigger.defer import Hold
from iceburg_daemon.trigger.state import count_new, load


def role_view(cfg: Config, store: Store, role: str, now: Instant) -> dict[str, Any]:
    p = cfg.role(role).trigger
    st = load(store, role, enabled=cfg.role(role).enabled,
              new_records=count_new(store, role, cfg.training.eval_percent))
    d = decide(now, st, p)
    sched = schedule_of(tuple(p.schedule), p.timezone)
    cooldown, backoff = cooldown_left(now, st, p), 0.0
    if st.failures and st.last_failure is not None and not st.needs_attention:
        backoff = max(0.0, backoff_seconds(st.failures, p) - now.elapsed_since(st.last_failure))
    waiting = [r["id"] for r in store.runs_in([RunStatus.QUEUED.value, RunStatus.INTERRUPTED.value])]
    active = store.active_run(role)
    run = None
    if active is not None:
        reason = active["reason"] or ""
        run = {"id": active["id"], "status": active["status"], "trigger": active["trigger"],
               "queue_position": waiting.index(active["id"]) + 1 if active["id"] in waiting else None,
               "deferred": json.loads(active["deferred"]) if active["deferred"] else [],
               "paused": reason[len("paused:"):] if reason.startswith("paused:") else None}
    return {"role": role, "enabled": st.enabled, "new_records": st.new_records, "min_new_records": p.min_new_records,
            "min_new_fraction": p.min_new_fraction, "last_train_size": st.last_train_size,
            "schedule": list(p.schedule), "next_fire": d.state.next_fire,
            "next_fire_text": describe(d.state.next_fire, sched.tz, now.wall) if sched else None,
            "cooldown_left_s": round(cooldown), "backoff_left_s": round(backoff), "failures": st.failures,
            "needs_attention": st.needs_attention, "last_success": st.last_success, "run": run,
            "decision": {"action": d.action, "reason": d.reason, "detail": d.detail, "next_check": d.next_check}}


def sentence(view: dict[str, Any], current: Sequence[Hold] = ()) -> str:
    if not view["enabled"]:
        return f"{view['role']}: disabled"
    parts = [f"{view['new_records']} of {view['min_new_records']} new records"]
    if view["next_fire_text"]:
        parts.append(f"next schedule {view['next_fire_text']}")
    if view["needs_attention"]:
        parts.append(f"NEEDS ATTENTION after {view['failures']} failed runs (`iceburgd trigger reset"
                     f" {view['role']}`)")
    elif view["backoff_left_s"]:
        parts.append(f"backing off {span(view['backoff_left_s'])} after {view['failures']} failure(s)")
    if view["cooldown_left_s"]:
        parts.append(f"cooldown {span(view['cooldown_left_s'])} left")
    run = view["run"]
    if run:
        where = f", #{run['queue_position']} in the queue" if run["queue_position"] else ""
        text = f"run {run['id']} {run['status']}{where}"
        if run["paused"]:
            text += f", paused ({run['paused']})"
        if run["deferred"]:
            text += f", deferred ({', '.join(run['deferred'])})"
        parts.append(text)
    elif view["decision"]["action"] == "fire":
        parts.append(f"would queue a run now ({view['decision']['reason']})")
    if current:
        parts.append("would defer: " + ", ".join(h.text for h in current))
    return f"{view['role']}: " + "; ".join(parts)

