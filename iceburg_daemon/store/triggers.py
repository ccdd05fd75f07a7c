"""Store queries for triggers: per-role trigger state, the records each role has trained on, the counts the
threshold needs, and the queue of runs waiting to start."""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from iceburg_daemon.store.runs import TRAINED

_STATE_COLUMNS = ("new_records", "threshold_mark", "schedule_key", "next_fire", "schedule_slot",
                  "last_fire_threshold", "last_fire_schedule", "last_fire_manual", "last_run_wall",
                  "last_run_mono", "last_run_boot", "failures", "last_failure_wall", "last_failure_mono",
                  "last_failure_boot", "needs_attention", "last_success", "decision", "updated_at")


class TriggerQueries:
    conn: sqlite3.Connection

    def role_trigger(self, role: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM role_triggers WHERE role = ?", (role,)).fetchone()

    def role_triggers(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM role_triggers ORDER BY role").fetchall()

    def save_role_trigger(self, role: str, **fields: Any) -> None:
        unknown = set(fields) - set(_STATE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown role_triggers columns: {sorted(unknown)}")
        self.conn.execute("INSERT OR IGNORE INTO role_triggers(role) VALUES (?)", (role,))
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self.conn.execute(f"UPDATE role_triggers SET {sets} WHERE role = ?", (*fields.values(), role))

    def untrained_accepted(self, role: str) -> list[sqlite3.Row]:
        """Accepted sft/preference records of a role that no succeeded run trained on and that are not held out
        yet (the caller applies the hash-bucket part of the eval split)."""
        return self.conn.execute(
            "SELECT r.id, r.content_hash FROM records r JOIN verdicts v ON v.record_id = r.id AND v.current = 1"
            " WHERE r.role = ? AND v.verdict = 'accept' AND r.kind IN ('sft', 'preference')"
            " AND NOT EXISTS (SELECT 1 FROM trained_records t WHERE t.record_id = r.id)"
            " AND NOT EXISTS (SELECT 1 FROM eval_records e WHERE e.record_id = r.id)"
            " AND NOT EXISTS (SELECT 1 FROM forgotten_records f WHERE f.record_id = r.id)", (role,)).fetchall()

    def counts_signature(self) -> tuple[Any, ...]:
        """Changes whenever the new-record counts may have: verdicts written, runs queued or finished."""
        verdicts = self.conn.execute("SELECT MAX(id) FROM verdicts").fetchone()[0]
        runs = self.conn.execute("SELECT COUNT(*), MAX(finished_at) FROM runs").fetchone()
        return verdicts, runs[0], runs[1]

    def mark_trained(self, record_ids: Iterable[int], role: str, run_id: str) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO trained_records(record_id, role, first_run) VALUES (?,?,?)",
                              [(i, role, run_id) for i in record_ids])

    def last_trained_run(self, role: str) -> sqlite3.Row | None:
        marks = ", ".join("?" * len(TRAINED))
        return self.conn.execute(f"SELECT * FROM runs WHERE role = ? AND status IN ({marks})"
                                 " ORDER BY finished_at DESC LIMIT 1", (role, *TRAINED)).fetchone()

    def trained_runs_unmarked(self) -> list[sqlite3.Row]:
        """Succeeded runs whose records are not in trained_records yet (runs from before triggers existed)."""
        marks = ", ".join("?" * len(TRAINED))
        return self.conn.execute(
            f"SELECT * FROM runs r WHERE status IN ({marks}) AND train_count > 0 AND NOT EXISTS"
            " (SELECT 1 FROM trained_records t WHERE t.first_run = r.id)", TRAINED).fetchall()
