"""The inbox folder: scan for settled files, claim them by atomic rename, ingest, then archive or quarantine.

Writers drop a file complete (write `name.jsonl.tmp`, then rename to `name.jsonl`). File events only wake the
loop; the rescan decides. Everything in the inbox is untrusted: links are never followed, and anything that is
not a regular file is skipped with a reason.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from iceburg_daemon.config import Config
from iceburg_daemon.errors import IngestError
from iceburg_daemon.ingest import FileResult, ingest_file, quarantine_whole_file, register_file, write_rejects_file
from iceburg_daemon.open_files import held_for_writing
from iceburg_daemon.readers import file_kind
from iceburg_daemon.store import BatchCounts, FileState, Store

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
NAME_MAX = 255  # bytes in one file name on APFS and ext4


@dataclass
class ScanResult:
    ready: list[Path] = field(default_factory=list)  # settled regular files, oldest first
    waiting: int = 0  # files still being written (mtime too recent, or held open by their writer)
    held_open: int = 0  # of those, files another process holds open for writing
    settles_in: float | None = None  # seconds until the first waiting file settles
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason) never claimed


def scan(inbox: Path, *, now: float, settle_seconds: float, open_settle_seconds: float | None = None,
         held: Callable[[list[Path]], set[Path] | None] = held_for_writing) -> ScanResult:
    """What in the inbox can be claimed now. A file is settled once its mtime is settle_seconds old, or
    open_settle_seconds old while a process holds it open for writing (None: do not ask, as status does)."""
    result = ScanResult()
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return result
    found: list[tuple[float, Path]] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
            continue  # hidden files, .processing/ and files still being written by convention
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        reason = _not_a_file(st.st_mode)
        if reason:
            result.skipped.append((Path(entry.path), reason))
        elif now - st.st_mtime < settle_seconds:
            result.waiting += 1
            wait = max(settle_seconds - (now - st.st_mtime), 0.01)
            result.settles_in = wait if result.settles_in is None else min(result.settles_in, wait)
        else:
            found.append((st.st_mtime, Path(entry.path)))
    if open_settle_seconds is not None:
        recent = [p for mtime, p in found if now - mtime < open_settle_seconds]
        writing = (held(recent) or set()) if recent else set()
        found = [(mtime, p) for mtime, p in found if p not in writing]
        result.waiting += len(writing)
        result.held_open = len(writing)
    result.ready = [p for _, p in sorted(found)]
    return result


def _not_a_file(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not_a_regular_file"


def claim(path: Path, processing: Path, now: float) -> Path | None:
    """Move a settled file into .processing/ under a unique, time-ordered name; None if it vanished meanwhile."""
    processing.mkdir(parents=True, exist_ok=True)
    stamp = int(now * 1_000_000)
    while any(processing.glob(f"{stamp:020d}_*")):
        stamp += 1
    target = processing / f"{stamp:020d}_{_fit(path.name, NAME_MAX - 21)}"
    try:
        os.rename(path, target)  # atomic within one filesystem; the writer's name is now free again
    except FileNotFoundError:
        return None
    return target


def _fit(name: str, limit: int) -> str:
    """A file name shortened (its suffix kept) to `limit` UTF-8 bytes, so the claim prefix still fits."""
    if len(name.encode()) <= limit:
        return name
    kind = file_kind(Path(name))
    suffix = "." + kind if kind else ""
    stem = name[: len(name) - len(suffix)].encode()[: limit - len(suffix)].decode("utf-8", "ignore")
    return stem + suffix


def drop(source: Path, inbox: Path) -> Path:
    """`iceburgd drop`: copy a file into the inbox the safe way: a hidden temporary name (never claimed), fsync,
    then a link under its own name that never replaces another file (`name-1.jsonl`, ... when taken)."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{source.name}.{os.getpid()}.drop"
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    kind = file_kind(source)
    stem, suffix = (source.name[: -len(kind) - 1], "." + kind) if kind else (source.name, "")
    try:
        for n in range(10_000):
            target = inbox / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, target)  # atomic, and fails instead of replacing a file of the same name
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name for {source.name} in {inbox}")
    finally:
        tmp.unlink(missing_ok=True)


def pending(processing: Path) -> list[Path]:
    """Claimed files, oldest claim first (names start with the claim time). Includes a crashed run's files."""
    try:
        return sorted(p for p in processing.iterdir() if p.is_file() and not p.is_symlink())
    except FileNotFoundError:
        return []


def original_name(processing_path: Path) -> str:
    return processing_path.name.split("_", 1)[1] if "_" in processing_path.name else processing_path.name


def _archive_target(cfg: Config, path: Path, now: float) -> Path | None:
    if cfg.inbox.after_ingest == "delete":
        return None
    day = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y-%m-%d")
    return cfg.archive_dir / day / path.name


def _move(store: Store, path: Path, target: Path | None) -> None:
    """Archive (or delete when target is None); a missing source means a previous run already did it. The store
    is synced first: the file's final state must survive a power cut before the file leaves .processing/."""
    store.sync()
    try:
        if target is None:
            path.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except FileNotFoundError:
        pass


