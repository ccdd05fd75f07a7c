"""decide(now, role_state, params) with an injected clock: thresholds, coalescing, cron across DST, cooldown,
misfires after a sleep, clock jumps, back-off and needs_attention. Pure: no store, no processes."""

import dataclasses
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from iceburg_daemon.config_trigger import TriggerParams
from iceburg_daemon.trigger.clock import Instant
from iceburg_daemon.trigger.cron import next_fire, parse_schedule
from iceburg_daemon.trigger.decide import RoleState, after_run, backoff_seconds, decide

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc).timestamp()
BOOT = "boot-1"


def at(wall: float, mono: float | None = None, boot: str | None = BOOT) -> Instant:
    """An instant whose monotonic clock runs with the wall clock unless told otherwise."""
    return Instant(wall, wall - T0 + 1000.0 if mono is None else mono, boot)


def params(**kw) -> TriggerParams:
    base = {"min_new_records": 20, "min_interval_minutes": 60.0, "misfire_grace_minutes": 30.0}
    return TriggerParams(**{**base, **kw})


def step(now: Instant, st: RoleState, p: TriggerParams, *, queued_as: str = "run-1"):
    """One decision, then what the daemon does with it: a fire queues a run (the role then has an active run)."""
    d = decide(now, st, p)
    new = d.state
    if d.action == "fire":
        new = dataclasses.replace(new, active_run=queued_as)
    return d, new


def test_threshold_crossing_enqueues_exactly_one_run():
    p = params()
    st = RoleState("surveyor", new_records=19)
    d, st = step(at(T0), st, p)
    assert (d.action, d.reason) == ("none", "below_threshold") and "19 of 20" in d.detail
    st = dataclasses.replace(st, new_records=20)
    actions = []
    for i in range(10):  # the daemon ticks on; the run stays queued
        d, st = step(at(T0 + 5 * (i + 1)), st, p)
        actions.append(d.action)
    assert actions == ["fire"] + ["none"] * 9
    assert st.last_fire["threshold"] == T0 + 5 and st.threshold_mark == 20


def test_a_second_crossing_while_queued_coalesces_once_per_crossing():
    p = params()
    st = RoleState("surveyor", new_records=25)
    d, st = step(at(T0), st, p)
    assert d.action == "fire"
    seen = []
    for n in (30, 44, 45, 46, 64, 65):
        d, st = step(at(T0 + n), dataclasses.replace(st, new_records=n), p)
        seen.append((n, d.action))
    assert seen == [(30, "none"), (44, "none"), (45, "coalesce"), (46, "none"), (64, "none"), (65, "coalesce")]
    assert "coalesced into queued run run-1" in d.detail


def test_min_new_fraction_of_the_last_training_set():
    p = params(min_new_fraction=0.5)
    st = RoleState("surveyor", new_records=40, last_train_size=100)
    d, _ = step(at(T0), st, p)
    assert d.action == "none" and "50% of the last run's 100" in d.detail
    d, _ = step(at(T0), dataclasses.replace(st, new_records=50), p)
    assert d.action == "fire"


def test_cooldown_holds_the_threshold_until_it_has_passed():
    p = params(min_interval_minutes=60)
    st = RoleState("surveyor", new_records=50, last_run=at(T0))
    d, st = step(at(T0 + 59 * 60), st, p)
    assert (d.action, d.reason) == ("wait", "cooldown") and d.next_check == pytest.approx(T0 + 3600)
    d, st = step(at(T0 + 3600), st, p)
    assert d.action == "fire"


def _cron_fires(p: TriggerParams, start: float, hours: int, *, new_records: int = 5) -> list[datetime]:
    """Tick every 10 minutes for `hours`; each fire is recorded (in Berlin time) and its run finishes at once."""
    st = RoleState("surveyor", new_records=new_records)
    fired = []
    for i in range(hours * 6 + 1):
        now = at(start + i * 600)
        d, st = step(now, st, p)
        if d.action == "fire":
            fired.append(datetime.fromtimestamp(now.wall, BERLIN))
            st = dataclasses.replace(st, active_run=None)  # the run ran; no cooldown in these tests
    return fired


