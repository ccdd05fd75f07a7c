"""Ingest plus the whole filter chain over N realistic records: records/s, the throughput curve per chunk (does
the cost grow with history?), the cost of each filter, index sizes, and the peak RSS of this process with its
feature workers.

The data mixes what ICEBURG really produces (tests/fixtures/iceburg shows it: template-generated corpora beside
hand-written answers, repeats, long reports): 70 % varied answers, 10 % near duplicates of an earlier answer
(a few words changed), 15 % members of three templates written differently, 5 % long answers (6-12 KB).
--unique: only varied answers (the old benchmark's data).

Usage: python benchmarks/filter_throughput.py [N] [--no-semantic] [--workers W] [--chunk C] [--unique]
(default 100,000 records, hash embedder, feature workers as configured by default, a curve point per N/10;
--no-semantic: no embedding provider, the default config, so filter 8 is off; --workers 0 computes every
feature in the main process, so the per-filter table covers them all)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality import features as features_module
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, write_config, write_jsonl

from corpus import realistic_lines, tree_rss_mb

FILTERS = {  # (object, attribute) timed -> filter it implements
    "check_structure": "1 structure",
    "words": "tokenise answer (shared)",
    "exact_key": "3 exact key (hash)",
    "near_sketches": "4 near MinHash (batch)",
    "template_sketches": "5 template MinHash (batch)",
    "check_repetition_batch": "6 repetition/junk",
    "load": "3-5 index reads (batch)",
    "check_exact": "3 exact lookup",
    "check_near": "4 near lookup",
    "check_template": "5 template lookup",
    "check": "8 semantic (hash) check",
    "add": "8 semantic index add",
    "add_verdicts": "verdict writes (batch)",
    "flush": "3-5 index writes (batch)",
}


def _timed(owner: Any, name: str, totals: dict[str, float]) -> None:
    """Wrap owner.name with a wall-clock accumulator (two perf_counter calls: far cheaper than a profiler)."""
    inner = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=100_000)
    ap.add_argument("--no-semantic", action="store_true")
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--unique", action="store_true")
    args = ap.parse_args()
    n, provider = args.n, "none" if args.no_semantic else "hash"  # none: the default config (no embeddings)
    chunk = args.chunk or max(n // 10, 1)
    settings = f"[embedding]\nprovider = '{provider}'\n[quality]\nworkers = {args.workers}\n"
    peak, sampling = [0.0], threading.Event()

    def sample() -> None:  # this process and its feature workers, every half second
        while not sampling.wait(0.5):
            peak[0] = max(peak[0], tree_rss_mb(os.getpid()))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = chat_lines(n, answer_bytes=1100) if args.unique else realistic_lines(n)
        data = write_jsonl(root / "records.jsonl", lines)
        cfg = load_config(write_config(root / "home", settings), env={})
        store = Store.open(cfg.db_path)
        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        ingest_paths(cfg, store, [data])
        t_ingest = time.perf_counter() - t0
        stored = store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        chain = FilterChain(cfg, store, clock=time.time)
        workers = chain.workers.count
        totals: dict[str, float] = {}
        for name in ("check_structure", "words", "exact_key", "near_sketches", "template_sketches",
                     "check_repetition_batch"):
            _timed(features_module, name, totals)
        for name in ("load", "check_exact", "check_near", "check_template", "flush"):
            _timed(chain.index, name, totals)
        _timed(store, "add_verdicts", totals)
        if chain.semantic is not None:
            _timed(chain.semantic, "check", totals)
            _timed(chain.semantic, "add", totals)
        curve, judged = [], Counter()
        t1 = time.perf_counter()
        while True:
            started = time.perf_counter()
            got = chain.run(limit=chunk)
            if not got:
                break
            judged.update(got)
            curve.append((sum(judged.values()), sum(got.values()) / (time.perf_counter() - started)))
        t_filter = time.perf_counter() - t1
        chain.close()
        sampling.set()
        accepted = sum(v for (_, verdict, _), v in judged.items() if verdict == "accept")
        reasons: Counter[str] = Counter()
        for (_, verdict, reason), v in judged.items():
            if verdict == "reject":
                reasons[reason] += v
        near_rows = store.conn.execute("SELECT COUNT(*) FROM lsh_sigs WHERE idx = 1").fetchone()[0]
        pages = _index_bytes(store)
        for bands in chain.index.bands.values():
            bands.compact()  # recent additions sit in a dict until MERGE_AFTER; measure the steady state
        band_bytes = sum(b.nbytes() for b in chain.index.bands.values())
        store.close()
        index_bytes = sum(p.stat().st_size for p in cfg.index_dir.rglob("*") if p.is_file()) \
            if cfg.index_dir.exists() else 0
    mix = "unique varied answers" if args.unique else "70 % varied, 10 % near duplicates, 15 % templates, 5 % long"
    print(f"records: {n} ({mix}); stored {stored} (exact repeats are duplicates at ingest), accepted {accepted},"
          f" rejected {sum(reasons.values())}: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    print(f"ingest:            {n / t_ingest:9,.0f} records/s ({t_ingest:.1f} s)")
    print(f"filter chain:      {stored / t_filter:9,.0f} records/s ({t_filter:.1f} s, all filters, embedder: {provider},"
          f" feature workers: {workers})")
    print(f"ingest + filter:   {n / (t_ingest + t_filter):9,.0f} records/s  (target >= 2,000 with the semantic"
          " filter, >= 4,000 without)")
    print(f"filter throughput per {chunk:,} records judged (cost must not grow with history):")
    for done, rate in curve:
        print(f"  {done:>10,}  {rate:8,.0f} records/s")
    if len(curve) > 1:
        print(f"  last / first chunk: {curve[-1][1] / curve[0][1]:.2f} (target >= 0.8)")
    print("cost per filter (wall time inside each call; with a worker, only the features the daemon computes itself"
          " are timed here: the first batch and its share of the others):")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {FILTERS[name]:<24} {seconds:7.2f} s  {seconds / t_filter:6.1%}  {seconds / n * 1e6:8.1f} us/record")
    if pages:
        per = pages / max(near_rows, 1)
        print(f"exact + near + template rows in SQLite: {pages / 1e6:.1f} MB for {near_rows} records ="
              f" {per:.0f} B/record; projected 1M records: {per * 1e6 / 1e9:.2f} GB on disk, linear")
    per = band_bytes / max(near_rows, 1)
    print(f"LSH band keys in memory (near + template): {band_bytes / 1e6:.1f} MB = {per:.0f} B/record; projected 1M"
          f" records: {per * 1e6 / 1e9:.2f} GB of memory, linear")
    if index_bytes:
        print(f"semantic index (faiss HNSW over 8-bit codes, hash-384, saved copy): {index_bytes / 1e6:.1f} MB = {index_bytes / max(accepted, 1):.0f}"
              f" B/accepted record; projected 1M accepted: {index_bytes / max(accepted, 1) * 1e6 / 1e9:.2f} GB on disk")
    print(f"peak RSS, this process + feature workers (sampled every 0.5 s): {peak[0]:.0f} MB (target < 1 GB at 1M)")


def _index_bytes(store: Store) -> int | None:
    try:
        return store.conn.execute("SELECT SUM(pgsize) FROM dbstat WHERE name IN ('lsh_sigs', 'exact_keys',"
                                  " 'template_clusters')").fetchone()[0]
    except Exception:  # noqa: BLE001 - SQLite built without DBSTAT
        return None


if __name__ == "__main__":
    main()
