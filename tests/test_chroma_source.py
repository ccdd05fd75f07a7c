"""ICEBURG's real ChromaDB stores, read through snapshots by the child reader; failures become health states."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from iceburg_daemon.config import ChromaStoreConfig
from iceburg_daemon.chroma_source import HNSW_HEADER, sync_store
from iceburg_daemon.errors import SourceError
from iceburg_daemon.store import Store

STORES = {  # fixture folder -> (items, principles)
    "chroma": (1, 1),
    "chroma.bak.v0": (4, 1),
    "memory/chroma": (3, 0),
    "memory/chroma.bak.v0": (4, 0),
    # Named "corrupted" upstream for its zero-byte link_lists.bin, but its header says the index holds 0
    # elements (the 8 vectors wait in embeddings_queue), so the files are consistent and chromadb reads it.
    "chroma_corrupted_backup": (8, 0),
}


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def _sync(cfg, store, name, path, now=1000.0, command=None):
    source = ChromaStoreConfig(name=name, path=path)
    store.ensure_source(f"chroma:{name}", "chroma", str(path))
    return sync_store(cfg, store, source, now=now, command=command)


@pytest.mark.parametrize("folder", sorted(STORES))
def test_real_stores_are_read_from_a_snapshot_without_touching_them(cfg, fixtures, folder):
    src = fixtures / "data" / folder
    before = _tree_digest(src)
    store = Store.open(cfg.db_path)
    counts = _sync(cfg, store, "s", src)
    assert not isinstance(counts, SourceError), counts
    items, principles = STORES[folder]
    assert counts.total_stored == items
    assert counts.stored.get(("oracle", "signal"), 0) == principles
    row = store.source("chroma:s")
    assert (row["health"], row["items"], row["failures"]) == ("healthy", items, 0)
    assert row["next_attempt"] == 1000.0 + cfg.sources.sync_seconds
    watermark = json.loads(row["watermark"])
    assert watermark["items_seen"] == items and all(c["name"] for c in watermark["collections"])
    assert _tree_digest(src) == before  # the live store is never written
    again = _sync(cfg, store, "s", src, now=2000.0)
    assert again.total_stored == 0 and again.duplicates == 0  # incremental: nothing new, nothing re-read
    store.close()


def test_principles_map_to_oracle_signals(cfg, fixtures):
    store = Store.open(cfg.db_path)
    _sync(cfg, store, "p", fixtures / "data" / "chroma")
    (rec,) = [json.loads(r["canonical"]) for r in store.records()]
    assert (rec["kind"], rec["role"], rec["signal"]["type"]) == ("signal", "oracle", "principle")
    assert rec["signal"]["document"].startswith("Principle: ")
    assert rec["meta"]["dimension"] == 768 and rec["source_ref"].startswith("p/iceburg/")
    store.close()


def test_new_items_in_a_store_are_picked_up_incrementally(cfg, fixture_copy):
    import chromadb

    src = fixture_copy / "data" / "memory" / "chroma"
    store = Store.open(cfg.db_path)
    assert _sync(cfg, store, "m", src).total_stored == 3
    client = chromadb.PersistentClient(path=str(src))
    client.get_collection("iceburg_gnosis").add(ids=["new-1"], documents=["A brand new insight about tides."],
                                                embeddings=[[0.01] * 768], metadatas=[{"source": "iceburg"}])
    del client
    counts = _sync(cfg, store, "m", src, now=5000.0)
    assert counts.total_stored == 1 and store.source("chroma:m")["items"] == 4
    store.close()


def _corrupt(store_dir: Path, how: str) -> None:
    seg = next(store_dir.glob("*/header.bin")).parent
    if how == "torn_links":  # the header claims 5 elements on 2 levels; link_lists.bin is empty
        values = list(HNSW_HEADER.unpack((seg / "header.bin").read_bytes()))
        values[3], values[7] = 5, 2
        (seg / "header.bin").write_bytes(HNSW_HEADER.pack(*values))
    elif how == "truncated_data":
        values = list(HNSW_HEADER.unpack((seg / "header.bin").read_bytes()))
        values[3] = 5
        (seg / "header.bin").write_bytes(HNSW_HEADER.pack(*values))
        (seg / "data_level0.bin").write_bytes(b"\0" * 100)
    elif how == "short_header":
        (seg / "header.bin").write_bytes(b"\1" * 10)


@pytest.mark.parametrize(("how", "message"), [("torn_links", "link_lists.bin is empty but the header has 2 levels"),
                                              ("truncated_data", "data_level0.bin holds 100 bytes"),
                                              ("short_header", "header.bin is 10 bytes")])
def test_corrupted_segments_make_the_store_unhealthy_with_backoff(cfg, fixture_copy, how, message):
    src = fixture_copy / "data" / "chroma_corrupted_backup"
    _corrupt(src, how)
    store = Store.open(cfg.db_path)
    result = _sync(cfg, store, "bad", src, now=100.0)
    assert isinstance(result, SourceError) and str(result).startswith("corrupted") and message in str(result)
    row = store.source("chroma:bad")
    assert (row["health"], row["failures"], row["next_attempt"]) == ("unhealthy", 1, 100.0 + 30.0)
    _sync(cfg, store, "bad", src, now=200.0)
    assert store.source("chroma:bad")["next_attempt"] == 200.0 + 60.0  # doubled
    assert store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
    store.close()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "missing"),
        ("no_sqlite", "not_a_chroma_store"),
        ("garbage", "corrupted"),
    ],
)
def test_stores_that_cannot_open(cfg, tmp_path, setup, reason):
    path = tmp_path / "store"
    if setup != "missing":
        path.mkdir()
    if setup == "garbage":
        (path / "chroma.sqlite3").write_bytes(b"this is not sqlite" * 100)
    store = Store.open(cfg.db_path)
    result = _sync(cfg, store, "x", path)
    assert isinstance(result, SourceError) and str(result).startswith(reason)
    assert store.source("chroma:x")["health"] == "unhealthy"
    store.close()


def test_reader_crash_and_timeout_are_contained(cfg, fixtures):
    store = Store.open(cfg.db_path)
    segv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    crashed = _sync(cfg, store, "c", fixtures / "data" / "chroma", command=segv)
    assert isinstance(crashed, SourceError) and "signal 11" in str(crashed)
    fast_cfg = cfg.__class__(**{**cfg.__dict__, "sources": cfg.sources.__class__(timeout_seconds=0.5)})
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    timed_out = _sync(fast_cfg, store, "t", fixtures / "data" / "chroma", command=slow)
    assert isinstance(timed_out, SourceError) and str(timed_out).startswith("timeout")
    failing = [sys.executable, "-c", "import sys; sys.exit('chromadb: unsupported schema version 99')"]
    failed = _sync(cfg, store, "f", fixtures / "data" / "chroma", command=failing)
    assert isinstance(failed, SourceError) and "unsupported schema version 99" in str(failed)
    store.close()