@pytest.mark.parametrize("day", [(2026, 3, 27), (2026, 10, 23)], ids=["spring-forward", "fall-back"])
def test_cron_fires_at_local_times_across_a_dst_change(day):
    p = params(schedule=("0 3 * * *",), timezone="Europe/Berlin", min_interval_minutes=0)
    start = datetime(*day, 12, 0, tzinfo=BERLIN).timestamp()
    fired = _cron_fires(p, start, 4 * 24)
    assert [(f.day, f.hour, f.minute) for f in fired] == [(day[2] + i, 3, 0) for i in range(1, 5)]
    offsets = {f.utcoffset().total_seconds() / 3600 for f in fired}
    assert offsets == {1.0, 2.0}  # both sides of the change, each at 03:00 local


def test_a_repeated_local_time_fires_once_and_a_skipped_one_fires_after_the_gap():
    sched = parse_schedule(["30 2 * * *"], "Europe/Berlin")
    fall = datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN).timestamp()
    first = next_fire(sched, fall)
    assert datetime.fromtimestamp(first, BERLIN).isoformat() == "2026-10-25T02:30:00+02:00"
    second = next_fire(sched, first, last_fire=first)  # APScheduler alone answers 02:30+01:00 here, then loops
    assert datetime.fromtimestamp(second, BERLIN).isoformat() == "2026-10-26T02:30:00+01:00"
    spring = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN).timestamp()
    gap = next_fire(sched, spring)  # 02:30 does not exist that night
    assert datetime.fromtimestamp(gap, BERLIN).date().isoformat() == "2026-03-29"
    every20 = parse_schedule(["*/20 * * * *"], "Europe/Berlin")
    t, seen = datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN).timestamp(), []
    last = None
    for _ in range(8):
        t = next_fire(every20, t, last_fire=last)
        last = t
        seen.append(datetime.fromtimestamp(t, BERLIN).strftime("%H:%M%z"))
    assert seen == ["02:00+0200", "02:20+0200", "02:40+0200", "03:00+0100", "03:20+0100", "03:40+0100",
                    "04:00+0100", "04:20+0100"]


def test_a_schedule_with_no_new_records_is_skipped_with_the_reason():
    p = params(schedule=("0 3 * * *",), timezone="Europe/Berlin")
    slot = datetime(2026, 11, 3, 3, 0, tzinfo=BERLIN).timestamp()
    st = RoleState("surveyor", new_records=0)
    d, st = step(at(slot - 3600), st, p)
    assert st.next_fire == slot
    d, st = step(at(slot + 5), st, p)
    assert (d.action, d.reason, d.kind) == ("skip", "no_new_records", "schedule")
    assert st.next_fire == slot + 86400 and st.schedule_slot == slot


def test_a_schedule_missed_during_sleep_fires_once_inside_the_grace_and_is_missed_outside():
    p = params(schedule=("0 3 * * *",), timezone="Europe/Berlin", misfire_grace_minutes=30)
    slot = datetime(2026, 11, 3, 3, 0, tzinfo=BERLIN).timestamp()
    st = RoleState("surveyor", new_records=5)
    _, st = step(at(slot - 7200), st, p)
    # asleep from 01:00 to 03:20 (inside the grace): one fire on wake, then nothing until tomorrow
    d, st2 = step(at(slot + 1200), st, p)
    assert (d.action, d.kind) == ("fire", "schedule")
    d, st2 = step(at(slot + 1260), dataclasses.replace(st2, active_run=None, last_run=None), p)
    assert d.action == "none" and st2.next_fire == slot + 86400
    # asleep for three days (outside the grace): recorded as missed once, never a burst of catch-up runs
    actions = []
    for t in (slot + 3 * 86400 - 600, slot + 3 * 86400 - 300):
        d, st = step(at(t), st, p)
        actions.append((d.action, d.reason))
    assert actions == [("skip", "missed"), ("none", "below_threshold")]
    assert st.next_fire == slot + 3 * 86400  # today's 03:00, still ahead


