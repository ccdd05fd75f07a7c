"""Store queries for training runs (status enum, transitions) and the permanent eval split."""

from __future__ import annotations

import enum
import json
import sqlite3
from typing import Any, Iterable


class RunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped with a checkpoint; resumed by the daemon
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    # A trained run goes on: trained -> evaluating -> promoted | rejected; a promoted one -> published |
    # publish_pending (Ollama down: retried with back-off)
    TRAINED = "trained"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    PUBLISHED = "published"
    PUBLISH_PENDING = "publish_pending"
    PUBLISH_FAILED = "publish_failed"  # Ollama cannot take this model (e.g. its architecture): not retried


ACTIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.INTERRUPTED.value)
# training finished with a model: every status from trained on
TRAINED = (RunStatus.TRAINED.value, RunStatus.EVALUATING.value, RunStatus.PROMOTED.value, RunStatus.REJECTED.value,
           RunStatus.PUBLISHED.value, RunStatus.PUBLISH_PENDING.value, RunStatus.PUBLISH_FAILED.value)


class RunQueries:
    conn: sqlite3.Connection

    def add_run(self, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        self.conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def run(self, run_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def runs(self, role: str | None = None, limit: int = 50) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM runs WHERE ? IS NULL OR role = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (role, role, limit)).fetchall()

    def runs_in(self, statuses: Iterable[str]) -> list[sqlite3.Row]:
        statuses = list(statuses)
        marks = ", ".join("?" * len(statuses))
        return self.conn.execute(f"SELECT * FROM runs WHERE status IN ({marks}) ORDER BY created_at, id",
                                 statuses).fetchall()

    def active_run(self, role: str) -> sqlite3.Row | None:
        marks = ", ".join("?" * len(ACTIVE))
        return self.conn.execute(f"SELECT * FROM runs WHERE role = ? AND status IN ({marks}) ORDER BY created_at"
                                 " LIMIT 1", (role, *ACTIVE)).fetchone()

    def update_run(self, run_id: str, **fields: Any) -> None:
        for key in ("progress", "metrics"):
            if key in fields and not isinstance(fields[key], (str, type(None))):
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    def claim_run(self, run_id: str, *, supervisor_pid: int, now: float) -> bool:
        """queued/interrupted -> running, for exactly one supervisor (the daemon or a foreground `train`)."""
        cur = self.conn.execute(
            "UPDATE runs SET status = ?, attempts = attempts + 1, supervisor_pid = ?, child_pid = NULL,"
            " started_at = COALESCE(started_at, ?) WHERE id = ? AND status IN (?, ?)",
            (RunStatus.RUNNING.value, supervisor_pid, now, run_id, RunStatus.QUEUED.value,
             RunStatus.INTERRUPTED.value))
        return cur.rowcount == 1

    def claim_evaluation(self, run_id: str, *, seen: Any, pid: int, attempts: int) -> bool:
        """-> evaluating for exactly one supervisor: only if the run is still as `seen` (status and supervisor),
        so the daemon and an `iceburgd eval` never evaluate the same run at once."""
        cur = self.conn.execute(
            "UPDATE runs SET status = ?, supervisor_pid = ?, eval_attempts = ? WHERE id = ? AND status = ?"
            " AND supervisor_pid IS ?", (RunStatus.EVALUATING.value, pid, attempts, run_id, seen["status"],
                                         seen["supervisor_pid"]))
        return cur.rowcount == 1

    def eval_record_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT record_id FROM eval_records")}

    def hold_out(self, record_ids: Iterable[int], run_id: str) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO eval_records (record_id, first_run) VALUES (?, ?)",
                              [(i, run_id) for i in record_ids])

    def accepted_training_records(self, role: str) -> sqlite3.Cursor:
        """A cursor, read row by row: a role may hold hundreds of thousands of records."""
        return self.conn.execute(
            "SELECT r.id, r.content_hash, r.kind, r.canonical FROM records r JOIN verdicts v ON v.record_id = r.id"
            " AND v.current = 1 WHERE r.role = ? AND v.verdict = 'accept' AND r.kind IN ('sft', 'preference')"
            " AND r.id NOT IN (SELECT record_id FROM forgotten_records) ORDER BY r.id", (role,))
