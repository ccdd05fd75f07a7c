"""Queries of the truth filter: pending records, verdicts, exact keys, LSH indexes, template clusters, stats."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

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

    def last_record_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0])

    def add_verdicts(self, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(
            f"INSERT INTO verdicts({', '.join(VERDICT_COLUMNS)}) VALUES ({', '.join('?' * len(VERDICT_COLUMNS))})",
            [tuple(row[c] for c in VERDICT_COLUMNS) for row in rows],  # extra keys (e.g. role) are not stored
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
        for table in ("exact_keys", "lsh_sigs", "template_clusters"):
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
    def exact_owners(self, keys: Iterable[str]) -> dict[str, int]:
        return {k: r for k, r in self._in("SELECT key, record_id FROM exact_keys WHERE key IN ({})", (), keys)}

    def add_exact_keys(self, rows: list[tuple[str, int]]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO exact_keys(key, record_id) VALUES (?, ?)", rows)

    # ---- LSH indexes ------------------------------------------------------------------------------------------
    def lsh_signatures(self, idx: int, record_ids: Iterable[int]) -> dict[int, tuple[int | None, np.ndarray]]:
        """record id -> (template cluster id, MinHash signature)."""
        rows = self._in("SELECT record_id, cluster_id, sig FROM lsh_sigs WHERE idx = ? AND record_id IN ({})", (idx,),
                        record_ids)
        return {r[0]: (r[1], np.frombuffer(r[2], dtype=np.uint32).astype(np.uint64)) for r in rows}

    def lsh_signature_chunks(self, idx: int, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored signature of one index: (record ids, signatures n x perms), a chunk at a time."""
        cur = self.conn.execute("SELECT record_id, sig FROM lsh_sigs WHERE idx = ? ORDER BY record_id", (idx,))
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            sigs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint32).reshape(len(rows), -1)
            yield ids, sigs.astype(np.uint64)

    def lsh_max_record_id(self, idx: int) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(record_id), 0) FROM lsh_sigs WHERE idx = ?",
                                     (idx,)).fetchone()[0])

    def add_lsh_signatures(self, rows: list[tuple[int, int, int | None, bytes]]) -> None:
        """(idx, record id, cluster id, uint32 signature bytes)."""
        self.conn.executemany("INSERT OR REPLACE INTO lsh_sigs(idx, record_id, cluster_id, sig) VALUES (?, ?, ?, ?)",
                              rows)

    # ---- template clusters ------------------------------------------------------------------------------------
    def clusters(self, cluster_ids: Iterable[int]) -> dict[int, list[int]]:
        """cluster id -> [size, kept]."""
        rows = self._in("SELECT cluster_id, size, kept FROM template_clusters WHERE cluster_id IN ({})", (),
                        cluster_ids)
        return {r[0]: [r[1], r[2]] for r in rows}

    def max_cluster_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(cluster_id), 0) FROM template_clusters").fetchone()[0])

    def put_clusters(self, rows: list[tuple[int, int, int]]) -> None:
        """(cluster id, size, kept): new clusters and new sizes of existing ones."""
        self.conn.executemany("INSERT INTO template_clusters(cluster_id, size, kept) VALUES (?, ?, ?) ON CONFLICT"
                              "(cluster_id) DO UPDATE SET size = excluded.size, kept = excluded.kept", rows)

    def _in(self, sql: str, params: tuple[Any, ...], values: Iterable[Any], chunk: int = 900) -> list[Any]:
        """Run sql with its `IN ({})` filled by values, a chunk at a time (SQLite caps bound parameters)."""
        values = list(values)
        rows: list[Any] = []
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            rows += self.conn.execute(sql.format(", ".join("?" * len(part))), (*params, *part)).fetchall()
        return rows

    # ---- signals the filter consults --------------------------------------------------------------------------
    def signal_records(self, after_id: int, upto_id: int) -> list[sqlite3.Row]:
        """Signal records with after_id < id <= upto_id (a rowid range: only the new rows are read)."""
        return self.conn.execute("SELECT id, role, canonical FROM records WHERE id > ? AND id <= ? AND kind = 'signal'"
                                 " ORDER BY id", (after_id, upto_id)).fetchall()

    def max_record_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0])

    # ---- reads for `data stats`, status and exports ----------------------------------------------------------
    def verdict_counts(self, role: str | None = None) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT r.role, v.verdict, COALESCE(v.reason, '') AS reason, COUNT(*) AS n FROM verdicts v"
            " JOIN records r ON r.id = v.record_id WHERE v.current = 1 AND (? IS NULL OR r.role = ?)"
            " GROUP BY r.role, v.verdict, v.reason ORDER BY r.role, v.verdict, n DESC",
            (role, role),
        ).fetchall()

    def verdicts_by_kind(self) -> dict[tuple[str, str], dict[str, int]]:
        """(role, kind) -> {"accept": n, "reject": n} over current verdicts."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for row in self.conn.execute("SELECT r.role, r.kind, v.verdict, COUNT(*) AS n FROM verdicts v JOIN records r"
                                     " ON r.id = v.record_id WHERE v.current = 1 GROUP BY r.role, r.kind, v.verdict"):
            out.setdefault((row["role"], row["kind"]), {})[row["verdict"]] = row["n"]
        return out

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