def test_a_backwards_clock_jump_fires_nothing_twice():
    p = params(schedule=("0 3 * * *",), timezone="Europe/Berlin", min_interval_minutes=120)
    slot = datetime(2026, 11, 3, 3, 0, tzinfo=BERLIN).timestamp()
    st = RoleState("surveyor", new_records=5)
    _, st = step(at(slot - 60, mono=0.0), st, p)
    d, st = step(at(slot + 1, mono=61.0), st, p)
    assert d.action == "fire"
    st = dataclasses.replace(st, active_run=None, last_run=at(slot + 2, mono=62.0))  # the run ran
    # the wall clock jumps back 30 minutes (NTP, a manual change); the monotonic clock runs on
    decisions = []
    for k in range(1, 13):
        d, st = step(at(slot - 1800 + 300 * k, mono=62.0 + 300 * k), dataclasses.replace(st, new_records=50), p)
        decisions.append(d.action)
        if d.action == "fire":
            st = dataclasses.replace(st, active_run=None)
    # 03:00 is not fired again; the threshold waits out the 2 h cooldown on the monotonic clock (fires at k=24)
    assert "fire" not in decisions and st.next_fire == slot + 86400
    d, _ = step(at(slot - 1800 + 300 * 24, mono=62.0 + 300 * 24), st, p)
    assert d.action == "fire" and d.kind == "threshold"


def test_a_forward_clock_leap_does_not_skip_the_cooldown():
    p = params(min_interval_minutes=60)
    st = RoleState("surveyor", new_records=50, last_run=at(T0, mono=100.0))
    d, _ = step(at(T0 + 86400, mono=160.0), st, p)  # wall +1 day, monotonic +1 minute: a clock change
    assert (d.action, d.reason) == ("wait", "cooldown")
    rebooted = at(T0 + 7200, mono=5.0, boot="boot-2")  # another boot: only the wall clock can say
    assert decide(rebooted, st, p).action == "fire"
    backwards_after_reboot = at(T0 - 7200, mono=5.0, boot="boot-2")
    assert decide(backwards_after_reboot, st, p).reason == "cooldown"  # negative elapsed counts as none


def test_failures_back_off_doubling_then_need_attention_until_a_success():
    p = params(retry_base_minutes=10, retry_max_minutes=30, max_consecutive_failures=4, min_interval_minutes=0)
    assert [backoff_seconds(n, p) / 60 for n in range(0, 6)] == [0, 10, 20, 30, 30, 30]
    st = RoleState("surveyor", new_records=50)
    t = T0
    waits = []
    for failure in range(1, 4):
        st = after_run(st, "failed", at(t), p)
        d = decide(at(t + 60), st, p)
        assert (d.action, d.reason) == ("wait", "backoff")
        waits.append(round((d.next_check - t) / 60))
        t += backoff_seconds(failure, p)
        assert decide(at(t), st, p).action == "fire"
    assert waits == [10, 20, 30]
    st = after_run(st, "timed_out", at(t), p)
    assert st.failures == 4 and st.needs_attention
    d = decide(at(t + 86400 * 7), st, p)
    assert (d.action, d.reason, d.next_check) == ("wait", "needs_attention", None)
    assert "trigger reset surveyor" in d.detail
    assert after_run(st, "cancelled", at(t), p).needs_attention  # a cancel neither counts nor clears
    cleared = after_run(st, "trained", at(t + 10), p)  # e.g. a manual run after a fix
    assert (cleared.failures, cleared.needs_attention, cleared.last_success) == (0, False, t + 10)


def test_a_disabled_role_never_fires():
    d = decide(at(T0), RoleState("general", enabled=False, new_records=10_000), params())
    assert (d.action, d.reason) == ("none", "disabled")


def test_nothing_is_decided_while_the_filter_has_a_backlog_and_a_due_slot_waits_for_it():
    p = params(schedule=("0 3 * * *",), timezone="Europe/Berlin", misfire_grace_minutes=30)
    slot = datetime(2026, 11, 3, 3, 0, tzinfo=BERLIN).timestamp()
    st = RoleState("surveyor", new_records=500)
    _, st = step(at(slot - 60), dataclasses.replace(st, filtering=True), p)
    d, st = step(at(slot + 60), dataclasses.replace(st, filtering=True), p)
    assert (d.action, d.reason) == ("wait", "filter_backlog") and st.active_run is None
    d, st = step(at(slot + 120), dataclasses.replace(st, filtering=False), p)
    assert (d.action, d.kind) == ("fire", "schedule")  # the slot was kept, and is inside its grace
