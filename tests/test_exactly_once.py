"""SIGKILL a real `iceburgd run` at random points during a large ingest, many times; nothing lost, nothing twice."""

import json
import os
import random
import signal
import time

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.formats import Reject, content_hash, parse_object
from iceburg_daemon.errors import StoreError
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, iceburgd, spawn_daemon, write_config, write_jsonl

KILLS = int(os.environ.get("IBD_TEST_KILLS", "12"))


def _dataset(n_files=4, per_file=25000):
    """Lines per file: good records (some repeated across files) and bad lines at known places."""
    files = {}
    for f in range(n_files):
        lines = list(chat_lines(per_file, answer_bytes=250, seed=f))
        lines[100:300] = list(chat_lines(200, answer_bytes=250, seed=99))  # the same 200 records in every file
        for i in range(0, per_file, 150):
            lines[i] = "{bad json" if i % 300 else '{"neither": "chat nor anything"}'
        files[f"part{f}.jsonl"] = lines
    return files


def _stored(cfg) -> int:
    try:
        store = Store.open_readonly(cfg.db_path)
    except StoreError:  # not there yet, or the daemon is creating its schema this instant
        return 0
    try:
        return store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    finally:
        store.close()


def _wait_for_more(cfg, stored: int, total: int, timeout: float = 30.0) -> None:
    """Until the daemon has stored more than `stored` records (at once when all `total` are in)."""
    deadline = time.monotonic() + timeout
    while stored < total and _stored(cfg) <= stored:
        assert time.monotonic() < deadline, f"no record stored past {stored} within {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_repeats_nothing(tmp_path):
    path = write_config(tmp_path / "home", "[inbox]\nsettle_seconds = 0.0\nrescan_seconds = 0.1\nbatch_size = 200\n"
                                           "[quality]\nmode = \"paused\"\n")  # ingest only: filter kills are tested apart
    cfg = load_config(path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    files = _dataset()
    expected, bad = set(), 0
    for lines in files.values():
        for line in lines:
            parsed = parse_object(json.loads(line)) if not line.startswith("{bad") else Reject("x", "")
            if isinstance(parsed, Reject):
                bad += 1
            else:
                expected.add(content_hash(parsed))
    for name, lines in files.items():
        write_jsonl(cfg.inbox_dir / name, lines)

    rng = random.Random(int(os.environ.get("IBD_TEST_SEED", "7")))
    progress = []
    for i in range(KILLS):
        proc = spawn_daemon(path)
        if i % 2:  # once it has stored something: a kill mid-ingest, whatever its start-up and recovery cost
            _wait_for_more(cfg, progress[-1], len(expected))
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # any time after the start: also in start-up and recovery
            time.sleep(rng.uniform(0.4, 1.6))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        progress.append(_stored(cfg))
    print("records stored after each kill:", progress)
    # The kills landed mid-ingest: work advanced between kills and was still unfinished at most of them.
    assert len(set(progress)) >= KILLS // 2
    assert sum(p < len(expected) for p in progress) >= KILLS // 2

    done = iceburgd("run", "--once", config=path)
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store.open_readonly(cfg.db_path)
    hashes = list(store.content_hashes())
    assert len(hashes) == len(set(hashes)) and set(hashes) == expected
    assert store.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == bad
    rows = store.conn.execute("SELECT name, state, stored, duplicates, quarantined FROM files").fetchall()
    assert sorted(r["name"] for r in rows) == sorted(files) and {r["state"] for r in rows} == {"done"}
    for r in rows:  # each file's counters are exact despite the kills: every line counted once
        assert r["stored"] + r["duplicates"] + r["quarantined"] == len(files[r["name"]])
    assert sum(r["stored"] for r in rows) == len(expected)
    assert store.integrity_ok()
    store.close()
    assert list(cfg.processing_dir.iterdir()) == []
    assert len([p for p in cfg.archive_dir.rglob("*.jsonl")]) == len(files)
