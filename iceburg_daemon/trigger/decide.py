"""When is a role retrained? decide(now, role_state, params) -> Decision, a pure function of an instant, the role's
stored state and its [<role>.trigger] table; after_run() folds a finished run into the state.

Rules (docs/operations.md, "When does it train?"):
- threshold: at least min_new_records accepted training records that no succeeded run trained on (the eval split
  never counts), and min_new_fraction of the last run's training set when set;
- schedule: cron times in a zone; a slot missed by more than misfire_grace_minutes is skipped as missed, a late
  one fires once, never a burst; a slot with no new records is skipped;
- nothing is decided while the filter still has a backlog (a due slot waits for it, its grace still counting);
- one active run per role: a fire while one is queued or running coalesces into it (threshold: once per further
  min_new_records);
- cooldown (min_interval_minutes since the last run started or ended), back-off after failures (retry_base
  doubling to retry_max), and needs_attention after max_consecutive_failures stop automatic fires.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from iceburg_daemon.config_trigger import TriggerParams
from iceburg_daemon.trigger.clock import Instant
from iceburg_daemon.trigger.cron import Schedule, next_fire, parse_schedule

FAILED = ("failed", "timed_out")  # run ends that count as failures (a cancel does not)


@dataclass(frozen=True)
class RoleState:
    role: str
    enabled: bool = True
    new_records: int = 0  # accepted training records, outside the eval split, that no succeeded run had
    last_train_size: int = 0  # training records of the last succeeded run (for min_new_fraction)
    active_run: str | None = None  # the role's queued, running or interrupted run
    threshold_mark: int | None = None  # new_records when the active run was fired or last coalesced into
    schedule_key: str | None = None  # the schedule next_fire was computed for
    next_fire: float | None = None  # next cron slot, Unix seconds
    schedule_slot: float | None = None  # the last cron slot handled (fired, skipped or missed)
    last_fire: dict[str, float] = dataclasses.field(default_factory=dict)  # kind -> wall time of its last fire
    last_run: Instant | None = None  # the last run's start or end: cooldown counts from here
    failures: int = 0  # consecutive failed runs
    last_failure: Instant | None = None
    needs_attention: bool = False
    last_success: float | None = None
    filtering: bool = False  # the filter still has a backlog: counts are incomplete, so nothing is decided yet


@dataclass(frozen=True)
class Decision:
    action: str  # none | wait | fire | coalesce | skip
    reason: str  # a code: threshold, schedule, below_threshold, queued, cooldown, backoff, needs_attention, ...
    next_check: float | None  # when the answer may change by time alone (Unix seconds), if known
    state: RoleState  # the role's state after this decision
    kind: str | None = None  # the trigger acted on: threshold | schedule
    detail: str = ""  # a sentence for logs and `trigger show`


@lru_cache(maxsize=64)
def schedule_of(expressions: tuple[str, ...], tz: str) -> Schedule | None:
    return parse_schedule(expressions, tz)


def threshold_met(state: RoleState, p: TriggerParams) -> bool:
    if state.new_records < p.min_new_records:
        return False
    return not (p.min_new_fraction > 0 and state.last_train_size > 0
                and state.new_records < p.min_new_fraction * state.last_train_size)


def backoff_seconds(failures: int, p: TriggerParams) -> float:
    """retry_base_minutes after the first failure, doubling per further one, capped at retry_max_minutes."""
    if failures <= 0:
        return 0.0
    return min(p.retry_max_minutes, p.retry_base_minutes * 2 ** min(failures - 1, 30)) * 60


def blocked(now: Instant, state: RoleState, p: TriggerParams) -> tuple[str, float | None, str] | None:
    """(code, until, sentence) when automatic runs must wait: needs attention, back-off, cooldown."""
    if state.needs_attention:
        return "needs_attention", None, (f"needs attention after {state.failures} failed runs"
                                         f" (`iceburgd trigger reset {state.role}` or a manual run that succeeds)")
    if state.failures and state.last_failure is not None:
        left = backoff_seconds(state.failures, p) - now.elapsed_since(state.last_failure)
        if left > 0:
            return "backoff", now.wall + left, f"backing off {span(left)} after {state.failures} failed run(s)"
    left = cooldown_left(now, state, p)
    if left > 0:
        return "cooldown", now.wall + left, f"cooldown, {span(left)} left"
    return None


def cooldown_left(now: Instant, state: RoleState, p: TriggerParams) -> float:
    """Seconds until min_interval_minutes have passed since the role's last run started or ended."""
    if state.last_run is None:
        return 0.0
    return max(0.0, p.min_interval_minutes * 60 - now.elapsed_since(state.last_run))


