"""SQLite (WAL) store: connection, migrations and every query. The only package that writes SQL."""

from __future__ import annotations

import enum
import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from iceburg_daemon.errors import StoreError
from iceburg_daemon.fsutil import fsync_path
from iceburg_daemon.store.follows import FollowQueries
from iceburg_daemon.store.schema import MIGRATIONS
from iceburg_daemon.store.runs import RunQueries, RunStatus  # noqa: F401 - re-exported
from iceburg_daemon.store.releases import ReleaseQueries
from iceburg_daemon.store.triggers import TriggerQueries
from iceburg_daemon.store.verdicts import VerdictQueries


class FileState(str, enum.Enum):
    INGESTING = "ingesting"  # claimed; lines up to byte_offset are committed
    DONE = "done"  # every line stored or quarantined; file archived/deleted (or left in place)
    QUARANTINED = "quarantined"  # unreadable as a whole; moved to quarantine/
    LOST = "lost"  # a followed file deleted or truncated before it was read to the end (bytes never read)


class SourceHealth(str, enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class NewRecord(NamedTuple):  # a tuple: built once per ingested line, where a frozen dataclass cost ~2 us
    content_hash: str
    role: str
    kind: str
    canonical: str  # canonical JSON of the whole record
    source: str  # "inbox", "cli" or "chroma:<store>"
    source_ref: str  # file + line, or store/collection/id
    record_ts: str | None  # the record's own timestamp, when it has one


@dataclass
class BatchCounts:
    """What one write added: new records per (role, kind), duplicates ignored, quarantined per reason."""

    stored: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    @property
    def total_stored(self) -> int:
        return sum(self.stored.values())

    def add(self, other: "BatchCounts") -> None:
        self.stored.update(other.stored)
        self.duplicates += other.duplicates
        self.quarantined.update(other.quarantined)


@dataclass(frozen=True)
class Rejection:
    source: str
    source_ref: str  # unique: a re-run of the same line never adds a second row
    reason: str
    detail: str
    excerpt: str
    line_no: int = 0


def _connect(uri: str, *, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        # A checkpoint every 10,000 pages (~40 MB), not 1,000: each one costs an fsync, and ingest ran 15-25 %
        # faster. What must survive a power cut is made durable explicitly (`sync`).
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # the WAL file is cut back to 64 MB after a checkpoint
    return conn


class Store(VerdictQueries, RunQueries, TriggerQueries, ReleaseQueries, FollowQueries):
    """One connection. The daemon (or `iceburgd ingest`, under the same lock) is the only writer."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool):
        self.conn = conn
        self.path = path
        self.readonly = readonly

    @classmethod
    def open(cls, path: Path) -> "Store":
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        if fresh:
            # Create with 0600 before SQLite opens it: records may hold private conversations.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            conn = _connect(f"file:{path}", readonly=False)
            store = cls(conn, path, readonly=False)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{path}{suffix}")
            if p.exists():
                os.chmod(p, 0o600)
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> "Store":
        if not path.exists():
            raise StoreError(f"no store at {path}: the daemon has not been initialised (run `iceburgd run` once)")
        try:
            conn = _connect(f"file:{path}?mode=ro", readonly=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read store {path}: {exc}") from exc
        if version < len(MIGRATIONS):
            # A reader never migrates: the daemon is creating the store right now, or an older one is running.
            conn.close()
            state = "is being created" if version == 0 else f"has schema v{version}, older than this iceburgd"
            raise StoreError(f"store {path} {state} (v{len(MIGRATIONS)}); start `iceburgd run` and retry")
        return cls(conn, path, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"store schema v{version} is newer than this iceburgd (v{len(MIGRATIONS)})")
        for number in range(version, len(MIGRATIONS)):
            with self.transaction():
                # Statement by statement: executescript() would commit mid-migration.
                for statement in _statements(MIGRATIONS[number]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number + 1}")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> "_Tx":
        return _Tx(self.conn)

    def sync(self) -> bool:
        """Make every committed transaction durable now: a file's final state must survive a power cut before
        the file leaves .processing/. With synchronous = NORMAL commits are not fsynced, and a PASSIVE checkpoint
        copies (and syncs) nothing a reader still pins, so the WAL file itself is fsynced: the committed frames
        are then on the disk whatever the checkpoint did. Returns whether the checkpoint was complete."""
        busy, frames, done = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        wal = Path(f"{self.path}-wal")
        if wal.exists():
            fsync_path(wal)
        return not busy and done >= frames

    # ---- files -------------------------------------------------------------------------------------------
    def file_by_path(self, path: Path, sha256: str | None = None) -> sqlite3.Row | None:
        """The newest row for a path (optionally for one content hash of it)."""
        if sha256 is None:
            return self.conn.execute("SELECT * FROM files WHERE path = ? ORDER BY id DESC", (str(path),)).fetchone()
        return self.conn.execute("SELECT * FROM files WHERE path = ? AND sha256 = ?", (str(path), sha256)).fetchone()

    def add_file(self, *, name: str, path: Path, origin: str, size: int, sha256: str, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO files(name, path, origin, size, sha256, state, claimed_at) VALUES (?,?,?,?,?,?,?)",
            (name, str(path), origin, size, sha256, FileState.INGESTING.value, now),
        )
        return int(cur.lastrowid or 0)

    def commit_batch(
        self,
        file_id: int,
        records: list[NewRecord],
        rejections: list[Rejection],
        *,
        byte_offset: int,
        line_no: int,
        now: float,
    ) -> "BatchCounts":
        """Store a batch of lines and advance the file's resume point in one transaction."""
        with self.transaction():
            counts = self._insert_batch(records, rejections, now)
            self.conn.execute(
                "UPDATE files SET byte_offset = ?, line_no = ?, stored = stored + ?, duplicates = duplicates + ?,"
                " quarantined = quarantined + ? WHERE id = ?",
                (byte_offset, line_no, counts.total_stored, counts.duplicates, sum(counts.quarantined.values()),
                 file_id),
            )
        return counts

    def _insert_batch(self, records: list[NewRecord], rejections: list[Rejection], now: float) -> "BatchCounts":
        counts = self.insert_records(records, now)
        counts.quarantined.update(self.insert_rejections(rejections, now))
        return counts

    def insert_records(self, records: list[NewRecord], now: float) -> "BatchCounts":
        """INSERT OR IGNORE by content hash, grouped by (role, kind) so the counts say what was new."""
        counts = BatchCounts()
        groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for r in records:
            groups.setdefault((r.role, r.kind), []).append(
                (r.content_hash, r.role, r.kind, r.canonical, r.source, r.source_ref, r.record_ts, now)
            )
        for key, rows in groups.items():
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO records(content_hash, role, kind, canonical, source, source_ref, record_ts,"
                " ingested_at) VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )
            stored = self.conn.total_changes - before
            if stored:
                counts.stored[key] += stored
            counts.duplicates += len(rows) - stored
        return counts

    def insert_rejections(self, rejections: list[Rejection], now: float) -> Counter[str]:
        """Quarantine rows, unique by source_ref (a re-run adds nothing). Returns new rows per reason."""
        added: Counter[str] = Counter()
        for q in rejections:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO quarantine(source, source_ref, line_no, reason, detail, excerpt, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (q.source, q.source_ref, q.line_no, q.reason, q.detail, q.excerpt, now),
            )
            if cur.rowcount:
                added[q.reason] += 1
        return added

    def archived_since(self, since: float) -> list[sqlite3.Row]:
        """Inbox files archived (not deleted, not quarantined) at or after `since`: watched for late appends."""
        return self.conn.execute(
            "SELECT * FROM files WHERE origin = 'inbox' AND state = ? AND final_path IS NOT NULL AND finished_at >= ?"
            " ORDER BY id", (FileState.DONE.value, since)).fetchall()

    def set_file_size(self, file_id: int, size: int) -> None:
        """The bytes read so far: a file that grows past this later had lines appended late."""
        self.conn.execute("UPDATE files SET size = ? WHERE id = ?", (size, file_id))

    def finish_file(self, file_id: int, state: FileState, *, final_path: str | None, reason: str | None, now: float) -> None:
        self.conn.execute(
            "UPDATE files SET state = ?, final_path = ?, reason = ?, finished_at = ? WHERE id = ?",
            (state.value, final_path, reason, now, file_id),
        )

    def rejections_for(self, source_ref_prefix: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM quarantine WHERE source_ref >= ? AND source_ref < ? ORDER BY line_no",
            (source_ref_prefix, source_ref_prefix + "\uffff"),
        ).fetchall()

    def count_file_failure(self, file_id: int) -> int:
        """One more unexpected failure while ingesting the file (its own transaction); returns the total."""
        with self.transaction():
            self.conn.execute("UPDATE files SET failures = failures + 1 WHERE id = ?", (file_id,))
            return int(self.conn.execute("SELECT failures FROM files WHERE id = ?", (file_id,)).fetchone()[0])

    def file_counts(self, file_id: int) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()

    # ---- sources -----------------------------------------------------------------------------------------
    def source(self, name: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM sources WHERE name = ?", (name,)).fetchone()

    def sources(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM sources ORDER BY name").fetchall()

    def ensure_source(self, name: str, kind: str, path: str) -> None:
        self.conn.execute(
            "INSERT INTO sources(name, kind, path, health) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET path = excluded.path",
            (name, kind, path, SourceHealth.UNKNOWN.value),
        )

    def known_source_items(self, source: str) -> set[tuple[str, str, str]]:
        rows = self.conn.execute(
            "SELECT collection, item_id, content_hash FROM source_items WHERE source = ?", (source,)
        )
        return {(r[0], r[1], r[2]) for r in rows}

    def record_source_sync(
        self,
        name: str,
        items: list[tuple[str, str, str]],
        records: list[NewRecord],
        rejections: list[Rejection],
        *,
        watermark: dict[str, Any],
        now: float,
        next_attempt: float,
    ) -> "BatchCounts":
        """Store a successful sync's new items and mark the source healthy, atomically."""
        with self.transaction():
            counts = self._insert_batch(records, rejections, now)
            self.conn.executemany(
                "INSERT OR IGNORE INTO source_items(source, collection, item_id, content_hash) VALUES (?,?,?,?)",
                [(name, c, i, h) for c, i, h in items],
            )
            total = self.conn.execute("SELECT COUNT(*) FROM source_items WHERE source = ?", (name,)).fetchone()[0]
            self.conn.execute(
                "UPDATE sources SET health = ?, reason = NULL, failures = 0, items = ?, last_attempt = ?,"
                " last_sync = ?, next_attempt = ?, watermark = ? WHERE name = ?",
                (SourceHealth.HEALTHY.value, total, now, now, next_attempt, json.dumps(watermark), name),
            )
        return counts

    def mark_source_unhealthy(self, name: str, reason: str, *, now: float, next_attempt: float) -> int:
        with self.transaction():
            self.conn.execute(
                "UPDATE sources SET health = ?, reason = ?, failures = failures + 1, last_attempt = ?,"
                " next_attempt = ? WHERE name = ?",
                (SourceHealth.UNHEALTHY.value, reason, now, next_attempt, name),
            )
            row = self.conn.execute("SELECT failures FROM sources WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # ---- events and heartbeat ----------------------------------------------------------------------------
    def add_event(self, kind: str, subject: str, now: float, **data: Any) -> None:
        self.conn.execute(
            "INSERT INTO events(ts, kind, subject, data) VALUES (?,?,?,?)",
            (now, kind, subject, json.dumps(data, sort_keys=True, default=str)),
        )

    def recent_events(self, limit: int = 10) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()

    def events_since(self, kind: str, since: float) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM events WHERE kind = ? AND ts >= ? ORDER BY id", (kind, since)).fetchall()

    def beat(self, *, pid: int, started_at: float, now: float, state: str, version: str) -> None:
        self.conn.execute(
            "INSERT INTO heartbeat(id, pid, started_at, ts, state, version) VALUES (1,?,?,?,?,?)"
            " ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at, ts = excluded.ts,"
            " state = excluded.state, version = excluded.version",
            (pid, started_at, now, state, version),
        )

    def heartbeat(self) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM heartbeat WHERE id = 1").fetchone()

    # ---- reads for status, tests and benchmarks ----------------------------------------------------------
    def record_counts(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT role, kind, COUNT(*) AS n FROM records GROUP BY role, kind ORDER BY role, kind"
        ).fetchall()

    def quarantine_counts(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT reason, COUNT(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC, reason"
        ).fetchall()

    def file_state_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def content_hashes(self) -> Iterator[str]:
        for row in self.conn.execute("SELECT content_hash FROM records"):
            yield row[0]

    def records(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(f"SELECT * FROM records WHERE {where} ORDER BY id", params).fetchall()

    def quarantined(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM quarantine ORDER BY id").fetchall()

    def backup(self, dest: Path) -> None:
        """A consistent copy of the store (SQLite's online backup: works while the daemon writes), written
        beside `dest` and renamed into place, private (0600)."""
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        target = sqlite3.connect(tmp)
        try:
            self.conn.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        finally:
            target.close()
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)

    def integrity_ok(self) -> bool:
        return bool(self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def _statements(script: str) -> list[str]:
    """Split a script on the semicolons that end statements (not those inside comments or strings)."""
    out, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf)
            buf = ""
    return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; nested use joins the outer transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
