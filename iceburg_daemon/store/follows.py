"""Store queries for log files followed in place ([[sources.logs]]): one `files` row per file content, found
again by device and inode, with the source's health in `sources` (kind 'log')."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

_FOLLOW_COLUMNS = ("path", "size", "mtime_ns", "dev", "inode", "head_sha256", "head_len")


class FollowQueries:
    conn: sqlite3.Connection

    def followed_files(self, source: str) -> list[sqlite3.Row]:
        """The files of a source still being followed (state ingesting), oldest first."""
        return self.conn.execute("SELECT * FROM files WHERE source = ? AND state = 'ingesting' ORDER BY id",
                                 (source,)).fetchall()

    def followed_by_inode(self, source: str, dev: int, inode: int) -> sqlite3.Row | None:
        """The newest row of a source for this device and inode, whatever its state (inodes are reused)."""
        return self.conn.execute("SELECT * FROM files WHERE source = ? AND dev = ? AND inode = ? ORDER BY id DESC",
                                 (source, dev, inode)).fetchone()

    def add_followed_file(self, *, source: str, name: str, path: str, dev: int, inode: int, size: int,
                          mtime_ns: int, head_sha256: str, head_len: int, now: float) -> sqlite3.Row:
        # `sha256` names this row in quarantine refs; the row's id (unknown before the insert) is not usable.
        token = hashlib.sha256(f"{source}\0{dev}\0{inode}\0{head_sha256}\0{now!r}".encode()).hexdigest()
        cur = self.conn.execute(
            "INSERT INTO files(name, path, origin, size, sha256, state, claimed_at, source, dev, inode, head_sha256,"
            " head_len, mtime_ns) VALUES (?,?,'follow',?,?,'ingesting',?,?,?,?,?,?,?)",
            (name, path, size, token, now, source, dev, inode, head_sha256, head_len, mtime_ns))
        return self.conn.execute("SELECT * FROM files WHERE id = ?", (cur.lastrowid,)).fetchone()

    def update_followed(self, file_id: int, **fields: Any) -> sqlite3.Row:
        unknown = set(fields) - set(_FOLLOW_COLUMNS)
        if unknown:
            raise ValueError(f"unknown followed-file columns: {sorted(unknown)}")
        if fields:
            assignments = ", ".join(f"{k} = ?" for k in fields)
            self.conn.execute(f"UPDATE files SET {assignments} WHERE id = ?", (*fields.values(), file_id))
        return self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()

    def reopen_followed(self, file_id: int, *, path: str) -> sqlite3.Row:
        """A finished file that grew again (found under the glob once more): followed on from its offset."""
        self.conn.execute("UPDATE files SET state = 'ingesting', reason = NULL, final_path = NULL,"
                          " finished_at = NULL WHERE id = ?", (file_id,))
        return self.update_followed(file_id, path=path)

    def record_follow_pass(self, name: str, pattern: str, *, following: int, reason: str | None,
                           now: float) -> None:
        """A source's health after a pass: unhealthy (with why) when its folder cannot be listed."""
        self.conn.execute(
            "INSERT INTO sources(name, kind, path, health) VALUES (?, 'log', ?, 'unknown')"
            " ON CONFLICT(name) DO UPDATE SET path = excluded.path", (name, pattern))
        if reason is None:
            self.conn.execute("UPDATE sources SET health = 'healthy', reason = NULL, failures = 0, items = ?,"
                              " last_attempt = ?, last_sync = ? WHERE name = ?", (following, now, now, name))
        else:
            self.conn.execute("UPDATE sources SET health = 'unhealthy', reason = ?, failures = failures + 1,"
                              " items = ?, last_attempt = ? WHERE name = ?", (reason, following, now, name))
