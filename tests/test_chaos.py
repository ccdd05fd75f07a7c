"""Issue 14: kill -9 across the whole chain. One trial drops a large inbox and points at an ICEBURG ChromaDB,
then SIGKILLs the real daemon once inside each stage in turn (mid-ingest, during the Chroma read, mid-filter,
training, evaluating, promoted while Ollama creates the version), each after a seeded random delay, restarts it
and lets it finish. Then: every record stored once, every file accounted for, one current verdict per record,
`PRAGMA integrity_check` ok, each lifecycle step done exactly once, the champion published and the Ollama alias
on it, nothing left queued or running.

Seeds: IBD_CHAOS_SEEDS (default "1"; the soak in docs/reliability.md runs more). The ingest and filter stages
are also killed many times apiece, on larger data, in test_exactly_once.py and test_filter_runs.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from fake_ollama import FakeOllama

from iceburg_daemon.config import load_config
from iceburg_daemon.errors import StoreError
from iceburg_daemon.formats import Reject, parse_object
from iceburg_daemon.ingest import to_new_record
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chain_config, fact_record, spawn_daemon, wait_for, write_config, write_jsonl

SEEDS = [int(s) for s in os.environ.get("IBD_CHAOS_SEEDS", "1").split(",")]
BULK = 6000  # records of a role that does not train: enough for ingest and filter to take a while
COLOURS = ("amber", "cobalt", "saffron", "teal", "ochre", "indigo", "silver", "umber", "crimson", "jade")


def _query(db_path: Path, sql: str, default=None):
    try:
        store = Store.open_readonly(db_path)
    except StoreError:
        return default
    try:
        return store.conn.execute(sql).fetchall()
    finally:
        store.close()


def _reader_child_running(daemon_pid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"iceburg_daemon.chroma_source" in cmdline and int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid:
                return True
    return False


def _stage_reached(stage: str, db: Path, pid: int) -> bool:
    if stage == "ingest":
        rows = _query(db, "SELECT byte_offset, state FROM files", [])
        return any(r["state"] == "ingesting" and r["byte_offset"] > 0 for r in rows)
    if stage == "chroma":
        return _reader_child_running(pid)
    if stage == "filter":
        n = (_query(db, "SELECT COUNT(*) FROM verdicts WHERE current = 1", [[0]]) or [[0]])[0][0]
        return 0 < n
    status = {"training": "running", "evaluation": "evaluating", "promotion": "promoted"}[stage]
    return status in [r["status"] for r in _query(db, "SELECT status FROM runs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_in_every_stage_of_the_chain(tmp_path, tiny_base, fixtures, seed):
    rng = random.Random(seed)
    ollama = FakeOllama()
    ollama.faults["create_delay"] = "2"  # publishing takes long enough to be killed in
    chroma = tmp_path / "iceburg-chroma"
    shutil.copytree(fixtures / "data" / "memory" / "chroma", chroma)
    text = chain_config(tiny_base, ollama_url=ollama.url, chroma=chroma, quality="batch_size = 100\n",
                        extra="[inbox]\nbatch_size = 100\n[dissident]\nenabled = false\n")
    cfg_path = write_config(tmp_path / "home", text)
    cfg = load_config(cfg_path, env={})
    facts = [fact_record(f"site{i}", COLOURS[i % len(COLOURS)]) for i in range(80)]
    bulk = [fact_record(f"bulk{i}", COLOURS[i % len(COLOURS)], role="dissident") for i in range(BULK)]
    cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(cfg.inbox_dir / "bulk.jsonl", [json.dumps(r) for r in bulk])
    write_jsonl(cfg.inbox_dir / "facts.jsonl", [json.dumps(r) for r in facts])
    expected = set()
    for record in facts + bulk:
        parsed = parse_object(record)
        assert not isinstance(parsed, Reject)
        expected.add(to_new_record(parsed, source="inbox", source_ref="x").content_hash)

    kills = []
    try:
        for stage in ("ingest", "chroma", "filter", "training", "evaluation", "promotion"):
            daemon = spawn_daemon(cfg_path)
            try:
                wait_for(lambda: _stage_reached(stage, cfg.db_path, daemon.pid), 300, f"stage {stage}", every=0.01)
                delay = rng.uniform(0.0, 0.3 if stage in ("ingest", "chroma", "filter") else 2.0)
                time.sleep(delay)
            finally:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
            kills.append((stage, round(delay, 3)))
        daemon = spawn_daemon(cfg_path)
        try:
            wait_for(lambda: "published" in [r["status"] for r in _query(cfg.db_path, "SELECT status FROM runs", [])],
                     600, "the chain to end")
            wait_for(lambda: not list(cfg.processing_dir.iterdir()), 60, "the inbox to drain")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(120) == 0
    finally:
        ollama.close()
    print(f"seed {seed}: killed in {kills}")

    store = Store.open_readonly(cfg.db_path)
    try:
        assert store.integrity_ok()
        hashes = [r[0] for r in store.conn.execute("SELECT content_hash FROM records WHERE source = 'inbox'")]
        assert len(hashes) == len(set(hashes)) and set(hashes) == expected  # nothing lost, nothing twice
        assert store.conn.execute("SELECT COUNT(*) FROM records WHERE source LIKE 'chroma:%'").fetchone()[0] > 0
        files = {r["name"]: (r["state"], r["stored"]) for r in store.conn.execute("SELECT * FROM files")}
        assert files == {"bulk.jsonl": ("done", BULK), "facts.jsonl": ("done", 80)}
        judged = store.conn.execute(
            "SELECT r.id, (SELECT COUNT(*) FROM verdicts v WHERE v.record_id = r.id AND v.current = 1) AS n"
            " FROM records r WHERE r.kind = 'sft'").fetchall()
        assert {r["n"] for r in judged} == {1}
        runs = [dict(r) for r in store.conn.execute("SELECT id, status FROM runs")]
        assert [r["status"] for r in runs] == ["published"], runs  # resumed, never started twice
        run_id = runs[0]["id"]
        versions = [(v["version"], v["run_id"]) for v in store.versions("surveyor")]
        promotions = [(p["to_version"], p["action"]) for p in store.promotions("surveyor")]
        events = [r["kind"] for r in store.conn.execute("SELECT kind FROM events WHERE subject = ?", (run_id,))]
        champion = {c["role"]: (c["version"], c["alias_version"]) for c in store.champions()}
    finally:
        store.close()
    assert versions == [(1, run_id)] and promotions == [(1, "promote")]
    assert events.count("run_promoted") == 1 and events.count("published") == 1
    assert champion == {"surveyor": (1, 1)}
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v1") is not None
    assert [r for r in ollama.requests if r == ("POST", "/api/copy")] == [("POST", "/api/copy")]
    assert not list(cfg.inbox_dir.glob("*.jsonl")) and len(list(cfg.archive_dir.rglob("*.jsonl"))) == 2
