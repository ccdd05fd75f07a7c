"""Ingest throughput: the real ingest path vs the floor (json.loads + canonical dump + hash + batched insert).

Usage: python benchmarks/ingest.py [N]   (default 50,000 records of ~1.4 KB)
"""

from __future__ import annotations

import hashlib
import json
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_jsonl(root / "records.jsonl", chat_lines(n))
        size = data.stat().st_size
        floor_s = floor(data, root / "floor.sqlite3")
        cfg = load_config(write_config(root / "home"), env={})
        store = Store.open(cfg.db_path)
        start = time.perf_counter()
        (report,) = ingest_paths(cfg, store, [data])
        ingest_s = time.perf_counter() - start
        stored = sum(report["stored"].values())
        store.close()
    assert stored == n, report
    print(f"records: {n}, mean size {size / n:.0f} B, file {size / 1e6:.1f} MB")
    print(f"floor  (loads+dump+hash+insert): {n / floor_s:10,.0f} records/s  ({floor_s:.2f} s)")
    print(f"ingest (iceburgd ingest path):   {n / ingest_s:10,.0f} records/s  ({ingest_s:.2f} s)")
    print(f"ratio ingest/floor: {floor_s / ingest_s:.2f}  (target >= 0.60)")


if __name__ == "__main__":
    main()
