"""A flood into the inbox while a run trains: how fast the daemon ingests and judges it meanwhile, and how much
the training child slows down (optimizer steps per second before and during the flood), on the tiny model.

Usage: python benchmarks/flood.py [N] [--files F] [--before SECONDS]   (default 50,000 records in 10 files,
20 s of undisturbed training measured first)
"""

from __future__ import annotations

import argparse
import json
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
from iceburg_daemon.testing import (TINY_TRAINING, chat_lines, fact_record, iceburgd, tiny_base, write_config,
                                    write_jsonl)


def sample(db: Path) -> tuple[int, int, int | None, str | None]:
    """(records stored, records judged, the run's optimizer step, its status)."""
    try:
        store = Store.open_readonly(db)
    except StoreError:
        return 0, 0, None, None
    try:
        stored = store.conn.execute("SELECT COALESCE(SUM(stored + duplicates), 0) FROM files"
                                    " WHERE origin = 'inbox'").fetchone()[0]
        judged = store.conn.execute("SELECT COUNT(*) FROM verdicts WHERE current = 1").fetchone()[0]
        run = store.conn.execute("SELECT status, progress FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
        step = json.loads(run["progress"]).get("step") if run and run["progress"] else None
        return int(stored), int(judged), step, run["status"] if run else None
    finally:
        store.close()


def steps_per_second(points: list[tuple[float, int]]) -> float:
    return (points[-1][1] - points[0][1]) / max(points[-1][0] - points[0][0], 1e-9) if len(points) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=50_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--before", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = tiny_base(root / "base")
        text = TINY_TRAINING.format(base=base, epochs=400, max_steps=0).replace(
            "[surveyor.trigger]\n", "[surveyor.trigger]\nmin_new_records = 1000000000\n")
        cfg_path = write_config(root / "home", text + "[daemon]\nheartbeat_seconds = 1.0\nmin_free_mb = 0.0\n")
        cfg = load_config(cfg_path, env={})
        facts = [json.dumps(fact_record(f"site{i}", "teal")) for i in range(80)]
        assert iceburgd("ingest", str(write_jsonl(root / "facts.jsonl", facts)), config=cfg_path).returncode == 0
        assert iceburgd("data", "refilter", config=cfg_path).returncode == 0  # judged, so trainable
        assert iceburgd("train", "--role", "surveyor", "--now", config=cfg_path).returncode == 0
        flood = []
        per = args.n // args.files
        for f in range(args.files):
            flood.append(write_jsonl(root / f"flood{f:03d}.jsonl", chat_lines(per, answer_bytes=1100, seed=100 + f)))
        total = per * args.files
        cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
        daemon = subprocess.Popen([sys.executable, "-m", "iceburg_daemon", "--config", str(cfg_path), "run"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            while sample(cfg.db_path)[2] is None:  # until the child reports its first step
                time.sleep(0.2)
            quiet: list[tuple[float, int]] = []
            started = time.monotonic()
            while time.monotonic() - started < args.before:
                quiet.append((time.monotonic(), sample(cfg.db_path)[2] or 0))
                time.sleep(1.0)
            base_judged = sample(cfg.db_path)[1]
            for path in flood:
                os.replace(path, cfg.inbox_dir / path.name)
            t0, busy = time.monotonic(), []
            while True:
                stored, judged, step, status = sample(cfg.db_path)
                busy.append((time.monotonic(), step or 0))
                if judged - base_judged >= total or status != "running":
                    break
                time.sleep(1.0)
            took = time.monotonic() - t0
            stored, judged, step, status = sample(cfg.db_path)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(300)
    before, during = steps_per_second(quiet), steps_per_second(busy)
    print(f"training alone: {before:.2f} optimizer steps/s over {args.before:.0f} s")
    print(f"during the flood of {total:,} records: {during:.2f} steps/s ({(1 - during / before) * 100:.0f} % slower)"
          if before else "no training progress measured")
    print(f"flood: {stored:,} stored and {judged - base_judged:,} judged in {took:.0f} s while training"
          f" ({(judged - base_judged) / took:,.0f} records/s; run status at the end: {status})")


if __name__ == "__main__":
    main()
