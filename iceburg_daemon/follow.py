"""ICEBURG's log files, read where they lie ([[sources.logs]]) -> records in the store, every line exactly once.

As Filebeat and Fluent Bit do, a file is known by device and inode and checked by a fingerprint of its first
bytes; the offset is committed with each batch (ingest_file), so a kill at any instant neither repeats nor loses
a line. Only complete lines are read while a file is followed. A file renamed away (rotation) keeps its inode: it
is read on, through its open descriptor or found again in its folder, until it has been idle for
[sources] rotated_grace_seconds. A file that shrank below the offset or whose first bytes changed was truncated
(or replaced): a copy in its folder that starts with the same bytes (copy-truncate) is read on from the offset.
Descriptors stay open across passes, so a file deleted after it was last seen is still read to its end; one
deleted or truncated before that is reported with the bytes that were never read. Nothing is moved or written.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from iceburg_daemon.config import glob_base
from iceburg_daemon.ingest import ingest_file, quarantine_whole_file
from iceburg_daemon.logs import get_logger, stage_failed
from iceburg_daemon.store import BatchCounts, FileState, Store

log = get_logger("iceburgd.follow")
HEAD_BYTES = 1024  # the fingerprint covers this much of a file's start (less while the file is shorter)
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")  # rotated, compressed copies: their lines were read before


@dataclass(frozen=True)
class Seen:
    """A regular file the glob matches now."""

    path: Path
    dev: int
    inode: int
    size: int
    mtime_ns: int


@dataclass
class Followed:
    """What one pass did to one file: lines read, and how it ended if it did (rotated, deleted, truncated,
    lost, quarantined)."""

    source: str  # the configured name
    name: str
    counts: BatchCounts = field(default_factory=BatchCounts)
    ended: str | None = None
    unread_bytes: int = 0


def source_ref(name: str) -> str:
    """The name followed files' records carry as their source (and the sources table row)."""
    return f"log:{name}"


def _head(fd: int, length: int) -> tuple[str, int]:
    data = os.pread(fd, length, 0)
    return hashlib.sha256(data).hexdigest(), len(data)


def _starts_like(fd: int, row: sqlite3.Row) -> bool:
    """Whether the open file still begins with the bytes the row was fingerprinted on."""
    return _head(fd, row["head_len"]) == (row["head_sha256"], row["head_len"])


