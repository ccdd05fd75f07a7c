import os
import sqlite3
import stat

import pytest

from iceburg_daemon.errors import StoreError
from iceburg_daemon.store import MIGRATIONS, NewRecord, Store


def test_store_is_private_wal_and_migrated_once(tmp_path):
    path = tmp_path / "d" / "s.sqlite3"
    store = Store.open(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == len(MIGRATIONS)
    rec = NewRecord("h1", "surveyor", "sft", "{}", "cli", "f:1", None)
    with store.transaction():
        counts = store.insert_records([rec, rec], 1.0)
    assert counts.total_stored == 1 and counts.duplicates == 1
    store.close()
    again = Store.open(path)  # re-opening applies no migration twice and keeps the data
    assert again.schema_version() == len(MIGRATIONS) and len(again.records()) == 1
    again.close()


def test_readonly_connections_cannot_write_and_need_a_store(tmp_path):
    with pytest.raises(StoreError, match="not been initialised"):
        Store.open_readonly(tmp_path / "none.sqlite3")
    sqlite3.connect(tmp_path / "s.sqlite3").close()  # the file a starting daemon has created, schema not yet in it
    with pytest.raises(StoreError, match="is being created"):
        Store.open_readonly(tmp_path / "s.sqlite3")
    Store.open(tmp_path / "s.sqlite3").close()
    ro = Store.open_readonly(tmp_path / "s.sqlite3")
    with pytest.raises(sqlite3.OperationalError):
        ro.add_event("x", "y", 1.0)
    ro.close()


def test_a_failed_transaction_leaves_nothing(tmp_path):
    store = Store.open(tmp_path / "s.sqlite3")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_records([NewRecord("h1", "oracle", "sft", "{}", "cli", "f:1", None)], 1.0)
            raise RuntimeError("crash mid-batch")
    assert store.records() == []
    store.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite3"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this iceburgd"):
        Store.open(path)


def test_backup_while_the_daemon_writes_is_consistent_and_restorable(tmp_path):
    import json
    import signal

    from iceburg_daemon.config import load_config
    from iceburg_daemon.testing import chat_lines, iceburgd, spawn_daemon, wait_for, write_config, write_jsonl

    cfg_path = write_config(tmp_path / "home", "[quality]\nmode = 'paused'\n")
    cfg = load_config(cfg_path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "big.jsonl", chat_lines(30_000, answer_bytes=300))
    daemon = spawn_daemon(cfg_path)
    try:
        wait_for(lambda: cfg.db_path.exists() and iceburgd("status", "--json", config=cfg_path).returncode == 0
                 and json.loads(iceburgd("status", "--json", config=cfg_path).stdout)["files"], 60, "ingest started")
        done = iceburgd("backup", str(tmp_path / "copy.sqlite3"), "--json", config=cfg_path)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["integrity_ok"] and 0 < report["records"] <= 30_000
    assert stat.S_IMODE(os.stat(tmp_path / "copy.sqlite3").st_mode) == 0o600
    assert not (tmp_path / "copy.sqlite3-wal").exists()  # one self-contained file
    restored = Store.open(tmp_path / "copy.sqlite3")  # what a restore opens: migrated, readable, the same rows
    assert len(restored.records()) == report["records"] and restored.integrity_ok()
    restored.close()
