"""Triggers in the real daemon: nobody types `train`; records arrive and a run is queued, trained and reported;
a run pauses on battery and resumes from its checkpoint on AC; queue, schedule and failures survive a restart;
the start gate and its events; `trigger show`, `trigger reset` and `train --now`."""

import json
import signal
import time
from pathlib import Path

from prometheus_client import generate_latest

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.formats import content_hash, parse_object
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.snapshot import in_eval_bucket
from iceburg_daemon.store import Store
from iceburg_daemon.store.runs import TRAINED
from iceburg_daemon.testing import (TINY_TRAINING, fact_record, iceburgd, spawn_daemon, wait_for, wait_until_running,
                                    write_config, write_jsonl)
from iceburg_daemon.trigger.probes import Conditions, Power

COLOURS = ("amber", "cobalt", "saffron", "teal", "ochre", "indigo", "silver", "umber", "crimson", "jade")


def _records(n: int, offset: int = 0) -> list[dict]:
    return [fact_record(f"site{offset + i}", COLOURS[(offset + i) % len(COLOURS)]) for i in range(n)]


def _trainable(records: list[dict], eval_percent: float = 25.0) -> int:
    return sum(not in_eval_bucket(content_hash(parse_object(r)), eval_percent) for r in records)


def _home(tmp_path: Path, base: Path, *, max_steps: int, trigger: str = "", defer: str = "",
          training: str = "", cooldown: float = 0) -> Path:
    assert "[surveyor.trigger]\nmin_interval_minutes = 0.0\n" in TINY_TRAINING
    text = TINY_TRAINING.format(base=base, epochs=1, max_steps=max_steps).replace(
        "[training]\n", "[training]\n" + training).replace(
        "[surveyor.trigger]\nmin_interval_minutes = 0.0\n",
        f"[surveyor.trigger]\nmin_new_records = 20\nmin_interval_minutes = {cooldown}\n" + trigger)
    text += "\n[defer]\nmin_free_disk_gb = 0.0\n" + defer
    return write_config(tmp_path / "home", text)


def _status(cfg_path: Path) -> dict:
    done = iceburgd("status", "--json", config=cfg_path)
    return json.loads(done.stdout)


def _run_row(cfg, run_id=None) -> dict | None:
    store = Store.open_readonly(cfg.db_path)
    try:
        rows = store.runs("surveyor")
        rows = [r for r in rows if run_id is None or r["id"] == run_id]
        return dict(rows[0]) if rows else None
    finally:
        store.close()


