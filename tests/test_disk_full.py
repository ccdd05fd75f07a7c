"""Issue 14: a full disk. The data folder lives on a real 16 MiB tmpfs (mounted here as root; where mounting is
not allowed, the same steps run with injected ENOSPC/SQLITE_FULL). The daemon stops taking new input, says so
in status and metrics, loses nothing, quarantines nothing, and recovers once space is freed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.status import collect
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_lines, write_config, write_jsonl

MiB = 1 << 20


class Disk:
    """A small filesystem to fill and free: a real tmpfs, or (where mounting is refused) a simulated one."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.filler = root, root / "filler.bin"
        root.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], capture_output=True)
        self.real = done.returncode == 0
        self.monkeypatch, self.simulated_free = monkeypatch, None

    def leave(self, free: int) -> None:
        """Fill the filesystem until about `free` bytes are left."""
        if not self.real:
            self.simulated_free = free
            self.monkeypatch.setattr("iceburg_daemon.daemon.free_bytes", lambda path: self.simulated_free)
            self.monkeypatch.setattr("iceburg_daemon.status.free_bytes", lambda path: self.simulated_free)
            if free < 2 * MiB:  # room for one batch: later commits fail as SQLite does on a full disk
                real, room = Store.commit_batch, [1]

                def full(store, *args, **kwargs):
                    if self.simulated_free is not None and self.simulated_free < 2 * MiB:
                        if not room:
                            self.simulated_free = 0  # what the failed write leaves on a real disk
                            raise sqlite3.OperationalError("database or disk is full")
                        room.pop()
                    return real(store, *args, **kwargs)

                self.monkeypatch.setattr(Store, "commit_batch", full)
            return
        import shutil

        with open(self.filler, "ab") as fh:
            while shutil.disk_usage(self.root).free > free + 64 * 1024:
                fh.write(b"\0" * min(MiB, shutil.disk_usage(self.root).free - free))
                fh.flush()

    def free_all(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.simulated_free = 1 << 40

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "small", monkeypatch)
    yield d
    d.close()


def _counts(cfg) -> tuple[int, int, list[str]]:
    store = Store.open_readonly(cfg.db_path)
    try:
        records = store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        quarantined = store.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        states = [r[0] for r in store.conn.execute("SELECT state FROM files ORDER BY id")]
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
    return records, quarantined, states


def test_a_full_disk_stops_new_input_loses_nothing_and_recovers(tmp_path, disk):
    cfg = load_config(write_config(tmp_path / "home", f"[paths]\ndata_dir = '{disk.root / 'data'}'\n"
                                                      "[daemon]\nheartbeat_seconds = 0.2\nmin_free_mb = 1.0\n"
                                                      "[quality]\nmode = 'paused'\n"), env={})
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    try:
        # 1. Below min_free_mb: a dropped file waits in the inbox, untouched; status and metrics say why.
        write_jsonl(cfg.inbox_dir / "early.jsonl", chat_lines(20, seed=1))
        disk.leave(MiB // 2)
        daemon.tick()
        assert (cfg.inbox_dir / "early.jsonl").exists() and _counts(cfg)[0] == 0
        assert daemon.metrics.disk_low._value.get() == 1
        warnings = collect(cfg, now=time.time())["warnings"]
        assert any(w.startswith("disk nearly full") and "nothing is lost" in w for w in warnings), warnings

        # 2. Room again, but a big file fills the disk while it is ingested: SQLite answers SQLITE_FULL.
        disk.free_all()
        write_jsonl(cfg.inbox_dir / "big.jsonl", chat_lines(1500, answer_bytes=600, seed=2))
        disk.leave(3 * MiB // 2)
        for _ in range(5):
            daemon.tick()
        records, quarantined, states = _counts(cfg)
        assert 0 < records < 1520 and quarantined == 0  # part stored, nothing quarantined
        assert "quarantined" not in states and list(cfg.processing_dir.iterdir())  # waiting in .processing/
        assert daemon.metrics.disk_low._value.get() == 1

        # 3. Space freed: everything is ingested exactly once.
        disk.free_all()
        for _ in range(20):
            daemon.tick()
            if not list(cfg.processing_dir.iterdir()) and not list(cfg.inbox_dir.glob("*.jsonl")):
                break
        assert _counts(cfg) == (1520, 0, ["done", "done"])
        assert daemon.metrics.disk_low._value.get() == 0
        store = Store.open_readonly(cfg.db_path)
        kinds = [r[0] for r in store.conn.execute("SELECT kind FROM events WHERE kind LIKE 'disk_%' ORDER BY id")]
        failures = [r[0] for r in store.conn.execute("SELECT failures FROM files")]
        store.close()
        assert kinds[-1] == "disk_ok" and failures == [0, 0]  # a full disk never counted against a file
    finally:
        daemon.close()
    print(f"disk: {'a real 16 MiB tmpfs' if disk.real else 'simulated ENOSPC'}; events {kinds}")
    assert json.dumps(kinds)
