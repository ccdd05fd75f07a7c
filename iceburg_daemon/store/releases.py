"""Store queries for what follows training: the evaluation cache, model versions, the champion pointer, the
promotion history, publishing state and record lineage."""

from __future__ import annotations

import json
import sqlite3
from itertools import groupby, takewhile
from typing import Any, Iterable


class ReleaseQueries:
    conn: sqlite3.Connection

    # ---- evaluation cache: (model weights hash, item hash, kind) -> result --------------------------------------
    def cached_results(self, weights: str, kind: str) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT item, value FROM eval_cache WHERE weights = ? AND kind = ?", (weights, kind))
        return {r["item"]: json.loads(r["value"]) for r in rows}

    def cache_results(self, rows: Iterable[tuple[str, str, str, dict[str, Any]]], now: float) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO eval_cache (weights, item, kind, value, created_at)"
                              " VALUES (?, ?, ?, ?, ?)", [(w, i, k, json.dumps(v), now) for w, i, k, v in rows])

    def held_out_records(self, role: str, limit: int) -> list[sqlite3.Row]:
        """The role's accepted sft records in the permanent eval split, newest first (never trained on)."""
        return self.conn.execute(
            "SELECT r.id, r.content_hash, r.canonical FROM records r JOIN eval_records e ON e.record_id = r.id"
            " JOIN verdicts v ON v.record_id = r.id AND v.current = 1 WHERE r.role = ? AND r.kind = 'sft'"
            " AND v.verdict = 'accept' AND r.id NOT IN (SELECT record_id FROM forgotten_records)"
            " ORDER BY r.id DESC LIMIT ?", (role, limit)).fetchall()

    def rejected_templates(self, role: str, limit: int = 5000) -> list[sqlite3.Row]:
        """Records the filter rejected as template copies (what template echo compares answers with)."""
        return self.conn.execute(
            "SELECT r.canonical FROM records r JOIN verdicts v ON v.record_id = r.id AND v.current = 1"
            " WHERE r.role = ? AND v.verdict = 'reject' AND v.reason = 'template' ORDER BY r.id DESC LIMIT ?",
            (role, limit)).fetchall()

    # ---- versions and the champion ------------------------------------------------------------------------------
    def add_version(self, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        self.conn.execute(f"INSERT INTO model_versions ({cols}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))

    def update_version(self, role: str, version: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE model_versions SET {sets} WHERE role = ? AND version = ?",
                          (*fields.values(), role, version))

    def version(self, role: str, version: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM model_versions WHERE role = ? AND version = ?",
                                 (role, version)).fetchone()

    def version_of_run(self, run_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM model_versions WHERE run_id = ?", (run_id,)).fetchone()

    def versions(self, role: str | None = None) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM model_versions WHERE ? IS NULL OR role = ? ORDER BY role, version",
                                 (role, role)).fetchall()

    def next_version(self, role: str) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE role = ?",
                                (role,)).fetchone()
        return int(row[0]) + 1

    def champion(self, role: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM champions WHERE role = ?", (role,)).fetchone()

    def rejections_in_a_row(self) -> dict[str, int]:
        """Per role with versions: how many candidates the gate rejected since its last promoted one."""
        out: dict[str, int] = {}
        rows = self.conn.execute("SELECT role, decision FROM model_versions ORDER BY role, version DESC")
        for role, newest_first in groupby(rows, key=lambda r: r["role"]):
            out[role] = sum(1 for _ in takewhile(lambda r: r["decision"] == "rejected", newest_first))
        return out

    def champions(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM champions ORDER BY role").fetchall()

    def set_champion(self, role: str, version: int, *, action: str, reason: str, forced: bool, now: float) -> None:
        """Move the pointer and append to the history, in the caller's transaction (one atomic step)."""
        old = self.champion(role)
        self.conn.execute(
            "INSERT INTO champions (role, version, since) VALUES (?, ?, ?) ON CONFLICT(role) DO UPDATE SET"
            " version = excluded.version, since = excluded.since, publish_failures = 0, publish_next = NULL,"
            " publish_error = NULL", (role, version, now))
        self.conn.execute("INSERT INTO promotions (role, from_version, to_version, action, reason, forced, at)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (role, old["version"] if old else None, version, action, reason, int(forced), now))

    def update_champion(self, role: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE champions SET {sets} WHERE role = ?", (*fields.values(), role))

    def promotions(self, role: str | None = None) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM promotions WHERE ? IS NULL OR role = ? ORDER BY id",
                                 (role, role)).fetchall()

    # ---- lineage ----------------------------------------------------------------------------------------------
    def add_run_records(self, run_id: str, record_ids: Iterable[int]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO run_records (run_id, record_id) VALUES (?, ?)",
                              [(run_id, i) for i in record_ids])

    def versions_trained_on(self, record_id: int) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT v.* FROM model_versions v JOIN run_records rr ON rr.run_id = v.run_id WHERE rr.record_id = ?"
            " ORDER BY v.role, v.version", (record_id,)).fetchall()

    def forget_record(self, record_id: int, reason: str, now: float) -> bool:
        cur = self.conn.execute("INSERT OR IGNORE INTO forgotten_records (record_id, reason, at) VALUES (?, ?, ?)",
                                (record_id, reason, now))
        return cur.rowcount == 1

    def forgotten_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT record_id FROM forgotten_records")}
