"""Log files followed in place ([[sources.logs]]): real files, a real store, the follower driven pass by pass.

Every test checks the one promise: each complete line is stored exactly once (no line read twice: the files'
duplicate counters stay 0), and a line that can no longer be read is reported, never silently dropped."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.follow import Follower
from iceburg_daemon.status import collect
from iceburg_daemon.store import Store
from iceburg_daemon.testing import fact_record, spawn_daemon, store_count, wait_for, write_config


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # compared with real file mtimes

    def __call__(self) -> float:
        return self.now


def line(i: int) -> str:
    return json.dumps(fact_record(f"site{i}", "red")) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def stored_sites(store: Store) -> Counter[int]:
    rows = store.conn.execute("SELECT canonical FROM records WHERE source = 'log:telemetry'").fetchall()
    return Counter(int(m) for r in rows for m in re.findall(r"marks the site(\d+) archive", r[0]))


def read_twice(store: Store) -> int:
    return store.conn.execute("SELECT COALESCE(SUM(duplicates), 0) FROM files WHERE source = 'telemetry'").fetchone()[0]


def events(store: Store, kind: str) -> list[dict]:
    return [json.loads(r["data"]) for r in store.conn.execute("SELECT data FROM events WHERE kind = ?", (kind,))]


@pytest.fixture
def world(tmp_path):
    logs = tmp_path / "iceburg" / "data" / "telemetry"
    logs.mkdir(parents=True)
    cfg_path = write_config(tmp_path / "home", f'[sources]\nrotated_grace_seconds = 60.0\n'
                                               f'[[sources.logs]]\nname = "telemetry"\npath = "{logs}/*.jsonl"\n')
    cfg = load_config(cfg_path, env={})
    store = Store.open(cfg.db_path)
    clock = Clock()
    followers: list[Follower] = []

    def follower() -> Follower:
        """A fresh follower: what a restarted daemon has (no descriptors, only the store)."""
        for old in followers:
            old.close()
        followers.append(Follower(cfg, store, clock=clock))
        return followers[-1]

    yield cfg, store, clock, follower, logs
    for f in followers:
        f.close()
    store.close()


def test_only_complete_lines_are_read_and_the_file_is_never_touched(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, line(0) + line(1) + line(2) + line(3)[:20])
    before = (app.read_bytes(), app.stat().st_mtime_ns)
    f = follower()
    f.pass_()
    assert stored_sites(store) == Counter({0: 1, 1: 1, 2: 1})
    assert (app.read_bytes(), app.stat().st_mtime_ns) == before  # read where it lies, never changed
    f.pass_()  # nothing new: the half line still waits for its end
    assert sum(stored_sites(store).values()) == 3
    append(app, line(3)[20:] + line(4))
    f.pass_()
    assert stored_sites(store) == Counter({i: 1 for i in range(5)})
    assert read_twice(store) == 0 and store.quarantine_counts() == []


def test_a_restart_resumes_at_the_committed_offset(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, "".join(line(i) for i in range(10)))
    follower().pass_()
    append(app, "".join(line(i) for i in range(10, 15)))
    follower().pass_()  # a new process: found again by device, inode and its first bytes
    assert stored_sites(store) == Counter({i: 1 for i in range(15)})
    assert read_twice(store) == 0


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
def test_rotation_by_rename_mid_line_loses_and_repeats_nothing(world, restart):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    writer = open(app, "a", encoding="utf-8")
    writer.write(line(0) + line(1) + line(2)[:30])
    writer.flush()
    f = follower()
    f.pass_()
    os.rename(app, logs / "app.jsonl.1")  # the rotated name is outside the glob
    writer.write(line(2)[30:] + line(3))  # the writer finishes its line in the old file before it reopens
    writer.close()
    append(app, line(4) + line(5))
    if restart:
        f = follower()
    f.pass_()
    assert stored_sites(store) == Counter({i: 1 for i in range(6)})
    rows = store.conn.execute("SELECT path, state FROM files WHERE source = 'telemetry' ORDER BY id").fetchall()
    assert [(Path(r["path"]).name, r["state"]) for r in rows] == [("app.jsonl.1", "ingesting"),
                                                                  ("app.jsonl", "ingesting")]
    clock.now += 61  # idle longer than rotated_grace_seconds: the old file is finished
    os.utime(logs / "app.jsonl.1", (clock.now - 61, clock.now - 61))
    f.pass_()
    states = sorted((r["path"].rsplit("/", 1)[1], r["state"], r["reason"])
                    for r in store.conn.execute("SELECT * FROM files WHERE source = 'telemetry'"))
    assert states == [("app.jsonl", "ingesting", None), ("app.jsonl.1", "done", "rotated")]
    assert f.fds and len(f.fds) == 1  # the finished file's descriptor is closed
    assert read_twice(store) == 0 and store.quarantine_counts() == []


def test_an_unfinished_last_line_of_a_finished_file_is_quarantined_not_dropped(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, line(0) + '{"messages": [{"role": "user", "content": "cut off')
    f = follower()
    f.pass_()
    os.rename(app, logs / "app.old")
    clock.now += 3600
    os.utime(logs / "app.old", (clock.now - 3600, clock.now - 3600))
    ended = f.pass_()
    assert [(e.ended, dict(e.counts.quarantined)) for e in ended] == [("rotated", {"invalid_json": 1})]
    assert stored_sites(store) == Counter({0: 1})


def test_a_file_deleted_while_followed_is_still_read_to_its_end(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, line(0))
    f = follower()
    f.pass_()
    append(app, line(1) + line(2))
    app.unlink()  # ICEBURG (or a cleanup job) removed it before the next pass: the open descriptor still reads
    ended = f.pass_()
    assert stored_sites(store) == Counter({0: 1, 1: 1, 2: 1})
    assert [e.ended for e in ended] == ["deleted"] and not f.fds
    assert events(store, "followed_file_lost") == []


def test_a_file_deleted_before_it_was_read_to_its_end_is_reported(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, "".join(line(i) for i in range(1200)))  # more than one batch (inbox batch_size 500)
    follower().pass_(should_stop=lambda: bool(stored_sites(store)))  # shut down after the first batch
    read = sum(stored_sites(store).values())
    assert read == 500
    size = app.stat().st_size
    app.unlink()
    ended = follower().pass_()  # restarted: no descriptor survived, the file is gone
    lost = events(store, "followed_file_lost")
    assert [e.ended for e in ended] == ["lost"] and len(lost) == 1
    assert lost[0]["reason"] == "deleted" and 0 < lost[0]["unread_bytes"] == ended[0].unread_bytes < size
    row = store.conn.execute("SELECT state FROM files WHERE source = 'telemetry'").fetchone()
    assert row["state"] == "lost"
    needs_you = collect(cfg, now=clock.now)["needs_you"]
    assert any("1 followed log file(s) were deleted or truncated before" in line for line in needs_you)


@pytest.mark.parametrize("copy_name", ["app.jsonl.1", "app-1.jsonl"], ids=["outside-glob", "inside-glob"])
def test_copytruncate_is_read_on_from_the_copy(world, copy_name):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, line(0) + line(1))
    f = follower()
    f.pass_()
    append(app, line(2) + line(3))  # written after the last pass: only the copy will hold them
    shutil.copy2(app, logs / copy_name)  # logrotate's copytruncate: copy, then empty the original
    f.pass_()  # a pass between the copy and the truncation: the copy waits, it is not a new file
    with open(app, "r+b") as fh:
        fh.truncate(0)
    append(app, line(4))
    f.pass_()
    assert stored_sites(store) == Counter({i: 1 for i in range(5)})
    assert read_twice(store) == 0 and events(store, "followed_file_lost") == []
    paths = [Path(r["path"]).name for r in store.conn.execute("SELECT path FROM files ORDER BY id")]
    assert paths == [copy_name, "app.jsonl"]


@pytest.mark.parametrize("new_size", ["shorter", "longer"])
def test_truncated_or_replaced_content_is_read_from_its_start(world, new_size):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, line(0) + line(1) + line(2))
    f = follower()
    f.pass_()
    with open(app, "r+b") as fh:  # same inode, new content: shorter than the offset, or longer (first bytes differ)
        fh.truncate(0)
    append(app, line(10) if new_size == "shorter" else "".join(line(i) for i in range(10, 16)))
    f.pass_()
    expected = {0, 1, 2, 10} if new_size == "shorter" else {0, 1, 2, *range(10, 16)}
    assert stored_sites(store) == Counter({i: 1 for i in expected})
    reasons = [r["reason"] for r in store.conn.execute("SELECT reason FROM files WHERE source = 'telemetry' ORDER BY id")]
    assert reasons == ["truncated", None]
    assert events(store, "followed_file_lost") == []  # everything seen had been read


def test_truncated_before_the_rest_was_read_is_reported(world):
    cfg, store, clock, follower, logs = world
    app = logs / "app.jsonl"
    append(app, "".join(line(i) for i in range(700)))
    f = follower()
    f.pass_(should_stop=lambda: bool(stored_sites(store)))
    with open(app, "r+b") as fh:
        fh.truncate(0)
    append(app, line(5000))
    f.pass_()
    lost = events(store, "followed_file_lost")
    assert len(lost) == 1 and lost[0]["reason"] == "truncated" and lost[0]["unread_bytes"] > 0
    assert stored_sites(store)[5000] == 1


def test_compressed_matches_are_skipped_and_a_missing_folder_is_an_unhealthy_source(tmp_path):
    logs = tmp_path / "not-yet"
    cfg = load_config(write_config(tmp_path / "home", f'[[sources.logs]]\nname = "telemetry"\npath = "{logs}/*"\n'),
                      env={})
    store = Store.open(cfg.db_path)
    f = Follower(cfg, store, clock=Clock())
    try:
        f.pass_()
        row = store.source("log:telemetry")
        assert row["health"] == "unhealthy" and "No such file" in row["reason"]
        logs.mkdir()
        append(logs / "app.jsonl", line(0))
        (logs / "app.jsonl.1.gz").write_bytes(b"\x1f\x8b compressed")
        f.pass_()
        row = store.source("log:telemetry")
        assert (row["health"], row["items"]) == ("healthy", 1)
        listed = collect(cfg, now=time.time())["sources"]
        assert [(s["name"], s["kind"], s["health"], s["items"]) for s in listed] == [("log:telemetry", "log",
                                                                                    "healthy", 1)]
        assert stored_sites(store) == Counter({0: 1}) and store.quarantine_counts() == []
    finally:
        f.close()
        store.close()


def test_log_sources_are_validated(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    text = (f'[paths]\ndata_dir = "{tmp_path}/data"\n'
            f'[[sources.logs]]\nname = "a"\npath = "{folder}"\n'
            f'[[sources.logs]]\nname = "b"\npath = "{tmp_path}/data/inbox/*.jsonl"\n'
            f'[[sources.logs]]\nname = "b"\npath = "{folder}/*.jsonl"\n'
            f'[[sources.logs]]\nname = "c d"\npath = "{folder}/*.jsonl"\n')
    with pytest.raises(Exception) as err:
        load_config(write_config(tmp_path / "home", text), env={})
    message = str(err.value)
    assert "sources.logs.a.path" in message and "is a folder" in message
    assert "reaches into the daemon's data folder" in message
    assert "name 'b' is used more than once" in message and "name 'c d' must be" in message


def _write_with_rotations(logs: Path, n: int, seed: int) -> None:
    """ICEBURG's side: lines appended at random intervals, each in two writes; every 150 lines a rotation,
    alternately by rename (mid-line: the line is finished in the old file) and by copy-truncate."""
    rng = random.Random(seed)
    app = logs / "app.jsonl"
    fh = open(app, "a", encoding="utf-8")
    for i in range(n):
        text = line(i)
        cut = rng.randrange(1, len(text))
        fh.write(text[:cut])
        fh.flush()
        if i % 150 == 149 and i // 150 % 2 == 0:
            os.rename(app, logs / f"app-{i}.jsonl")
        time.sleep(rng.uniform(0, 0.004))
        fh.write(text[cut:])
        fh.flush()
        if i % 150 == 149 and i // 150 % 2 == 0:
            fh.close()
            fh = open(app, "a", encoding="utf-8")
        elif i % 150 == 149:
            shutil.copy2(app, logs / f"app-{i}.jsonl")
            os.truncate(app, 0)
        time.sleep(rng.uniform(0, 0.008))
    fh.close()


@pytest.mark.slow
def test_a_writer_appending_while_the_daemon_is_killed_and_restarted_gets_every_line_once(tmp_path):
    logs = tmp_path / "iceburg" / "data" / "telemetry"
    logs.mkdir(parents=True)
    cfg_path = write_config(tmp_path / "home", "[quality]\nmode = 'paused'\n[inbox]\nbatch_size = 20\n"
                                               "settle_seconds = 0.0\nrescan_seconds = 0.2\n"
                                               f'[[sources.logs]]\nname = "telemetry"\npath = "{logs}/*.jsonl"\n')
    cfg = load_config(cfg_path, env={})
    n, rng = 1200, random.Random(7)
    writer = threading.Thread(target=_write_with_rotations, args=(logs, n, 7))
    stored_at_kill = []
    while not stored_at_kill or writer.is_alive():
        daemon = spawn_daemon(cfg_path)
        # started (seconds on a slow machine) before the writer starts and before each kill
        wait_for(lambda: _heartbeat_pid(cfg.db_path) == daemon.pid, 60, "the daemon to start")
        if not writer.is_alive() and not stored_at_kill:
            writer.start()
        time.sleep(rng.uniform(0.5, 1.5))
        daemon.kill()  # SIGKILL: no shutdown, mid-batch or mid-rotation
        daemon.wait(30)
        stored_at_kill.append(_log_records(cfg.db_path))
    writer.join()
    daemon = spawn_daemon(cfg_path)
    try:
        wait_for(lambda: _heartbeat_pid(cfg.db_path) == daemon.pid, 60, "the last daemon to start")
        wait_for(lambda: _log_records(cfg.db_path) == n, 120, f"{n} lines stored")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    print(f"lines stored at each kill: {stored_at_kill}")
    store = Store.open_readonly(cfg.db_path)
    try:
        assert len([k for k in stored_at_kill if 0 < k < n]) >= 2  # killed while following, more than once
        assert stored_sites(store) == Counter({i: 1 for i in range(n)})
        assert read_twice(store) == 0 and store.quarantine_counts() == []
        assert events(store, "followed_file_lost") == []
        files = store.conn.execute("SELECT COUNT(*) FROM files WHERE source = 'telemetry'").fetchone()[0]
        assert files == 1 + n // 150  # every generation known once (the last is empty): no copy read as new
    finally:
        store.close()


def _log_records(db: Path) -> int:
    return store_count(db, "SELECT COUNT(*) FROM records WHERE source = 'log:telemetry'")


def _heartbeat_pid(db: Path) -> int | None:
    try:
        store = Store.open_readonly(db)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    try:
        row = store.heartbeat()
        return row["pid"] if row else None
    finally:
        store.close()