class Follower:
    """Follows every [[sources.logs]] glob; owns the descriptors kept open between passes (close() at exit)."""

    def __init__(self, cfg: Any, store: Store, *, clock: Callable[[], float]):
        self.cfg, self.store, self.clock = cfg, store, clock
        self.fds: dict[int, int] = {}  # files row id -> descriptor open on that row's inode
        self._told: set[str] = set()  # compressed paths skipped and unlistable folders, reported once

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def pass_(self, should_stop: Callable[[], bool] = lambda: False) -> list[Followed]:
        done: list[Followed] = []
        for source in self.cfg.sources.logs:
            if source.enabled and not should_stop():
                done += self._follow(source, should_stop)
        self._trim_fds()
        return done

    # ---- one source ----------------------------------------------------------------------------------------
    def _follow(self, source: Any, should_stop: Callable[[], bool]) -> list[Followed]:
        try:
            matches = self._glob(source.path)
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if f"{source.name}\0{reason}" not in self._told:  # once per cause, not every pass
                self._told.add(f"{source.name}\0{reason}")
                log.warning("source_unhealthy", source=source.name, reason=reason)
            with self.store.transaction():
                self.store.record_follow_pass(source_ref(source.name), source.path, following=0, now=self.clock(),
                                              reason=reason)
            return []
        done: list[Followed] = []
        active = {(r["dev"], r["inode"]): r for r in self.store.followed_files(source.name)}
        # Known inodes first: a truncated file's copy must be claimed before it could look like a new file.
        for seen in matches:
            row = active.get((seen.dev, seen.inode))
            if row is not None and (seen.size, seen.mtime_ns) != (row["size"], row["mtime_ns"]):
                moved = self._check_known(source, row, seen, done, claimed=active.keys())
                active.pop((seen.dev, seen.inode))
                if moved is not None:
                    active[(moved["dev"], moved["inode"])] = moved
            elif row is not None and str(seen.path) != row["path"]:  # renamed, still matched, nothing new
                with self.store.transaction():
                    active[(seen.dev, seen.inode)] = self.store.update_followed(row["id"], path=str(seen.path))
        for seen in matches:
            if (seen.dev, seen.inode) not in active:
                row = self._register(source, seen, list(active.values()))
                if row is not None:
                    active[(seen.dev, seen.inode)] = row
        at = {(s.dev, s.inode): s for s in matches}
        for key, row in active.items():
            if should_stop():
                break
            try:
                done.append(self._read_on(source, row, at.get(key), should_stop))
            except Exception as exc:  # noqa: BLE001 - one file's bug must not stop the others; retried next pass
                stage_failed(exc, stage="follow", source=source.name, file=row["name"])
        with self.store.transaction():
            self.store.record_follow_pass(source_ref(source.name), source.path, reason=None, now=self.clock(),
                                          following=len(self.store.followed_files(source.name)))
        return [d for d in done if d.ended or d.counts.total_stored or d.counts.duplicates or d.counts.quarantined]

    def _glob(self, pattern: str) -> list[Seen]:
        """Regular files matching now (symlinks followed: the target is what is read). OSError when the glob's
        folder cannot be listed, so a missing ICEBURG checkout shows as an unhealthy source."""
        os.listdir(glob_base(pattern))
        found = []
        for name in sorted(glob.glob(pattern, recursive=True)):
            path = Path(name)
            if path.name.lower().endswith(COMPRESSED):
                if name not in self._told:
                    self._told.add(name)
                    log.info("followed_file_skipped", path=name, reason="compressed")
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # gone between listing and stat: seen next pass, if it comes back
            if stat.S_ISREG(st.st_mode):
                found.append(Seen(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return found

    def _check_known(self, source: Any, row: sqlite3.Row, seen: Seen, done: list[Followed],
                     claimed: Collection[tuple[int, int]]) -> sqlite3.Row | None:
        """A followed file that changed: the same content grown (row returned, path updated), or truncated or
        replaced (the row moves to a copy that starts the same, or ends: None)."""
        fd = self._fd(row, seen.path)
        if fd is None:
            return row  # renamed or replaced since the glob: the next pass sees where it went
        if os.fstat(fd).st_size >= row["byte_offset"] and _starts_like(fd, row):
            fields: dict[str, Any] = {"path": str(seen.path)}
            if row["head_len"] < HEAD_BYTES:  # grown past a short fingerprint: fingerprint more of it
                fields["head_sha256"], fields["head_len"] = _head(fd, HEAD_BYTES)
            with self.store.transaction():
                return self.store.update_followed(row["id"], **fields)
        copy = self._find_copy(row, claimed)
        self._close(row["id"])
        if copy is not None:
            log.info("followed_file_copied", source=source.name, file=row["name"], copy=copy.path.name)
            with self.store.transaction():
                return self.store.update_followed(row["id"], path=str(copy.path), dev=copy.dev, inode=copy.inode)
        done.append(self._end(source, row, "truncated"))
        return None

    def _find_copy(self, row: sqlite3.Row, claimed: Collection[tuple[int, int]]) -> Seen | None:
        """A file in the row's folder, not followed yet, holding at least what was read and starting with the
        same bytes: the copy copy-truncate made before it emptied the original."""
        folder = Path(row["path"]).parent
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in claimed or st.st_size < row["byte_offset"]:
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if _starts_like(fd, row):
                    return Seen(Path(entry.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            finally:
                os.close(fd)
        return None

    def _register(self, source: Any, seen: Seen, followed: list[sqlite3.Row]) -> sqlite3.Row | None:
        """A file not followed now: new (a row from offset 0), or one already finished (skipped; followed again
        only if it has grown past where it was finished). One that starts like a followed file is a copy being
        made (copy-truncate): it waits, and is read on from the offset once the original is emptied."""
        try:
            fd = os.open(seen.path, os.O_RDONLY)
        except OSError:
            return None  # gone or unreadable: tried again next pass
        row = None
        try:
            row = self._new_or_reopened(source, seen, fd, followed)
        finally:
            if row is None:
                os.close(fd)
        if row is not None:
            self.fds[row["id"]] = fd
        return row

    def _new_or_reopened(self, source: Any, seen: Seen, fd: int, followed: list[sqlite3.Row]) -> sqlite3.Row | None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (seen.dev, seen.inode):
            return None  # replaced between the glob and the open: the next pass sees the new one
        if any(_starts_like(fd, row) for row in followed if row["head_len"]):
            return None
        old = self.store.followed_by_inode(source.name, seen.dev, seen.inode)
        if old is not None and _starts_like(fd, old) and st.st_size >= old["byte_offset"]:
            if old["state"] != FileState.DONE.value or st.st_size == old["byte_offset"]:
                return None  # read to its end already, lost or quarantined: never read twice
            with self.store.transaction():
                return self.store.reopen_followed(old["id"], path=str(seen.path))
        sha, length = _head(fd, HEAD_BYTES)
        with self.store.transaction():
            row = self.store.add_followed_file(
                source=source.name, name=seen.path.name, path=str(seen.path), dev=seen.dev, inode=seen.inode,
                size=0, mtime_ns=0, head_sha256=sha, head_len=length, now=self.clock())
        log.info("followed_file_found", source=source.name, file=seen.path.name, size=st.st_size)
        return row

    def _read_on(self, source: Any, row: sqlite3.Row, seen: Seen | None,
                 should_stop: Callable[[], bool]) -> Followed:
        """Read what was appended. A file no longer matched (renamed away, or deleted) is read to its end and
        finished once idle; one that cannot be found any more ends as deleted."""
        if seen is not None and (seen.size, seen.mtime_ns) == (row["size"], row["mtime_ns"]):
            return Followed(source.name, row["name"])  # unchanged since it was last read to its end
        fd = self._fd(row, seen.path) if seen else self._fd_away(row)
        if fd is None:
            return self._end(source, row, "deleted") if seen is None else Followed(source.name, row["name"])
        st = os.fstat(fd)
        deleted = seen is None and st.st_nlink == 0
        idle = seen is None and (self.clock() - st.st_mtime_ns / 1e9) >= self.cfg.sources.rotated_grace_seconds
        ending = deleted or idle  # nobody will finish its last line now: read it as it is
        if not ending and (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"]):
            return Followed(source.name, row["name"])
        result = ingest_file(self.store, row, source=source_ref(source.name), batch_size=self.cfg.inbox.batch_size,
                             max_record_bytes=self.cfg.inbox.max_record_bytes, clock=self.clock,
                             max_depth=self.cfg.inbox.max_depth, path=Path(row["path"]), fd=fd, kind="jsonl",
                             whole_lines=not ending, max_rejects=self.cfg.inbox.max_rejects_per_file,
                             should_stop=should_stop)
        followed = Followed(source.name, row["name"], result.counts)
        if result.failure is not None:
            self._close(row["id"])
            quarantine_whole_file(self.store, result, row, result.failure, source=source_ref(source.name),
                                  final_path=None, now=self.clock())
            followed.ended = "quarantined"
            return followed
        with self.store.transaction():  # mtime 0 after a read cut short: the next pass reads on
            row = self.store.update_followed(row["id"], size=st.st_size,
                                             mtime_ns=st.st_mtime_ns if result.complete else 0)
        if ending and result.complete:
            self._close(row["id"])
            with self.store.transaction():
                self.store.finish_file(row["id"], FileState.DONE, final_path=row["path"],
                                       reason="deleted" if deleted else "rotated", now=self.clock())
            followed.ended = "deleted" if deleted else "rotated"
        return followed

    def _end(self, source: Any, row: sqlite3.Row, why: str) -> Followed:
        """A file that cannot be read on: lost when bytes seen were never read, else simply finished."""
        self._close(row["id"])
        unread = max(row["size"] - row["byte_offset"], 0)
        with self.store.transaction():
            self.store.finish_file(row["id"], FileState.LOST if unread else FileState.DONE, final_path=None,
                                   reason=why, now=self.clock())
            if unread:
                self.store.add_event("followed_file_lost", row["name"], self.clock(), source=source.name,
                                     path=row["path"], reason=why, unread_bytes=unread)
        return Followed(source.name, row["name"], ended="lost" if unread else why, unread_bytes=unread)

    # ---- descriptors -----------------------------------------------------------------------------------------
    def _fd(self, row: sqlite3.Row, path: Path | None) -> int | None:
        """The row's open descriptor, or one opened on `path` when that is still the row's inode."""
        fd = self.fds.get(row["id"])
        if fd is not None or path is None:
            return fd
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (row["dev"], row["inode"]):
            os.close(fd)
            return None
        self.fds[row["id"]] = fd
        return fd

    def _fd_away(self, row: sqlite3.Row) -> int | None:
        """A followed file the glob no longer matches: its open descriptor, or (after a restart) the file with
        the same inode in its folder, if it still starts the same. Its path follows its new name."""
        path = self._locate(row)
        if path is not None and str(path) != row["path"]:
            with self.store.transaction():
                self.store.update_followed(row["id"], path=str(path))
        fd = self.fds.get(row["id"])
        if fd is None and path is not None:
            fd = self._fd(row, path)
            if fd is not None and not _starts_like(fd, row):
                self._close(row["id"])  # the inode was reused by another file: the one followed is gone
                return None
        return fd

    @staticmethod
    def _locate(row: sqlite3.Row) -> Path | None:
        """Where the row's inode is now: its recorded path, else the entry with that inode in the same folder."""
        try:
            st = os.stat(row["path"])
            if (st.st_dev, st.st_ino) == (row["dev"], row["inode"]):
                return Path(row["path"])
            entries = list(os.scandir(Path(row["path"]).parent))
        except OSError:
            return None
        for entry in entries:
            try:
                if entry.inode() == row["inode"] and entry.stat(follow_symlinks=False).st_dev == row["dev"]:
                    return Path(entry.path)
            except OSError:
                continue
        return None

    def _close(self, file_id: int) -> None:
        fd = self.fds.pop(file_id, None)
        if fd is not None:
            os.close(fd)

    def _trim_fds(self) -> None:
        """Keep at most [sources] max_open_files open: close those of files read to their end, idle longest."""
        excess = len(self.fds) - self.cfg.sources.max_open_files
        if excess <= 0:
            return
        idle = []
        for file_id, fd in self.fds.items():
            row, st = self.store.file_counts(file_id), os.fstat(fd)
            if row is not None and row["byte_offset"] >= st.st_size and st.st_nlink:
                idle.append((st.st_mtime_ns, file_id))
        for _, file_id in sorted(idle)[:excess]:
            self._close(file_id)
