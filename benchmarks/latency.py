"""Drop-to-stored latency with a running daemon (default config values): p50 and p95 over N small files.

Each file is written the inbox way (write `x.jsonl.tmp`, rename to `x.jsonl`); latency is the time from the
rename until its record is readable in the store. Usage: python benchmarks/latency.py [N]   (default 200)
"""

from __future__ import annotations

import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.formats import content_hash, parse_object
from iceburg_daemon.testing import chat_record, spawn_daemon, write_jsonl


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text("[metrics]\nenabled = false\n")  # every other value: the default
        cfg = load_config(home / "config.toml", env={})
        proc = spawn_daemon(home / "config.toml")
        try:
            deadline = time.monotonic() + 30
            while not cfg.db_path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True)
            latencies = []
            for i in range(n):
                record = chat_record(i, seed=42)
                digest = content_hash(parse_object(record))  # type: ignore[arg-type]
                start = time.monotonic()
                write_jsonl(cfg.inbox_dir / f"drop{i}.jsonl", [record])
                while not conn.execute("SELECT 1 FROM records WHERE content_hash = ?", (digest,)).fetchone():
                    if time.monotonic() - start > 30:
                        raise SystemExit(f"file {i} not stored after 30 s")
                    time.sleep(0.002)
                latencies.append(time.monotonic() - start)
            conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    latencies.sort()
    p95 = latencies[int(0.95 * (n - 1))]
    print(f"files: {n}, settle_seconds: {cfg.inbox.settle_seconds}")
    print(f"drop-to-stored p50: {statistics.median(latencies) * 1000:.0f} ms, p95: {p95 * 1000:.0f} ms,"
          f" max: {latencies[-1] * 1000:.0f} ms  (target p95 < 1000 ms)")


if __name__ == "__main__":
    main()
