"""Features computed in a worker process while the previous batch is judged: same verdicts as computing them
in place, a dead worker costs nothing but time, and no worker outlives the backlog."""

import json
import os
import signal
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.features import RECORD_KEYS_JUDGED, extract, extract_packed, unpack
from iceburg_daemon.quality.workers import FeatureWorkers
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_record, mixed_corpus, write_config, write_jsonl


def _rows(cfg, tmp_path, n):
    """Stored rows as the chain hands them over: (id, role, canonical JSON)."""
    store = Store.open(cfg.db_path)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "r.jsonl", [chat_record(i, answer_bytes=700, seed=9)
                                                                 for i in range(n)])])
    rows = [(r["id"], r["role"], r["canonical"]) for r in store.pending_records(n)]
    store.close()
    assert len(rows) == n
    return rows


def _plain(feats):
    """Features as comparable values (numpy arrays as lists)."""
    return [(f.record_id, f.structure, f.exact, f.near and (f.near[0].tolist(), f.near[1].tolist()),
             f.template and (f.template[0].tolist(), f.template[1].tolist()), f.repetition,
             None if f.vector is None else f.vector.tolist(), f.answer, f.prompt,
             {k: f.record[k] for k in RECORD_KEYS_JUDGED if k in f.record}) for f in feats]


def test_features_come_back_from_a_worker_as_one_matrix_per_kind_and_unpack_to_the_same(cfg, tmp_path):
    import json
    import pickle

    q, rows = cfg.quality, _rows(cfg, tmp_path, 12)
    broken = json.loads(rows[3][2])
    broken["messages"][-1]["content"] = ""  # fails the structure filter: no arrays computed for it
    rows[3] = (rows[3][0], rows[3][1], json.dumps(broken))
    feats, arrays = extract_packed(rows, q, 384)
    assert all(f.near is None and f.template is None and f.vector is None for f in feats)
    assert {tuple(f.record) for f in feats} == {("role", "signals")}  # of the record, what the main process reads
    assert {name: (have, [m.shape for m in matrices]) for name, (have, *matrices) in arrays.items()} == {
        "near": ([0, 1, 2, *range(4, 12)], [(11, 16), (11, 64)]),
        "template": ([0, 1, 2, *range(4, 12)], [(11, 16), (11, 32)]),
        "vector": ([0, 1, 2, *range(4, 12)], [(11, 384)])}
    unpacked = unpack(pickle.loads(pickle.dumps((feats, arrays))))
    assert unpacked[3].structure is not None
    assert _plain(unpacked) == _plain(extract(rows, q, 384))


def test_a_worker_computes_the_hash_vectors_the_main_process_computes(cfg, tmp_path):
    q, rows = cfg.quality, _rows(cfg, tmp_path, 20)
    workers = FeatureWorkers(1, 384)
    try:
        assert _plain(workers.submit(rows, q)()) == _plain(extract(rows, q, 384))
    finally:
        workers.close()


def test_a_worker_computes_what_the_main_process_computes(cfg, tmp_path):
    q, rows = cfg.quality, _rows(cfg, tmp_path, 30)
    workers = FeatureWorkers(2)
    try:
        assert _plain(workers.submit(rows, q)()) == _plain(extract(rows, q))
    finally:
        workers.close()


def test_a_batch_split_between_workers_and_the_main_process_keeps_its_order(cfg, tmp_path):
    q, rows = cfg.quality, _rows(cfg, tmp_path, 30)
    workers = FeatureWorkers(2)
    workers.share = 0.4  # 12 rows to the two workers, 18 computed here
    try:
        assert _plain(workers.submit(rows, q)()) == _plain(extract(rows, q))
    finally:
        workers.close()