def _events(cfg, kind: str) -> list[dict]:
    store = Store.open_readonly(cfg.db_path)
    try:
        rows = store.conn.execute("SELECT * FROM events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [{"subject": r["subject"], **json.loads(r["data"])} for r in rows]
    finally:
        store.close()



def _stop(daemon) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0


def _step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "progress.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


def test_records_arriving_train_a_role_with_no_command_typed(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base, max_steps=8)
    cfg = load_config(cfg_path, env={})
    first, second = _records(12), _records(18, offset=12)
    assert _trainable(first) < 20 <= _trainable(first + second)  # the threshold is crossed by the second file
    daemon = spawn_daemon(cfg_path)
    try:
        wait_until_running(cfg.db_path)
        write_jsonl(cfg.inbox_dir / "monday.jsonl", first)
        wait_for(lambda: _status(cfg_path)["roles"][0]["new_records"] == _trainable(first), 60, "first file judged")
        assert _run_row(cfg) is None  # below the threshold: nothing queued
        shown = iceburgd("trigger", "show", "surveyor", config=cfg_path)
        assert shown.stdout.strip() == f"surveyor: {_trainable(first)} of 20 new records", shown.stdout
        write_jsonl(cfg.inbox_dir / "tuesday.jsonl", second)
        run = wait_for(lambda: (r := _run_row(cfg)) and r["status"] in TRAINED and r, 180, "a run to succeed")
    finally:
        _stop(daemon)
    status = _status(cfg_path)
    assert status["runs"][0]["id"] == run["id"] and status["runs"][0]["status"] in TRAINED
    assert status["runs"][0]["trigger"] == "threshold" and run["train_count"] == _trainable(first + second)
    role = status["roles"][0]
    assert role["role"] == "surveyor" and role["new_records"] == 0 and role["last_success"] is not None
    (fired,) = _events(cfg, "trigger_fired")
    assert fired["trigger"] == "threshold" and fired["run"] == run["id"]
    assert fired["detail"] == f"{_trainable(first + second)} of 20 new records: fired"
    assert _events(cfg, "run_deferred") == []


def test_a_run_pauses_on_battery_and_resumes_from_its_checkpoint_on_ac(tmp_path, tiny_base):
    power = tmp_path / "power"
    power.write_text("ac\n")
    cfg_path = _home(tmp_path, tiny_base, max_steps=400, defer=f'test_power_file = "{power}"\n')
    cfg = load_config(cfg_path, env={})
    daemon = spawn_daemon(cfg_path)
    try:
        wait_until_running(cfg.db_path)
        write_jsonl(cfg.inbox_dir / "usage.jsonl", _records(30))
        run = wait_for(lambda: (r := _run_row(cfg)) and r["status"] == "running" and r, 60, "the run to start")
        run_dir = Path(run["run_dir"])
        wait_for(lambda: _step(run_dir) >= 6, 120, "step 6")
        power.write_text("battery 38\n")  # unplugged mid-run
        paused = wait_for(lambda: (r := _run_row(cfg)) and r["status"] == "interrupted" and r, 60, "the pause")
        assert paused["reason"] == "paused:on_battery" and paused["attempts"] == 0  # a pause uses no attempt
        at = _step(run_dir)
        assert 6 <= at < 400 and any(p.name.startswith("step-") for p in (run_dir / "checkpoints").iterdir())
        wait_for(lambda: _run_row(cfg)["deferred"] == '["on_battery"]', 30, "deferral recorded")
        time.sleep(1.0)  # still on battery: it stays paused
        assert _run_row(cfg)["status"] == "interrupted" and _step(run_dir) == at
        view = _status(cfg_path)["roles"][0]["run"]
        assert view["paused"] == "on_battery" and view["deferred"] == ["on_battery"] and view["queue_position"] == 1
        shown = iceburgd("trigger", "show", config=cfg_path).stdout
        assert "paused (on_battery), deferred (on_battery); would defer: on battery (38 %)" in shown, shown
        power.write_text("ac\n")  # plugged back in
        done = wait_for(lambda: (r := _run_row(cfg)) and r["status"] in TRAINED and r, 180, "the resumed run")
    finally:
        _stop(daemon)
    assert done["attempts"] == 1 and done["deferred"] is None
    resumed = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in resumed if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 5  # from the pause's checkpoint, not from step 0
    assert [e["reasons"] for e in _events(cfg, "run_deferred")] == [["on_battery"]]
    assert [e["after"] for e in _events(cfg, "run_resumed")] == [["on_battery"]]


def test_queue_schedule_and_failures_survive_a_restart(tmp_path, tiny_base):
    power = tmp_path / "power"
    power.write_text("battery 50\n")  # the queued run waits, keeping its place
    cfg_path = _home(tmp_path, tiny_base, max_steps=5, defer=f'test_power_file = "{power}"\n',
                     trigger='schedule = ["0 3 * * 0"]\ntimezone = "Europe/Berlin"\n')
    cfg = load_config(cfg_path, env={})
    daemon = spawn_daemon(cfg_path)
    try:
        wait_until_running(cfg.db_path)
        write_jsonl(cfg.inbox_dir / "usage.jsonl", _records(30))
        wait_for(lambda: (r := _run_row(cfg)) and r["deferred"] == '["on_battery"]', 60, "a deferred run")
    finally:
        _stop(daemon)
    store = Store.open(cfg.db_path)
    with store.transaction():  # two failures from earlier runs (as the runner records them)
        store.save_role_trigger("surveyor", failures=2, last_failure_wall=time.time() - 60)
    before = dict(store.role_trigger("surveyor"))
    queued = dict(store.runs("surveyor")[0])
    store.close()
    assert before["next_fire"] > time.time() and queued["status"] == "queued"
    daemon = spawn_daemon(cfg_path)
    try:
        wait_until_running(cfg.db_path)
        time.sleep(1.0)  # several ticks
        after = _run_row(cfg)
        store = Store.open_readonly(cfg.db_path)
        row = dict(store.role_trigger("surveyor"))
        store.close()
    finally:
        _stop(daemon)
    assert (after["id"], after["status"], after["deferred"]) == (queued["id"], "queued", '["on_battery"]')
    assert (row["next_fire"], row["failures"], row["schedule_key"]) == (
        before["next_fire"], 2, "Europe/Berlin|0 3 * * 0")
    assert len(_events(cfg, "run_deferred")) == 1  # the same hold is not announced again after the restart
    view = _status(cfg_path)["roles"][0]
    assert view["failures"] == 2 and view["run"]["queue_position"] == 1 and view["backoff_left_s"] > 0


def test_manual_runs_wait_for_the_cooldown_unless_now_and_reset_clears_attention(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base, max_steps=3, cooldown=600)
    cfg = load_config(cfg_path, env={})
    facts = write_jsonl(tmp_path / "facts.jsonl", _records(10))
    assert iceburgd("ingest", str(facts), config=cfg_path).returncode == 0
    store = Store.open(cfg.db_path)
    with store.transaction():  # a run ended a minute ago; the role failed three times
        store.save_role_trigger("surveyor", last_run_wall=time.time() - 60, failures=3, needs_attention=1)
    store.close()
    done = iceburgd("train", "--role", "surveyor", "--json", config=cfg_path)
    assert "the run waits for the cooldown (10.0 h left" in done.stderr, done.stderr
    queued = json.loads(done.stdout)
    metrics = Metrics()
    daemon = Daemon(cfg, metrics=metrics)
    daemon.open()
    try:
        daemon.tick()
        row = _run_row(cfg, queued["id"])
        assert row["status"] == "queued" and json.loads(row["deferred"]) == ["cooldown"]
        text = generate_latest(metrics.registry).decode()
        assert 'iceburg_runs_deferred{reason="cooldown"} 1.0' in text and "iceburg_runs_queued 1.0" in text
        assert 'iceburg_role_needs_attention{role="surveyor"} 1.0' in text
        again = json.loads(iceburgd("train", "--role", "surveyor", "--now", "--json", config=cfg_path).stdout)
        assert again["id"] == queued["id"] and again["created"] is False and again["urgent"] is True
        (coalesced,) = _events(cfg, "trigger_coalesced")
        assert coalesced["trigger"] == "manual" and coalesced["run"] == queued["id"]
        daemon.tick()
        assert _run_row(cfg, queued["id"])["status"] == "running"
        wait_for(lambda: (daemon.tick(), _run_row(cfg, queued["id"])["status"] in TRAINED)[1], 120, "success")
    finally:
        daemon.close()
    store = Store.open_readonly(cfg.db_path)
    row = store.role_trigger("surveyor")
    store.close()
    assert (row["failures"], row["needs_attention"]) == (0, 0)  # a manual run that succeeds clears it
    reset = iceburgd("trigger", "reset", "surveyor", "--json", config=cfg_path)
    assert json.loads(reset.stdout) == {"role": "surveyor", "reset": True,
                                        "before": {"failures": 0, "needs_attention": False}}


def test_the_gate_defers_while_any_condition_holds_and_resumes_when_it_clears(tmp_path):
    cfg_path = write_config(tmp_path / "home", "[defer]\nmin_free_disk_gb = 5.0\nmax_load = 4.0\n")
    cfg = load_config(cfg_path, env={})
    from iceburg_daemon.trigger.step import TriggerStage

    class FakeProbes:
        cond = Conditions()

        def read(self, **_):
            return self.cond

    probes = FakeProbes()
    store = Store.open(cfg.db_path)
    with store.transaction():
        store.add_run({"id": "surveyor-1", "role": "surveyor", "status": "queued", "run_dir": str(tmp_path),
                       "snapshot_id": "s", "train_count": 1, "eval_count": 0, "created_at": 1.0})
        store.add_run({"id": "oracle-1", "role": "oracle", "status": "queued", "run_dir": str(tmp_path),
                       "snapshot_id": "s", "train_count": 1, "eval_count": 0, "created_at": 2.0})
    cfg = load_config(cfg_path, env={"ICEBURGD_DAEMON_HEARTBEAT_SECONDS": "0.000001"})
    stage = TriggerStage(cfg, store, probes=probes)
    picks = []
    for cond in (Conditions(free_disk_gb=1.0), Conditions(free_disk_gb=1.0, load=9.0), Conditions(load=9.0),
                 Conditions(power=Power(False, 80.0), load=1.0)):
        probes.cond = cond
        time.sleep(0.001)
        row = stage.gate(store.runs_in(["queued"]))
        picks.append(row["id"] if row else None)
    assert picks == [None, None, None, "surveyor-1"]  # the oldest first, once nothing holds
    deferred = [(e["subject"], e["reasons"]) for e in _events(cfg, "run_deferred")]
    assert deferred == [("surveyor-1", ["low_disk"]), ("oracle-1", ["low_disk"]),
                        ("surveyor-1", ["low_disk", "busy_load"]), ("oracle-1", ["low_disk", "busy_load"]),
                        ("surveyor-1", ["busy_load"]), ("oracle-1", ["busy_load"])]
    assert [(e["subject"], e["after"]) for e in _events(cfg, "run_resumed")] == [("surveyor-1", ["busy_load"])]
    store.close()


def test_a_failing_role_backs_off_and_the_metrics_say_so(tmp_path):
    cfg_path = write_config(tmp_path / "home", "[quality]\ntemplate = false\nnear_dedup = false\n"
                            "[training]\neval_percent = 25.0\n[surveyor.train]\nbase_model = \"/nonexistent/base\"\n"
                            "[surveyor.trigger]\nmin_new_records = 5\nmin_interval_minutes = 0\n"
                            "retry_base_minutes = 30\nmax_consecutive_failures = 2\n")
    cfg = load_config(cfg_path, env={})
    facts = write_jsonl(tmp_path / "facts.jsonl", _records(10))
    assert iceburgd("ingest", str(facts), config=cfg_path).returncode == 0
    metrics = Metrics()
    daemon = Daemon(cfg, metrics=metrics)
    daemon.open()
    try:
        daemon.tick()  # fires, queues and starts the run; its base does not exist
        run = _run_row(cfg)
        assert run["trigger"] == "threshold" and run["status"] == "running"
        wait_for(lambda: (daemon.tick(), _run_row(cfg)["status"] == "failed")[1], 120, "the run to fail")
        for _ in range(3):
            daemon.tick()
        text = generate_latest(metrics.registry).decode()
    finally:
        daemon.close()
    assert _run_row(cfg)["id"] == run["id"]  # no second run: backing off
    assert 'iceburg_trigger_fires_total{kind="threshold",role="surveyor"} 1.0' in text
    assert f'iceburg_role_new_records{{role="surveyor"}} {float(_trainable(_records(10)))}' in text
    assert 'iceburg_role_needs_attention{role="surveyor"} 0.0' in text
    view = _status(cfg_path)["roles"][0]
    assert view["failures"] == 1 and 29 * 60 < view["backoff_left_s"] <= 30 * 60
    assert view["decision"]["reason"] == "backoff"
    shown = iceburgd("trigger", "show", "surveyor", "--json", config=cfg_path)
    assert json.loads(shown.stdout)["roles"][0]["decision"]["action"] == "wait"
