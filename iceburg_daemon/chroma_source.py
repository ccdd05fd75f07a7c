"""ICEBURG's ChromaDB stores -> signal records, read from a private snapshot by a child process.

The daemon never opens ICEBURG's live store: it copies it (SQLite through the backup API, segment files as
they are), checks the copy, and has `python -m iceburg_daemon.chroma_source SNAPSHOT OUT` read it (through iceburg_daemon.chroma), because
a corrupted store can crash the reader (segfault) rather than raise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Sequence

from iceburg_daemon.config import ChromaStoreConfig, Config
from iceburg_daemon.errors import SourceError
from iceburg_daemon.formats import Reject, canonical_json, chroma_item
from iceburg_daemon.fsutil import is_disk_full
from iceburg_daemon.ingest import to_new_record
from iceburg_daemon.store import BatchCounts, NewRecord, Rejection, Store

SQLITE_NAME = "chroma.sqlite3"


# ---- parent side -------------------------------------------------------------------------------------------------
def take_snapshot(src: Path, dest: Path) -> Path:
    """Copy a store into dest (replacing an older copy) without writing to the source."""
    if not src.is_dir():
        raise SourceError(f"missing: {src} is not a directory")
    if not (src / SQLITE_NAME).is_file():
        raise SourceError(f"not_a_chroma_store: {src} has no {SQLITE_NAME}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False,
                        ignore=shutil.ignore_patterns(f"{SQLITE_NAME}*"))
        _copy_sqlite(src / SQLITE_NAME, tmp / SQLITE_NAME)
        for p in tmp.rglob("*"):
            os.chmod(p, 0o700 if p.is_dir() else 0o600)  # a copy of private memory stays private
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"snapshot_failed: {exc}") from exc
    return dest


def _copy_sqlite(src: Path, dest: Path) -> None:
    """A consistent copy even while ICEBURG writes; a source SQLite cannot open read-only falls back to a file copy."""
    try:
        with closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as source, \
                closing(sqlite3.connect(dest)) as target:
            source.backup(target)
    except sqlite3.Error:
        dest.unlink(missing_ok=True)
        shutil.copy2(src, dest)
    try:
        with closing(sqlite3.connect(dest)) as check:
            result = check.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise SourceError(f"corrupted: {SQLITE_NAME} cannot be opened: {exc}") from exc
    if result != "ok":
        raise SourceError(f"corrupted: {SQLITE_NAME} integrity_check: {result}")


# hnswlib's header.bin as chroma persists it (100 bytes, little-endian).
HNSW_HEADER = struct.Struct("<iQQQQQQiIQQQdQ")


def check_segments(snapshot: Path) -> list[str]:
    """HNSW segment folders whose files contradict their own header (truncated or torn writes).

    An empty link_lists.bin is normal while the index holds no elements above level 0 (vectors often wait in
    chroma's embeddings_queue), so only sizes the header says must be there are checked.
    """
    problems = []
    for header_path in sorted(snapshot.glob("*/header.bin")):
        seg = header_path.parent
        sizes = {n: (seg / n).stat().st_size if (seg / n).exists() else -1
                 for n in ("data_level0.bin", "link_lists.bin", "length.bin")}
        missing = [n for n, size in sizes.items() if size < 0]
        raw = header_path.read_bytes()
        if missing:
            problems.append(f"segment {seg.name}: missing {', '.join(missing)}")
            continue
        if len(raw) != HNSW_HEADER.size:
            problems.append(f"segment {seg.name}: header.bin is {len(raw)} bytes, expected {HNSW_HEADER.size}")
            continue
        _, _, max_elements, count, per_element, *_rest = HNSW_HEADER.unpack(raw)
        max_level = _rest[2]
        if count > max_elements:
            problems.append(f"segment {seg.name}: header counts {count} elements over a capacity of {max_elements}")
        elif sizes["data_level0.bin"] < count * per_element:
            problems.append(f"segment {seg.name}: data_level0.bin holds {sizes['data_level0.bin']} bytes, the header"
                            f" needs {count * per_element} for {count} elements")
        elif max_level > 0 and sizes["link_lists.bin"] == 0:
            problems.append(f"segment {seg.name}: link_lists.bin is empty but the header has {max_level} levels")
    return problems


def read_snapshot(snapshot: Path, *, timeout: float, command: Sequence[str] | None = None,
                  should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Run the reader child; every way it can fail becomes a SourceError with a reason."""
    with tempfile.TemporaryDirectory(prefix="iceburgd-chroma-") as tmp:
        out, err = Path(tmp) / "items.jsonl", Path(tmp) / "stderr.txt"
        argv = list(command) if command else [sys.executable, "-m", "iceburg_daemon.chroma_source"]
        with open(err, "w", encoding="utf-8") as err_fh:
            proc = subprocess.Popen([*argv, str(snapshot), str(out)], stdout=subprocess.DEVNULL, stderr=err_fh,
                                    stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if should_stop() or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    if should_stop():
                        raise SourceInterrupted("interrupted: the daemon is shutting down")
                    raise SourceError(f"timeout: the reader did not finish in {timeout:g}s")
                time.sleep(0.05)
        if proc.returncode < 0:
            raise SourceError(f"crashed: the reader died with signal {-proc.returncode}")
        if proc.returncode != 0:
            tail = err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise SourceError(f"open_failed: {tail[0][:300]}")
        try:
            lines = out.read_text(encoding="utf-8").splitlines()
            head, items = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        except (OSError, ValueError, IndexError) as exc:
            raise SourceError(f"bad_reader_output: {exc}") from exc
    if head.get("problems"):
        raise SourceError("inconsistent: " + "; ".join(head["problems"]))
    return {"collections": head["collections"], "items": items}


class SourceInterrupted(SourceError):
    """The sync was abandoned for a shutdown: not the store's fault, so its health is left as it was."""


def item_hash(item: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json([item.get("document"), item.get("metadata")]).encode()).hexdigest()


def sync_store(cfg: Config, store: Store, source: ChromaStoreConfig, *, now: float,
               command: Sequence[str] | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> BatchCounts | SourceError:
    """Snapshot, read and ingest what is new in one store; mark it healthy or unhealthy. Never raises: an
    unexpected exception (a bug, or data nothing foresaw) makes the store unhealthy with the same back-off as an
    unreadable one, instead of a fresh snapshot on every pass."""
    name = f"chroma:{source.name}"
    row = store.source(name)
    failures = row["failures"] if row else 0
    try:
        snapshot = take_snapshot(source.path, cfg.snapshots_dir / source.name)
        problems = check_segments(snapshot)
        if problems:
            raise SourceError("corrupted: " + "; ".join(problems))
        data = read_snapshot(snapshot, timeout=cfg.sources.timeout_seconds, command=command,
                             should_stop=should_stop)
        return _ingest_items(cfg, store, source, data, now)
    except SourceInterrupted as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - SourceError, or anything else: the store is unhealthy for now
        if is_disk_full(exc):
            raise  # our disk, not the store: no back-off, the daemon retries once there is space
        error = exc if isinstance(exc, SourceError) else SourceError(f"internal_error: {type(exc).__name__}:"
                                                                     f" {str(exc)[:200]}")
        delay = min(cfg.sources.backoff_seconds * 2**failures, cfg.sources.backoff_max_seconds)
        with store.transaction():
            store.mark_source_unhealthy(name, str(error), now=now, next_attempt=now + delay)
            store.add_event("source_unhealthy", name, now, reason=str(error), retry_in_s=delay)
        return error


def _ingest_items(cfg: Config, store: Store, source: ChromaStoreConfig, data: dict[str, Any],
                  now: float) -> BatchCounts:
    name = f"chroma:{source.name}"
    known = store.known_source_items(name)
    seen: list[tuple[str, str, str]] = []
    records: list[NewRecord] = []
    rejections: list[Rejection] = []
    for item in data["items"]:
        key = (item["collection"], item["id"], item_hash(item))
        if key in known:
            continue
        seen.append(key)
        ref = f"{source.name}/{item['collection']}/{item['id']}"
        parsed = chroma_item(item["collection"], item["id"], item.get("document"), item.get("metadata"),
                             item.get("dimension"))
        if isinstance(parsed, Reject):
            rejections.append(Rejection(source=name, source_ref=f"{ref}@{key[2][:16]}", reason=parsed.reason,
                                        detail=parsed.detail, excerpt=""))
        else:
            records.append(to_new_record(parsed, source=name, source_ref=ref))
    watermark = {"collections": data["collections"], "items_seen": len(data["items"])}
    counts = store.record_source_sync(name, seen, records, rejections, watermark=watermark, now=now,
                                      next_attempt=now + cfg.sources.sync_seconds)
    with store.transaction():
        store.add_event("source_synced", name, now, new_records=counts.total_stored,
                        duplicates=counts.duplicates, quarantined=sum(counts.quarantined.values()))
    return counts


# ---- child side ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m iceburg_daemon.chroma_source SNAPSHOT_DIR OUT_FILE", file=sys.stderr)
        return 2
    try:
        from iceburg_daemon.chroma import dump_store  # chromadb's native code loads only in this child

        dump_store(Path(args[0]), Path(args[1]))
        return 0
    except Exception as exc:  # noqa: BLE001 - the parent maps any failure to an unhealthy source
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