def test_waiting_for_the_workers_moves_rows_to_the_main_process_and_idling_moves_them_back():
    workers = FeatureWorkers(1)
    workers._row_seconds = 400e-6  # noqa: SLF001 - as measured: 400 us to extract a row here
    workers._steer(0.04, 500)  # noqa: SLF001 - waited 40 ms: 0.04 / (2 * 400e-6 * 500) = 10 % fewer rows sent
    assert abs(workers.share - 0.9) < 1e-9
    workers._steer(10.0, 500)  # noqa: SLF001 - a huge wait moves at most a fifth per batch
    assert abs(workers.share - 0.7) < 1e-9
    for _ in range(30):
        workers._steer(0.0, 500)  # noqa: SLF001 - no wait: the workers may idle, hand rows back
    assert workers.share == 1.0


def test_a_killed_worker_falls_back_to_the_main_process(cfg, tmp_path):
    q, rows = cfg.quality, _rows(cfg, tmp_path, 400)
    workers = FeatureWorkers(1)
    workers.submit(rows[:5], q)()  # the worker is up
    pids = list(workers._pool._processes)  # noqa: SLF001 - the test needs the worker's pid
    result = workers.submit(rows, q)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert _plain(result()) == _plain(extract(rows, q))
    assert workers._pool is None  # noqa: SLF001 - dropped; the next backlog starts a new one
    assert _plain(workers.submit(rows[:3], q)()) == _plain(extract(rows[:3], q))
    workers.close()


def _judge_all(tmp_path, workers, limit=None):
    cfg = load_config(write_config(tmp_path / f"home{workers}", f"[quality]\nbatch_size = 40\nworkers = {workers}\n"),
                      env={})
    store = Store.open(cfg.db_path)
    # and what the main process reads of a record itself: a known quality score, a redacted secret
    extra = [chat_record(500, seed=21), chat_record(501, seed=21)]
    extra[0]["metadata"]["quality_score"] = 0.1
    extra[1]["messages"][-1]["content"] += " Write to jane.doe@example.org for the data."
    ingest_paths(cfg, store, [write_jsonl(tmp_path / f"c{workers}.jsonl", mixed_corpus(21) + extra)])
    chain = FilterChain(cfg, store, clock=lambda: 0.0)
    passes = 0
    while sum(chain.run(limit=limit).values()):  # as the daemon calls it: a limited number per pass
        passes += 1
    rows = store.conn.execute("SELECT record_id, verdict, filter, reason, detail, score, duplicate_of, cluster_id,"
                              " scores FROM verdicts WHERE current = 1 ORDER BY record_id").fetchall()
    left = chain.workers._pool  # noqa: SLF001 - the pool must be gone once nothing is pending
    chain.close()
    store.close()
    return [tuple(r) for r in rows], passes, left


def test_verdicts_are_the_same_with_a_worker_and_passes_of_any_size(tmp_path):
    inline, _, _ = _judge_all(tmp_path / "a", 0)
    ahead, passes, left = _judge_all(tmp_path / "b", 1, limit=100)  # 100: two and a half batches per pass
    assert ahead == inline and len(inline) == 222
    assert {r[3] for r in inline} >= {"low_quality_score"} and sum(json.loads(r[8]).get("redactions", 0) != 0
                                                                    for r in inline) == 1
    assert passes == 3 and left is None


def test_an_idle_daemon_keeps_no_worker_processes(tmp_path):
    cfg = load_config(write_config(tmp_path / "home", "[quality]\nbatch_size = 20\nworkers = 1\n"), env={})
    store = Store.open(cfg.db_path)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "r.jsonl", [chat_record(i, seed=2) for i in range(100)])])
    chain = FilterChain(cfg, store, clock=time.time)
    chain.run(limit=60)
    pool = chain.workers._pool  # noqa: SLF001
    assert pool is not None  # mid-backlog: the worker computes the next batch
    pids = list(pool._processes)  # noqa: SLF001
    chain.run()
    assert chain.workers._pool is None  # noqa: SLF001
    deadline = time.monotonic() + 10
    while not all(_exited(pid) for pid in pids):  # by pid: the pool's own thread reaps them, not this test
        assert time.monotonic() < deadline, f"worker processes {pids} still running 10 s after the backlog"
        time.sleep(0.05)
    store.close()


def _exited(pid: int) -> bool:
    """The process is gone or a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(") ", 1)[-1].startswith("Z")
