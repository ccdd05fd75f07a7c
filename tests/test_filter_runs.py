"""The filter inside the real daemon and CLI: secrets never stored, verdicts exactly once, refilter history."""

import json
import random
import signal
import time
from pathlib import Path

from prometheus_client import generate_latest

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.errors import StoreError
from iceburg_daemon.store import Store
from iceburg_daemon.testing import (chat_lines, iceburgd, spawn_daemon, wait_until_running, write_config,
                                    write_jsonl)

KEY = "sk-proj-" + "Zq7" * 12
MAIL = "ada.lovelace@example.org"


def _secret_record():
    return {"messages": [{"role": "user", "content": f"My key is {KEY}, mail me at {MAIL}. Why does it fail?"},
                         {"role": "assistant", "content": "The request fails because the key was revoked yesterday; "
                                                          f"create a new one (never paste {KEY} into chats) and "
                                                          "retry after the rate limit window resets."}],
            "metadata": {"agent_type": "surveyor"}}


def _everything_written(cfg) -> bytes:
    return b"".join(p.read_bytes() for p in cfg.data_dir.rglob("*") if p.is_file() and "archive" not in p.parts)


def test_a_secret_is_redacted_and_appears_nowhere(tmp_path):
    path = write_config(tmp_path / "home")
    cfg = load_config(path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "s.jsonl", [_secret_record(), "{\"junk\": \"" + KEY + "\"}"])
    metrics = Metrics()
    Daemon(cfg, metrics=metrics).run(once=True)
    store = Store.open_readonly(cfg.db_path)
    (rec,) = store.records()
    verdict = store.current_verdict(rec["id"])
    assert verdict["verdict"] == "accept" and verdict["redacted"] == 1
    assert json.loads(rec["canonical"])["redactions"] == {"email": 1, "openai_key": 2}
    assert "[REDACTED:openai_key]" in rec["canonical"]
    store.close()
    export = iceburgd("data", "export", "--role", "surveyor", config=path)
    assert "[REDACTED:openai_key]" in export.stdout
    texts = [export.stdout, generate_latest(metrics.registry).decode(), iceburgd("status", "--json", config=path).stdout]
    blob = _everything_written(cfg)  # store (incl. WAL), quarantine rejects, logs
    for secret in (KEY, MAIL):
        assert secret.encode() not in blob
        assert all(secret not in t for t in texts)


def test_reject_mode_rejects_redacted_records(tmp_path):
    path = write_config(tmp_path / "home", "[quality]\nsecrets = 'reject'\n")
    cfg = load_config(path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "s.jsonl", [_secret_record()])
    Daemon(cfg).run(once=True)
    store = Store.open_readonly(cfg.db_path)
    (rec,) = store.records()
    v = store.current_verdict(rec["id"])
    assert (v["verdict"], v["filter"], v["reason"]) == ("reject", "secrets", "secret")
    assert KEY not in rec["canonical"]
    store.close()


def test_killing_mid_filter_leaves_exactly_one_current_verdict(tmp_path):
    path = write_config(tmp_path / "home", "[quality]\nbatch_size = 100\n")
    cfg = load_config(path, env={})
    n = 15000  # several seconds of filtering on 2 cores, so the kills land mid-backlog
    ingest = iceburgd("ingest", str(write_jsonl(tmp_path / "x.jsonl", chat_lines(n, answer_bytes=600))), config=path,
                      env={"ICEBURGD_QUALITY_MODE": "paused"})
    assert ingest.returncode == 0, ingest.stderr
    rng = random.Random(5)
    progress, helpers = [], []
    for _ in range(6):
        before = _verdicts(cfg)
        proc = spawn_daemon(path)
        deadline = time.monotonic() + 60  # judging has begun (start-up takes seconds on a slow machine) ...
        while _verdicts(cfg) == before < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8))  # ... then the kill lands anywhere in a batch
        helpers += _children(proc.pid)  # the feature worker (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        progress.append(_verdicts(cfg))
    assert any(0 < p < n for p in progress) and len(set(progress)) > 2  # kills landed while the filter worked
    assert helpers  # the worker was running when the daemon died ...
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists()]  # ... and did not outlive it
    assert iceburgd("run", "--once", config=path).returncode == 0
    store = Store.open_readonly(cfg.db_path)
    per_record = store.conn.execute(
        "SELECT r.id, (SELECT COUNT(*) FROM verdicts v WHERE v.record_id = r.id AND v.current = 1) AS c"
        " FROM records r WHERE r.kind = 'sft'").fetchall()
    assert len(per_record) == n and {row["c"] for row in per_record} == {1}
    assert store.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == n  # no verdict written twice
    assert store.integrity_ok()
    store.close()


