"""A backfill through the real daemon: N realistic records (~1.4 KB each) dropped into the inbox as F files,
`iceburgd run` ingesting and filtering them. Prints the curve (records ingested and judged per interval), the
peak RSS of the daemon with every child it started (feature workers, readers), and the store's size on disk.

The records are the realistic mix of corpus.py (varied answers, near duplicates, three templates, long answers);
--unique: only varied answers (the data of the first measurements).

Usage: python benchmarks/backfill.py [N] [--files F] [--every SECONDS] [--semantic] [--unique]
       (default 1,000,000 records in 100 files, sampled every 30 s, the default config: no embedding provider)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.errors import StoreError
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, write_config, write_jsonl

from corpus import realistic_lines, tree_rss_mb


def progress(db: Path) -> tuple[int, int, int]:
    try:
        store = Store.open_readonly(db)
    except StoreError:
        return 0, 0, 0
    try:
        stored = store.conn.execute("SELECT COALESCE(SUM(stored + duplicates), 0) FROM files").fetchone()[0]
        judged = store.conn.execute("SELECT COUNT(*) FROM verdicts WHERE current = 1").fetchone()[0]
        records = store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return int(stored), int(judged), int(records)
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--semantic", action="store_true", help="hash embedder: the semantic filter on")
    ap.add_argument("--unique", action="store_true", help="only varied answers")
    ap.add_argument("--after", type=float, default=0.0, help="keep sampling this long once all are judged (the"
                    " triggers then freeze each role's dataset for its first run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extra = "[embedding]\nprovider = 'hash'\n" if args.semantic else ""
        cfg_path = write_config(root / "home", "[daemon]\nheartbeat_seconds = 1.0\nmin_free_mb = 0.0\n" + extra)
        cfg = load_config(cfg_path, env={})
        cfg.inbox_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        per = args.n // args.files
        size = 0
        for f in range(args.files):
            count = per if f < args.files - 1 else args.n - per * (args.files - 1)
            lines = chat_lines(count, answer_bytes=1100, seed=f) if args.unique else realistic_lines(count, seed=f)
            path = write_jsonl(root / f"part{f:04d}.jsonl", lines)
            size += path.stat().st_size
            os.replace(path, cfg.inbox_dir / path.name)  # same filesystem: appears whole
        print(f"{args.n:,} records in {args.files} files, {size / 1e9:.2f} GB of JSONL, written in"
              f" {time.perf_counter() - t0:.0f} s")
        daemon = subprocess.Popen([sys.executable, "-m", "iceburg_daemon", "--config", str(cfg_path), "run"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        start, last, peak, curve = time.monotonic(), (0, 0, 0), 0.0, []
        judged_at: float | None = None
        print(f"{'t (s)':>7} {'ingested':>10} {'judged':>10} {'ingest/s':>9} {'judge/s':>9} {'RSS MB':>7}")
        try:
            while True:
                time.sleep(args.every)
                now = progress(cfg.db_path)
                rss = tree_rss_mb(daemon.pid)
                peak = max(peak, rss)
                t = time.monotonic() - start
                rates = ((now[0] - last[0]) / args.every, (now[1] - last[1]) / args.every)
                curve.append((t, now[0], now[1], now[2], *rates, rss))  # t, stored, judged, records, rates, rss
                print(f"{t:7.0f} {now[0]:10,} {now[1]:10,} {rates[0]:9,.0f} {rates[1]:9,.0f} {rss:7.0f}", flush=True)
                last = now
                if now[0] >= args.n and now[1] >= now[2] and judged_at is None:  # every stored record judged
                    judged_at = t  # sampled: the last interval may hold some idle time
                if (judged_at is not None and t - judged_at >= args.after) or daemon.poll() is not None:
                    break
        finally:
            took = judged_at or (time.monotonic() - start)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(300)
        db_bytes = sum(p.stat().st_size for p in cfg.data_dir.glob("iceburgd.sqlite3*"))
        index_bytes = sum(p.stat().st_size for p in cfg.index_dir.rglob("*") if p.is_file())
    # Judging rates from whole intervals only: ingest done before the interval began, judging not done by its
    # end (an interval that was still ingesting, or that ran out of records, would bend the ratio either way).
    steady = [c for prev, c in zip(curve, curve[1:]) if prev[1] >= args.n and c[2] < c[3]]
    third = max(len(steady) // 3, 1)
    first, final = steady[:third], steady[-third:]
    mean = (lambda rows: sum(r[5] for r in rows) / max(len(rows), 1))
    print(f"\nall judged in {took:.0f} s: {args.n / took:,.0f} records/s ingest + filter, end to end")
    print(f"judging rate over the {len(steady)} whole intervals after ingest: first third {mean(first):,.0f}/s,"
          f" last third {mean(final):,.0f}/s (ratio {mean(final) / max(mean(first), 1e-9):.2f})")
    print(f"peak RSS, daemon and children: {peak:.0f} MB (target < 1,024 MB)"
          + (f", including {args.after:.0f} s after the last verdict" if args.after else ""))
    print(f"store on disk: {db_bytes / 1e9:.2f} GB = {db_bytes / args.n:,.0f} B/record")
    if index_bytes:
        print(f"semantic index on disk (saved at shutdown): {index_bytes / 1e9:.2f} GB = {index_bytes / args.n:,.0f}"
              f" B/record")


if __name__ == "__main__":
    main()
