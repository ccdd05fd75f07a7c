"""Queries of the truth filter: pending records, verdicts, exact keys, LSH indexes, template clusters, stats."""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable

import numpy as np

VERDICT_COLUMNS = ("record_id", "verdict", "filter", "reason", "detail", "score", "duplicate_of", "cluster_id",
                   "redacted", "scores", "generation", "created_at")


class VerdictQueries:
    conn: sqlite3.Connection

    def pending_records(self, limit: int, after_id: int = 0) -> list[sqlite3.Row]:
        """sft/preference records without a current verdict, oldest first."""
        return self.conn.execute(
            "SELECT r.* FROM records r WHERE r.kind IN ('sft', 'preference') AND r.id > ? AND NOT EXISTS"
            " (SELECT 1 FROM verdicts v WHERE v.record_id = r.id AND v.current = 1) ORDER BY r.id LIMIT ?",
            (after_id, limit),
        ).fetchall()

    def add_verdict(self, row: dict[str, Any]) -> None:
        self.conn.execute(
            f"INSERT INTO verdicts({', '.join(VERDICT_COLUMNS)}) VALUES ({', '.join('?' * len(VERDICT_COLUMNS))})",
            tuple(row[c] for c in VERDICT_COLUMNS),  # extra keys (e.g. role, for counting) are not stored
        )

    def current_verdict(self, record_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM verdicts WHERE record_id = ? AND current = 1", (record_id,)).fetchone()

    def verdict_history(self, record_id: int) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM verdicts WHERE record_id = ? ORDER BY id", (record_id,)).fetchall()

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'filter_generation'").fetchone()
        return int(row[0]) if row else 1

    def start_new_generation(self) -> int:
        """`data refilter`: every current verdict becomes history and the derived indexes are emptied."""
        new = self.generation() + 1
        self.conn.execute("UPDATE verdicts SET current = 0 WHERE current = 1")
        for table in ("exact_keys", "lsh_sigs", "lsh_bands", "template_clusters"):
            self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute("INSERT INTO meta(key, value) VALUES ('filter_generation', ?) ON CONFLICT(key) DO UPDATE"
                          " SET value = excluded.value", (str(new),))
        return new

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value ="
                          " excluded.value", (key, value))

    def accepted_after(self, verdict_id: int, limit: int) -> list[sqlite3.Row]:
        """Current accepted verdicts after an id, with their records (for the semantic index)."""
        return self.conn.execute(
            "SELECT v.id AS verdict_id, r.id AS record_id, r.role, r.canonical FROM verdicts v JOIN records r ON"
            " r.id = v.record_id WHERE v.current = 1 AND v.verdict = 'accept' AND v.id > ? ORDER BY v.id LIMIT ?",
            (verdict_id, limit),
        ).fetchall()

    def last_verdict_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0])

    # ---- exact keys -------------------------------------------------------------------------------------------
    def exact_owner(self, key: str) -> int | None:
        row = self.conn.execute("SELECT record_id FROM exact_keys WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def add_exact_key(self, key: str, record_id: int) -> None:
        self.conn.execute("INSERT OR IGNORE INTO exact_keys(key, record_id) VALUES (?, ?)", (key, record_id))

    # ---- LSH indexes ------------------------------------------------------------------------------------------
    def lsh_candidates(self, idx: int, keys: Iterable[int]) -> list[tuple[int, int | None, np.ndarray]]:
        """(record_id, cluster_id, signature) of every indexed record sharing at least one band key."""
        keys = list(keys)
        rows = self.conn.execute(
            f"SELECT s.record_id, s.cluster_id, s.sig FROM lsh_sigs s WHERE s.idx = ? AND s.record_id IN"
            f" (SELECT record_id FROM lsh_bands WHERE idx = ? AND key IN ({', '.join('?' * len(keys))}))",
            (idx, idx, *keys),
        ).fetchall()
        return [(r[0], r[1], np.frombuffer(r[2], dtype=np.uint32).astype(np.uint64)) for r in rows]

    def lsh_add(self, idx: int, record_id: int, keys: Iterable[int], sig: np.ndarray, cluster_id: int | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO lsh_sigs(idx, record_id, cluster_id, sig) VALUES (?, ?, ?, ?)",
                          (idx, record_id, cluster_id, sig.astype(np.uint32).tobytes()))
        self.conn.executemany("INSERT INTO lsh_bands(idx, key, record_id) VALUES (?, ?, ?)",
                              [(idx, k, record_id) for k in keys])

    # ---- template clusters ------------------------------------------------------------------------------------
    def new_cluster(self) -> int:
        cur = self.conn.execute("INSERT INTO template_clusters(size, kept) VALUES (1, 1)")
        return int(cur.lastrowid or 0)

    def cluster(self, cluster_id: int) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM template_clusters WHERE cluster_id = ?", (cluster_id,)).fetchone()

    def grow_cluster(self, cluster_id: int, *, kept: bool) -> None:
        self.conn.execute("UPDATE template_clusters SET size = size + 1, kept = kept + ? WHERE cluster_id = ?",
                          (1 if kept else 0, cluster_id))

    # ---- signals the filter consults --------------------------------------------------------------------------
    def signal_records(self, after_id: int) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT id, role, canonical FROM records WHERE kind = 'signal' AND id > ? ORDER BY id",
                                 (after_id,)).fetchall()

    # ---- reads for `data stats`, status and exports ----------------------------------------------------------
    def verdict_counts(self, role: str | None = None) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT r.role, v.verdict, COALESCE(v.reason, '') AS reason, COUNT(*) AS n FROM verdicts v"
            " JOIN records r ON r.id = v.record_id WHERE v.current = 1 AND (? IS NULL OR r.role = ?)"
            " GROUP BY r.role, v.verdict, v.reason ORDER BY r.role, v.verdict, n DESC",
            (role, role),
        ).fetchall()

    def unfiltered_count(self) -> int:
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM records r WHERE r.kind IN ('sft', 'preference') AND NOT EXISTS"
            " (SELECT 1 FROM verdicts v WHERE v.record_id = r.id AND v.current = 1)").fetchone()[0])

    def records_with_verdict(self, role: str, verdict: str | None) -> Iterable[sqlite3.Row]:
        return self.conn.execute(
            "SELECT r.*, v.verdict, v.reason FROM records r JOIN verdicts v ON v.record_id = r.id AND v.current = 1"
            " WHERE r.role = ? AND (? IS NULL OR v.verdict = ?) ORDER BY r.id",
            (role, verdict, verdict),
        )

    def record(self, record_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