def decide(now: Instant, state: RoleState, p: TriggerParams) -> Decision:
    if not state.enabled:
        return Decision("none", "disabled", None, state, detail="role disabled")
    st = state if state.active_run else dataclasses.replace(state, threshold_mark=None)
    sched = schedule_of(tuple(p.schedule), p.timezone)
    if sched is None:
        st = dataclasses.replace(st, schedule_key=None, next_fire=None)
    elif st.schedule_key != sched.key or st.next_fire is None:
        after = max(now.wall, st.schedule_slot or now.wall)  # never before a slot already handled
        st = dataclasses.replace(st, schedule_key=sched.key, next_fire=next_fire(sched, after, st.schedule_slot))
    if st.filtering:  # decide on judged data only: a backfill must not train on its first few thousand records
        return Decision("wait", "filter_backlog", None, st, detail="waiting for the filter to judge the backlog")
    if sched is not None and st.next_fire is not None and now.wall >= st.next_fire:
        return _schedule_due(now, st, p, sched)
    return _threshold(now, st, p)


def _schedule_due(now: Instant, st: RoleState, p: TriggerParams, sched: Schedule) -> Decision:
    slot = st.next_fire
    assert slot is not None
    following = next_fire(sched, max(now.wall, slot), last_fire=slot)  # from now: missed slots never burst
    st = dataclasses.replace(st, schedule_slot=slot, next_fire=following)
    late = now.wall - slot
    if late > p.misfire_grace_minutes * 60:
        return Decision("skip", "missed", following, st, "schedule",
                        f"schedule missed by {span(late)} (grace {p.misfire_grace_minutes:g} min)")
    if st.active_run:
        return Decision("coalesce", "queued", following, st, "schedule", f"schedule: already queued as {st.active_run}")
    if st.new_records == 0:
        return Decision("skip", "no_new_records", following, st, "schedule", "schedule fired with no new records")
    why = blocked(now, st, p)
    if why is not None:
        return Decision("skip", why[0], following, st, "schedule", f"schedule skipped: {why[2]}")
    st = _fired(st, "schedule", now)
    return Decision("fire", "schedule", following, st, "schedule",
                    f"schedule fired with {st.new_records} new records")


def _threshold(now: Instant, st: RoleState, p: TriggerParams) -> Decision:
    need = f"{st.new_records} of {p.min_new_records} new records"
    if not threshold_met(st, p):
        if st.new_records >= p.min_new_records:
            need += f" ({p.min_new_fraction:.0%} of the last run's {st.last_train_size} needed)"
        return Decision("none", "below_threshold", st.next_fire, st, detail=need)
    if st.active_run:
        if st.threshold_mark is None or st.new_records >= st.threshold_mark + p.min_new_records:
            st = dataclasses.replace(st, threshold_mark=st.new_records)
            return Decision("coalesce", "queued", st.next_fire, st, "threshold",
                            f"{need}: coalesced into queued run {st.active_run}")
        return Decision("none", "queued", st.next_fire, st, detail=f"{need}; run {st.active_run} is queued")
    why = blocked(now, st, p)
    if why is not None:
        until = why[1] if st.next_fire is None or why[1] is None else min(why[1], st.next_fire)
        return Decision("wait", why[0], until, st, "threshold", f"{need}; {why[2]}")
    return Decision("fire", "threshold", st.next_fire, _fired(st, "threshold", now), "threshold", f"{need}: fired")


def _fired(st: RoleState, kind: str, now: Instant) -> RoleState:
    return dataclasses.replace(st, threshold_mark=st.new_records, last_fire={**st.last_fire, kind: now.wall})


def after_run(state: RoleState, status: str, now: Instant, p: TriggerParams) -> RoleState:
    """Fold a run's end into the role's state: a success clears failures and the attention flag; a failure (not
    a cancel) counts toward back-off and needs_attention."""
    if status == "trained":
        return dataclasses.replace(state, failures=0, last_failure=None, needs_attention=False,
                                   last_success=now.wall, last_run=now)
    if status in FAILED:
        failures = state.failures + 1
        return dataclasses.replace(state, failures=failures, last_failure=now, last_run=now,
                                   needs_attention=state.needs_attention or failures >= p.max_consecutive_failures)
    if status == "cancelled":
        return dataclasses.replace(state, last_run=now)
    return state


def span(seconds: float) -> str:
    """"12 min" or "2.5 h": how long, for people."""
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{max(1, round(seconds / 60))} min"
