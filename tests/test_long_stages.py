"""Issue 14, defect 5: nothing slow runs inside the filter's write transaction, and long stages keep the
heartbeat fresh.

Before the fix an embedding call (Ollama, up to a 60 s timeout) and a whole index rebuild ran inside the
filter's BEGIN IMMEDIATE, so `iceburgd train` / `cancel` failed with "database is locked" meanwhile; and the
heartbeat was written only between stages, so a big file or a slow Chroma read made a busy daemon look stale."""

from __future__ import annotations

import sqlite3
import threading
import time

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.embed import HashEmbedder
from iceburg_daemon.store import Store
from iceburg_daemon.testing import FACTS, chat_lines, fact_record, write_config, write_jsonl


class _SlowEmbedder(HashEmbedder):
    """A hash embedder that takes `delay` seconds per call (Ollama answering slowly), announcing each call."""

    def __init__(self, dim: int, delay: float):
        super().__init__(dim)
        self.delay, self.calling = delay, threading.Event()

    def embed(self, texts):
        self.calling.set()
        time.sleep(self.delay)
        return super().embed(texts)


def _chain(tmp_path, records, delay):
    cfg = load_config(write_config(tmp_path / "home", "[embedding]\nprovider = 'hash'\n[quality]\ntemplate = false\n"),
                      env={})
    store = Store.open(cfg.db_path)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "r.jsonl", records)])
    chain = FilterChain(cfg, store, clock=time.time)
    assert chain.semantic is not None
    chain.semantic.embedder = slow = _SlowEmbedder(chain.semantic.embedder.dim, delay)
    chain.hash_dim = chain.workers.hash_dim = 0  # it stands for Ollama: vectors come from the embedder, not the features
    return cfg, store, chain, slow


def _write_with_short_timeout(db_path, seconds: float) -> float:
    """What `iceburgd train` or `cancel` does: a write transaction, here with a short busy timeout."""
    conn = sqlite3.connect(db_path, timeout=seconds, isolation_level=None)
    started = time.monotonic()
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events(ts, kind, subject, data) VALUES (0, 'probe', 'test', '{}')")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.monotonic() - started


def test_another_writer_is_not_locked_out_while_the_filter_embeds(tmp_path):
    cfg, store, chain, slow = _chain(tmp_path, [fact_record(p, c) for p, c in FACTS[:6]], delay=3.0)
    worker = threading.Thread(target=chain.run)
    worker.start()
    try:
        assert slow.calling.wait(10)
        waited = _write_with_short_timeout(cfg.db_path, 0.5)  # raised "database is locked" before the fix
        assert waited < 0.5
        assert worker.is_alive()  # the write went through while the embedder was still working
    finally:
        worker.join()
    rows = store.conn.execute("SELECT verdict FROM verdicts WHERE current = 1").fetchall()
    store.close()
    assert [r[0] for r in rows] == ["accept"] * 6


def test_a_refilter_during_embedding_drops_the_stale_batch_and_judges_it_again(tmp_path):
    cfg, store, chain, slow = _chain(tmp_path, [fact_record(p, c) for p, c in FACTS[:4]], delay=1.5)
    worker = threading.Thread(target=chain.run)
    worker.start()
    assert slow.calling.wait(10)
    other = Store.open(cfg.db_path)  # `iceburgd data refilter` from another process
    with other.transaction():
        new = other.start_new_generation()
    other.close()
    worker.join()
    rows = store.conn.execute("SELECT generation, COUNT(*) FROM verdicts GROUP BY generation").fetchall()
    current = store.conn.execute("SELECT COUNT(*) FROM verdicts WHERE current = 1 AND generation = ?",
                                 (new,)).fetchone()[0]
    store.close()
    assert [tuple(r) for r in rows] == [(new, 4)] and current == 4  # nothing written under the old generation


class _Clock:
    """Time that moves one second per reading: a stage that reads the clock n times took n seconds."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _beats(tmp_path, extra: str, **kwargs) -> tuple[Daemon, list[float]]:
    cfg = load_config(write_config(tmp_path / "home", "[daemon]\nheartbeat_seconds = 5.0\n" + extra), env={})
    daemon = Daemon(cfg, metrics=Metrics(), clock=_Clock(), **kwargs)
    daemon.open()
    beats: list[float] = []
    real = daemon.heartbeat
    daemon.heartbeat = lambda: (beats.append(daemon.clock.now), real())[1]
    return daemon, beats


def test_a_big_file_and_a_filter_backlog_beat_the_heartbeat_while_they_work(tmp_path):
    daemon, beats = _beats(tmp_path, "[inbox]\nbatch_size = 10\n[quality]\nbatch_size = 10\n")
    write_jsonl(daemon.cfg.inbox_dir / "big.jsonl", chat_lines(300, answer_bytes=200))
    daemon.ingest_inbox()  # 30 batches, each reading the clock: about a minute of "time"
    assert len(beats) >= 5 and all(b - a >= 5.0 for a, b in zip(beats, beats[1:]))
    beats.clear()
    daemon.filter_records()
    assert len(beats) >= 3
    daemon.close()


def test_a_slow_chroma_read_beats_the_heartbeat_while_it_waits(tmp_path, fixtures):
    import sys

    store = fixtures / "data" / "chroma"
    daemon, beats = _beats(tmp_path, f"[[sources.chroma]]\nname = 'slow'\npath = '{store}'\n",
                           source_command=[sys.executable, "-c", "import time; time.sleep(1.5)"])
    daemon.sync_sources()  # the reader child sleeps, then fails (no output): the wait polled the clock
    assert len(beats) >= 3
    daemon.close()


def test_input_work_pauses_to_its_share_while_a_child_trains(tmp_path, monkeypatch):
    """[training] input_share_while_training = 0.25: between batches the daemon pauses three times as long as it
    worked, so a flood into the inbox leaves the training child most of the machine; without a child, no pause."""
    cfg = load_config(write_config(tmp_path / "home", "[inbox]\nsettle_seconds = 0.0\nbatch_size = 20\n"
                                                      "[quality]\nmode = 'paused'\n"),
                      env={})
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    pauses: list[float] = []
    monkeypatch.setattr(daemon.stopping, "wait", lambda seconds: pauses.append(seconds) or False)
    try:
        write_jsonl(cfg.inbox_dir / "a.jsonl", chat_lines(400, answer_bytes=200, seed=1))
        daemon.tick()
        assert pauses == []  # nothing training: full speed
        monkeypatch.setattr(Daemon, "training_busy", property(lambda self: True))
        write_jsonl(cfg.inbox_dir / "b.jsonl", chat_lines(400, answer_bytes=200, seed=2))
        started = time.monotonic()
        daemon.ingest_inbox()
        worked = time.monotonic() - started  # the pauses were recorded, not slept
    finally:
        daemon.close()
    assert len(pauses) >= 15  # one per batch after the first
    assert 2.0 * worked < sum(pauses) <= 3.0 * worked + 0.01
