"""RoleState <-> the store: load and save a role's trigger state, count its new records, and fold run starts
and ends into it (called by the runner, whoever supervises the run: the daemon or `train --foreground`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iceburg_daemon.config_trigger import TriggerParams
from iceburg_daemon.snapshot import in_eval_bucket
from iceburg_daemon.store import Store
from iceburg_daemon.trigger.clock import Instant
from iceburg_daemon.trigger.decide import Decision, RoleState, after_run

KINDS = ("threshold", "schedule", "manual")


def count_new(store: Store, role: str, eval_percent: float) -> int:
    """Accepted training records that no succeeded run trained on, outside the (permanent + hash) eval split."""
    return sum(1 for r in store.untrained_accepted(role) if not in_eval_bucket(r["content_hash"], eval_percent))


def load(store: Store, role: str, *, enabled: bool = True, new_records: int | None = None) -> RoleState:
    row = store.role_trigger(role)
    active = store.active_run(role)
    last = store.last_trained_run(role)
    base: dict[str, Any] = {"role": role, "enabled": enabled, "active_run": active["id"] if active else None,
                            "last_train_size": int(last["train_count"]) if last else 0}
    if row is None:
        return RoleState(**base, new_records=new_records or 0)
    return RoleState(
        **base,
        new_records=row["new_records"] if new_records is None else new_records,
        threshold_mark=row["threshold_mark"], schedule_key=row["schedule_key"], next_fire=row["next_fire"],
        schedule_slot=row["schedule_slot"],
        last_fire={k: row[f"last_fire_{k}"] for k in KINDS if row[f"last_fire_{k}"] is not None},
        last_run=_instant(row, "last_run"), failures=row["failures"], last_failure=_instant(row, "last_failure"),
        needs_attention=bool(row["needs_attention"]), last_success=row["last_success"])


def save(store: Store, st: RoleState, *, now: float, decision: Decision | None = None) -> None:
    fields: dict[str, Any] = {
        "new_records": st.new_records, "threshold_mark": st.threshold_mark, "schedule_key": st.schedule_key,
        "next_fire": st.next_fire, "schedule_slot": st.schedule_slot, "failures": st.failures,
        "needs_attention": int(st.needs_attention), "last_success": st.last_success, "updated_at": now,
        **{f"last_fire_{k}": st.last_fire.get(k) for k in KINDS},
        **_columns("last_run", st.last_run), **_columns("last_failure", st.last_failure)}
    if decision is not None:
        fields["decision"] = json.dumps({"action": decision.action, "reason": decision.reason,
                                         "detail": decision.detail, "next_check": decision.next_check})
    store.save_role_trigger(st.role, **fields)


def on_run_started(store: Store, role: str, now: Instant) -> None:
    """Cooldown counts from a run's start (and again from its end)."""
    store.save_role_trigger(role, **_columns("last_run", now))


def on_run_ended(store: Store, run: Any, status: str, now: Instant, params: TriggerParams) -> RoleState:
    """Inside the caller's transaction: a succeeded run's records become trained (no longer new); failures
    count toward back-off and needs_attention."""
    if status == "trained":
        ids = trained_ids(Path(run["run_dir"]))
        store.mark_trained(ids, run["role"], run["id"])
        store.add_run_records(run["id"], ids)  # lineage: `data which-models` and `data forget`
    state = after_run(load(store, run["role"]), status, now, params)
    save(store, state, now=now.wall)
    return state


def trained_ids(run_dir: Path) -> list[int]:
    """The record ids a run trained on: its frozen train and preference files."""
    ids: list[int] = []
    for name in ("train.jsonl", "preference.jsonl"):
        path = run_dir / name
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                ids.extend(json.loads(line)["id"] for line in fh if line.strip())
    return ids


def backfill_trained(store: Store) -> int:
    """Runs that succeeded before triggers existed: record what they trained on. Returns runs marked."""
    marked = 0
    for run in store.trained_runs_unmarked():
        ids = trained_ids(Path(run["run_dir"]))
        if ids:
            with store.transaction():
                store.mark_trained(ids, run["role"], run["id"])
            marked += 1
    return marked


def _instant(row: Any, prefix: str) -> Instant | None:
    wall = row[f"{prefix}_wall"]
    return None if wall is None else Instant(wall, row[f"{prefix}_mono"], row[f"{prefix}_boot"])


def _columns(prefix: str, inst: Instant | None) -> dict[str, Any]:
    return {f"{prefix}_wall": inst.wall if inst else None, f"{prefix}_mono": inst.mono if inst else None,
            f"{prefix}_boot": inst.boot if inst else None}