def _verdicts(cfg) -> int:
    try:
        store = Store.open_readonly(cfg.db_path)
    except StoreError:
        return 0
    try:
        return store.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    finally:
        store.close()


def _children(pid: int) -> list[int]:
    """Processes whose parent is pid (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_refilter_keeps_history_and_applies_new_config(tmp_path):
    path = write_config(tmp_path / "home")
    records = [json.loads(line) for line in chat_lines(40, answer_bytes=400)]
    for r in records:
        r["metadata"]["quality_score"] = 0.6
    assert iceburgd("ingest", str(write_jsonl(tmp_path / "r.jsonl", records)), config=path).returncode == 0
    stats = json.loads(iceburgd("data", "stats", "--json", config=path).stdout)
    assert sum(e["accepted"] for e in stats["roles"].values()) == 40
    path.write_text(path.read_text() + "\n[surveyor]\nmin_quality_score = 0.7\n")
    res = iceburgd("data", "refilter", "--json", config=path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"generation": 2, "judged": 40, "accepted": 30}
    explained = json.loads(iceburgd("data", "explain", "1", "--json", config=path).stdout)
    assert explained["role"] == "surveyor" and explained["verdict"]["reason"] == "low_quality_score"
    assert [(h["generation"], h["verdict"], h["current"]) for h in explained["history"]] == [
        (1, "accept", 0), (2, "reject", 1)]
    text = iceburgd("data", "explain", "1", config=path).stdout
    assert "low_quality_score" in text and "history: 2 verdicts" in text
    alpaca = iceburgd("data", "export", "--role", "dissident", "--format", "alpaca", config=path)
    lines = [json.loads(line) for line in alpaca.stdout.splitlines()]
    assert len(lines) == 10 and {"instruction", "input", "output", "system", "id"} <= lines[0].keys()
    rejected = iceburgd("data", "export", "--role", "surveyor", "--rejected", config=path)
    assert len(rejected.stdout.splitlines()) == 10
    assert iceburgd("data", "explain", "999", config=path).returncode == 1


def test_status_shows_verdicts(tmp_path):
    path = write_config(tmp_path / "home")
    assert iceburgd("ingest", str(write_jsonl(tmp_path / "r.jsonl", chat_lines(8))), config=path).returncode == 0
    snap = json.loads(iceburgd("status", "--json", config=path).stdout)
    assert snap["verdicts"]["unfiltered"] == 0
    assert sum(v["accepted"] + v["rejected"] for v in snap["verdicts"]["roles"].values()) == 8


def test_stats_need_no_daemon_and_refilter_needs_the_lock(tmp_path):
    path = write_config(tmp_path / "home")
    cfg = load_config(path, env={})
    assert iceburgd("ingest", str(write_jsonl(tmp_path / "r.jsonl", chat_lines(4))), config=path).returncode == 0
    proc = spawn_daemon(path)
    try:
        wait_until_running(cfg.db_path)
        assert iceburgd("data", "stats", config=path).returncode == 0
        assert iceburgd("data", "refilter", config=path).returncode == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_long_backlog_is_judged_over_several_passes(tmp_path):
    path = write_config(tmp_path / "home", "[quality]\nbatch_size = 10\n")
    cfg = load_config(path, env={})
    ingest = iceburgd("ingest", str(write_jsonl(tmp_path / "x.jsonl", chat_lines(100, answer_bytes=400))),
                      config=path, env={"ICEBURGD_QUALITY_MODE": "paused"})
    assert ingest.returncode == 0
    daemon = Daemon(cfg)
    daemon.open()
    try:
        daemon.tick()
        assert daemon.store.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 40
        assert daemon.wake.is_set()  # the loop goes straight on, with a fresh heartbeat in between
        assert daemon.store.heartbeat()["state"] == "running"
        for _ in range(2):
            daemon.wake.clear()
            daemon.tick()
        assert daemon.store.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 100
        assert not daemon.wake.is_set()
    finally:
        daemon.close()


def test_quarantine_excerpts_never_hold_a_secret(tmp_path):
    path = write_config(tmp_path / "home")
    cfg = load_config(path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "bad.jsonl", [{"note": f"first line\n{KEY}", "contact": MAIL}])
    Daemon(cfg).run(once=True)
    store = Store.open_readonly(cfg.db_path)
    (row,) = store.quarantined()
    store.close()
    assert row["reason"] == "unknown_format" and "[REDACTED:openai_key]" in row["excerpt"]
    blob = _everything_written(cfg)
    assert KEY.encode() not in blob and MAIL.encode() not in blob
