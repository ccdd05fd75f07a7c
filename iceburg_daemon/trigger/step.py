"""The daemon's trigger step and start gate: decide per role and act on it (queue, coalesce, skip, each an
event), pick the next run allowed to start (oldest first; deferral and cooldown hold a run in its place), and
say which running run must pause. `enqueue` is also how `iceburgd train` queues a manual run."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from typing import Any, Callable, Sequence

from iceburg_daemon import ROLES
from iceburg_daemon.config import Config
from iceburg_daemon.errors import TrainingError
from iceburg_daemon.logs import get_logger
from iceburg_daemon.runner import queue_run
from iceburg_daemon.store import RunStatus, Store
from iceburg_daemon.trigger import state as role_state
from iceburg_daemon.trigger.clock import Instant, now_instant
from iceburg_daemon.trigger.decide import Decision, cooldown_left, decide, span
from iceburg_daemon.trigger.defer import Hold, holds, pausing
from iceburg_daemon.trigger.probes import Conditions, Probes

log = get_logger("iceburgd.trigger")


def enqueue(cfg: Config, store: Store, role: str, *, kind: str, now: float, urgent: bool = False,
            detail: str = "", on_progress: Callable[[], object] = lambda: None) -> tuple[str, bool]:
    """Queue a run for `kind` (threshold | schedule | manual), or coalesce into the role's active run.
    Returns (run id, created). A role switched off (`[<role>] enabled = false`) is refused."""
    if not cfg.role(role).enabled:
        raise TrainingError(f"role {role!r} is disabled ([{role}] enabled = false in the config)")

    def fired(run_id: str) -> None:  # inside queue_run's transaction: the run and its trigger commit together
        store.add_event("trigger_fired", role, now, trigger=kind, run=run_id, detail=detail)
        store.save_role_trigger(role, **{f"last_fire_{kind}": now})

    run_id, created = queue_run(cfg, store, role, reason=kind, trigger=kind, urgent=urgent, now=now,
                                on_queued=fired, on_progress=on_progress)
    if not created:
        with store.transaction():
            store.add_event("trigger_coalesced", role, now, trigger=kind, run=run_id, detail=detail)
            if urgent:
                store.update_run(run_id, urgent=1)
    return run_id, created


class TriggerStage:
    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 probes: Probes | None = None, instant: Callable[[float], Instant] = now_instant,
                 on_fire: Callable[[str, str], None] | None = None,
                 keep_alive: Callable[[], object] = lambda: None):
        self.cfg, self.store, self.clock, self.instant = cfg, store, clock, instant
        self.keep_alive = keep_alive  # called while a big dataset snapshot is written
        self.probes = probes or Probes([cfg.data_dir, cfg.models_dir], power_file=cfg.defer.test_power_file)
        self.on_fire = on_fire
        self._counts_key: Any = None
        self._counts: dict[str, int] = {}
        self._conditions: tuple[float, Conditions] | None = None
        self.last_decisions: dict[str, Decision] = {}

    def roles(self) -> list[str]:
        return [r for r in ROLES if self.cfg.role(r).enabled]

    # ---- deciding ------------------------------------------------------------------------------------------
    def new_counts(self) -> dict[str, int]:
        """New records per role, recounted only when verdicts or runs changed."""
        key = self.store.counts_signature()
        if key != self._counts_key:
            self._counts = {r: role_state.count_new(self.store, r, self.cfg.training.eval_percent)
                            for r in self.roles()}
            self._counts_key = key
        return self._counts

    def run(self, *, filtering: bool = False) -> list[Decision]:
        """One decision per enabled role. While the filter has a backlog (`filtering`) nothing is recounted or
        fired: the counts would be partial, and recounting a large store every pass would slow the backfill."""
        now = self.instant(self.clock())
        counts = {} if filtering else self.new_counts()
        out = []
        for role in self.roles():
            before = role_state.load(self.store, role, new_records=counts.get(role))
            before = dataclasses.replace(before, filtering=filtering)
            decision = decide(now, before, self.cfg.role(role).trigger)
            self._apply(role, before, decision, now)
            out.append(decision)
        return out

    def _apply(self, role: str, before: role_state.RoleState, d: Decision, now: Instant) -> None:
        previous = self.last_decisions.get(role)
        self.last_decisions[role] = d
        if d.action == "fire":
            assert d.kind is not None
            try:
                run_id, _ = enqueue(self.cfg, self.store, role, kind=d.kind, now=now.wall, detail=d.detail,
                                    on_progress=self.keep_alive)
            except TrainingError as exc:  # nothing to train after all (all new records held out): try later
                log.warning("trigger_failed", role=role, trigger=d.kind, error=str(exc))
                with self.store.transaction():
                    self.store.add_event("trigger_skipped", role, now.wall, trigger=d.kind, reason="queue_failed",
                                         detail=str(exc))
                    role_state.save(self.store, d.state, now=now.wall, decision=d)
                return
            log.info("trigger_fired", role=role, trigger=d.kind, run=run_id, detail=d.detail)
            if self.on_fire:
                self.on_fire(role, d.kind)
        changed = d.state != before or previous is None or (previous.action, previous.reason) != (d.action, d.reason)
        if not changed and d.action in ("none", "wait"):
            return
        with self.store.transaction():
            if d.action in ("coalesce", "skip"):
                kind = "trigger_coalesced" if d.action == "coalesce" else "trigger_skipped"
                self.store.add_event(kind, role, now.wall, trigger=d.kind, reason=d.reason, detail=d.detail,
                                     run=d.state.active_run)
                log.info(kind, role=role, trigger=d.kind, reason=d.reason, detail=d.detail)
            role_state.save(self.store, d.state, now=now.wall, decision=d)

    # ---- starting and pausing ------------------------------------------------------------------------------
    def conditions(self) -> Conditions:
        """Probed at most once per heartbeat period (they run pmset/ioreg on a Mac)."""
        t = time.monotonic()
        if self._conditions is None or t - self._conditions[0] >= self.cfg.daemon.heartbeat_seconds:
            d = self.cfg.defer
            self._conditions = (t, self.probes.read(need_idle=d.min_idle_minutes > 0,
                                                    need_thermal=d.min_cpu_speed_limit > 0))
        return self._conditions[1]

    def holds(self) -> list[Hold]:
        return holds(self.conditions(), self.cfg.defer, datetime.fromtimestamp(self.clock()).astimezone())

    def gate(self, rows: Sequence[Any]) -> Any:
        """The oldest run allowed to start now, or None. Runs held back are marked deferred (an event when the
        reasons change); a run that was deferred and starts now gets run_resumed."""
        if not rows:
            return None
        now = self.instant(self.clock())
        current = self.holds()
        for row in rows:
            waits = [] if row["urgent"] else [(h.code, h.text) for h in current]
            if not row["urgent"] and row["started_at"] is None:  # a manual run queued in the cooldown waits for it
                left = cooldown_left(now, role_state.load(self.store, row["role"]), self.cfg.role(row["role"]).trigger)
                if left > 0:
                    waits.append(("cooldown", f"cooldown, {span(left)} left"))
            codes = [c for c, _ in waits]
            was = json.loads(row["deferred"]) if row["deferred"] else None
            if codes:
                if codes != was:
                    with self.store.transaction():
                        self.store.update_run(row["id"], deferred=json.dumps(codes))
                        self.store.add_event("run_deferred", row["id"], now.wall, reasons=codes,
                                             detail="; ".join(t for _, t in waits))
                    log.info("run_deferred", run=row["id"], reasons=codes)
                continue
            if was:
                with self.store.transaction():
                    self.store.update_run(row["id"], deferred=None)
                    self.store.add_event("run_resumed", row["id"], now.wall, after=was)
                log.info("run_resumed", run=row["id"], after=was)
            return row
        return None

    def pause_cause(self, run_id: str) -> Hold | None:
        """A hold that pauses this running run now ([defer] pause_running_on); never for a `--now` run."""
        row = self.store.run(run_id)
        if row is None or row["urgent"] or row["status"] != RunStatus.RUNNING.value:
            return None
        return pausing(self.holds(), self.cfg.defer)
