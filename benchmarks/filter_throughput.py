"""Ingest plus the whole filter chain over N realistic records: records/s, the cost of each filter, and the
near-duplicate index's size per record with a projection to 1M records.

Usage: python benchmarks/filter_throughput.py [N]   (default 100,000)
"""

from __future__ import annotations

import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, write_config, write_jsonl

FILTERS = {  # profiled function -> filter it implements
    "check_structure": "1 structure",
    "check_signals": "2 quality signals",
    "check_exact": "3 exact duplicates",
    "check_near": "4 near duplicates",
    "check_template": "5 templates",
    "check_repetition": "6 repetition/junk",
    "check_principle_json": "9 role checks",
    "add_verdict": "verdict write",
    "remember": "index write",
}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_jsonl(root / "records.jsonl", chat_lines(n, answer_bytes=1100))
        cfg = load_config(write_config(root / "home"), env={})
        store = Store.open(cfg.db_path)
        t0 = time.perf_counter()
        ingest_paths(cfg, store, [data])
        t_ingest = time.perf_counter() - t0
        chain = FilterChain(cfg, store, clock=time.time)
        profile = cProfile.Profile()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t1 = time.perf_counter()
        profile.enable()
        judged = chain.run()
        profile.disable()
        t_filter = time.perf_counter() - t1
        accepted = sum(v for (_, verdict, _), v in judged.items() if verdict == "accept")
        pages = store.conn.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('lsh_sigs', 'lsh_bands', 'lsh_bands_key')"
        ).fetchone()[0] if _has_dbstat(store) else None
        near_rows = store.conn.execute("SELECT COUNT(*) FROM lsh_sigs WHERE idx = 1").fetchone()[0]
        store.close()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = pstats.Stats(profile)
    total = sum(v[3] for v in stats.stats.values() if v[3]) and t_filter  # wall time of the chain
    print(f"records: {n}, accepted {accepted}, rejected {n - accepted}")
    print(f"ingest:            {n / t_ingest:9,.0f} records/s ({t_ingest:.1f} s)")
    print(f"filter chain:      {n / t_filter:9,.0f} records/s ({t_filter:.1f} s, under the profiler)")
    print(f"ingest + filter:   {n / (t_ingest + t_filter):9,.0f} records/s  (target >= 5,000)")
    print("cost per filter (cumulative seconds under the profiler, share of the chain):")
    for (_file, _line, func), (_cc, _nc, _tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
        if func in FILTERS:
            print(f"  {FILTERS[func]:<22} {ct:7.2f} s  {ct / total:6.1%}   {ct / n * 1e6:7.1f} us/record")
    if pages:
        per = pages / max(near_rows, 1)
        print(f"near-duplicate index: {near_rows} records, {pages / 1e6:.1f} MB on disk = {per:.0f} B/record;"
              f" projected 1M records: {per * 1e6 / 1e9:.2f} GB on disk")
    print(f"process peak RSS: {rss0 / 1024:.0f} MB before the chain, {rss1 / 1024:.0f} MB after (the index lives in"
          " SQLite pages on disk, so RSS does not grow with it)")


def _has_dbstat(store: Store) -> bool:
    try:
        store.conn.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except Exception:  # noqa: BLE001 - SQLite built without DBSTAT
        return False


if __name__ == "__main__":
    main()
