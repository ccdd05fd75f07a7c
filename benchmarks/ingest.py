"""Ingest throughput: the real ingest path vs the floor (json.loads + canonical dump + hash + batched insert).

Usage: python benchmarks/ingest.py [N] [ROUNDS]   (default 50,000 records of ~1.5 KB, 3 rounds)

Floor and ingest alternate, each in a fresh store, and the medians are compared: on this shared 2-core machine
one pair of runs gave ratios anywhere from 0.52 to 0.73.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, write_config, write_jsonl


def floor(path: Path, db: Path, batch: int = 500) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 10000")  # as the store sets it: compare like with like
    conn.execute("CREATE TABLE r (h TEXT UNIQUE, body TEXT)")
    start = time.perf_counter()
    rows = []
    with open(path, "rb") as fh:
        for line in fh:
            obj = json.loads(line)
            body = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            rows.append((hashlib.sha256(body.encode()).hexdigest(), body))
            if len(rows) >= batch:
                conn.execute("BEGIN")
                conn.executemany("INSERT OR IGNORE INTO r VALUES (?, ?)", rows)
                conn.execute("COMMIT")
                rows.clear()
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO r VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - start


def ingest_once(root: Path, data: Path, n: int, index: int) -> float:
    cfg = load_config(write_config(root / f"home{index}"), env={})
    store = Store.open(cfg.db_path)
    start = time.perf_counter()
    (report,) = ingest_paths(cfg, store, [data])
    seconds = time.perf_counter() - start
    store.close()
    assert sum(report["stored"].values()) == n, report
    return seconds


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    floors, ingests = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_jsonl(root / "records.jsonl", chat_lines(n))
        size = data.stat().st_size
        for i in range(rounds):
            floors.append(floor(data, root / f"floor{i}.sqlite3"))
            ingests.append(ingest_once(root, data, n, i))
            print(f"round {i + 1}: floor {n / floors[-1]:8,.0f}/s  ingest {n / ingests[-1]:8,.0f}/s  "
                  f"ratio {floors[-1] / ingests[-1]:.2f}", flush=True)
    floor_s, ingest_s = statistics.median(floors), statistics.median(ingests)
    print(f"records: {n}, mean size {size / n:.0f} B, file {size / 1e6:.1f} MB, medians of {rounds} rounds")
    print(f"floor  (loads+dump+hash+insert): {n / floor_s:10,.0f} records/s  ({floor_s:.2f} s)")
    print(f"ingest (iceburgd ingest path):   {n / ingest_s:10,.0f} records/s  ({ingest_s:.2f} s)")
    print(f"ratio ingest/floor: {floor_s / ingest_s:.2f}  (target >= 0.60)")


if __name__ == "__main__":
    main()