def process_claimed(
    cfg: Config,
    store: Store,
    path: Path,
    *,
    clock: Callable[[], float],
    should_stop: Callable[[], bool],
    progress: Callable[[int], None] | None = None,
    held: Callable[[list[Path]], set[Path] | None] = held_for_writing,
) -> FileResult | None:
    """Ingest one claimed file to the end (or until asked to stop) and move it on. Safe to call again.

    A file that grew while it was read is read on; one that a process still holds open for writing stays in
    .processing/ (read up to its last whole line on every pass) until its writer closes it."""
    # Claimed names are unique, so the path alone finds the row: the content may have grown since registration.
    row = store.file_by_path(path)
    # Asking the OS who holds the file (a /proc sweep, or lsof on macOS) costs milliseconds to a subprocess: the
    # scan asked just before the claim, so ask again only for a file seen on an earlier pass or one that grows.
    ask = row is not None
    if row is None:
        try:
            row = register_file(store, path, name=original_name(path), origin="inbox", now=clock())
        except OSError as exc:  # cannot be read even once (permissions, I/O error): quarantined, not retried
            return _quarantine_unopened(cfg, store, path, exc, now=clock())
    if row["state"] == FileState.DONE.value or row["state"] == FileState.QUARANTINED.value:
        _move(store, path, Path(row["final_path"]) if row["final_path"] else None)  # crashed between commit and move
        return None
    appendable = file_kind(path) == "jsonl"  # a byte offset in the file itself: growth can be read on
    counts = BatchCounts()
    while True:
        size = _size(path)  # the reader gets at least this far (blank lines at the end move no resume point)
        writing = appendable and ask and path in (held([path]) or set())
        ask = True  # the loop goes round again only when the file grew: its writer may be at work
        # A file of another type fails inside ingest_file (the reader raises unsupported_type) and is quarantined.
        result = ingest_file(store, row, source="inbox", batch_size=cfg.inbox.batch_size,
                             max_record_bytes=cfg.inbox.max_record_bytes, clock=clock, should_stop=should_stop,
                             progress=progress, max_depth=cfg.inbox.max_depth, whole_lines=writing,
                             max_rejects=cfg.inbox.max_rejects_per_file)
        row = store.file_counts(row["id"])
        counts.add(result.counts)
        result.counts = counts
        if writing and result.complete:
            result.complete, result.held_open = False, True
        if not (appendable and result.complete and _size(path) > size) or should_stop():
            break
    if result.failure is not None:
        target = cfg.quarantine_dir / path.name
        quarantine_whole_file(store, result, row, result.failure, source="inbox", final_path=str(target), now=clock())
        write_rejects_file(store, row, cfg.quarantine_dir)
        _move(store, path, target)
    elif result.complete:
        write_rejects_file(store, row, cfg.quarantine_dir)
        target = _archive_target(cfg, path, clock())
        final = store.file_counts(row["id"])
        with store.transaction():
            if appendable:
                store.set_file_size(row["id"], size)
            store.finish_file(row["id"], FileState.DONE, final_path=str(target) if target else None, reason=None,
                              now=clock())
            store.add_event("file_ingested", row["name"], clock(), stored=final["stored"],
                            duplicates=final["duplicates"], quarantined=final["quarantined"])
        _move(store, path, target)
    return result


def _quarantine_unopened(cfg: Config, store: Store, path: Path, exc: OSError, *, now: float) -> FileResult:
    target = cfg.quarantine_dir / path.name
    with store.transaction():
        file_id = store.add_file(name=original_name(path), path=path, origin="inbox", size=_size(path),
                                 sha256=f"unopened-{int(now * 1e6)}", now=now)
    row = store.file_counts(file_id)
    failure = IngestError("unreadable", f"cannot open: {exc.strerror or type(exc).__name__}")
    result = FileResult(name=row["name"], file_id=file_id, failure=failure)
    quarantine_whole_file(store, result, row, failure, source="inbox", final_path=str(target), now=now)
    _move(store, path, target)
    return result


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def ingest_late_appends(cfg: Config, store: Store, *, clock: Callable[[], float],
                        should_stop: Callable[[], bool]) -> list[FileResult]:
    """Lines appended to an archived file (a writer that held it open where the platform could not tell, or
    that wrote after a long pause) are ingested from where reading stopped, and recorded as late_append."""
    results = []
    for row in store.archived_since(clock() - cfg.inbox.late_append_watch_seconds):
        archived = Path(row["final_path"])
        size = _size(archived)
        if should_stop() or file_kind(archived) != "jsonl" or size <= row["size"]:
            continue
        result = ingest_file(store, row, source="inbox", batch_size=cfg.inbox.batch_size, path=archived,
                             max_record_bytes=cfg.inbox.max_record_bytes, clock=clock, should_stop=should_stop,
                             max_depth=cfg.inbox.max_depth, max_rejects=cfg.inbox.max_rejects_per_file)
        after = store.file_counts(row["id"])
        with store.transaction():
            store.set_file_size(row["id"], size)
            store.add_event("late_append", row["name"], clock(), archived=archived.name,
                            lines=after["line_no"] - row["line_no"], stored=result.counts.total_stored)
        write_rejects_file(store, after, cfg.quarantine_dir)
        results.append(result)
    return results


class InboxWatcher:
    """watchdog observer that only sets `wake`; losing events is harmless because the rescan is the truth."""

    def __init__(self, inbox: Path, wake: threading.Event):
        self.inbox = inbox
        self.wake = wake
        self._observer: Any = None

    def start(self) -> bool:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a declared dependency
            return False
        wake = self.wake

        class Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
                wake.set()

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.inbox), recursive=False)
        self._observer.daemon = True
        try:
            self._observer.start()
        except OSError:  # e.g. inotify watch limit reached: the timed rescan still works
            self._observer = None
            return False
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
