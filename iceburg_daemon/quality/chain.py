"""Unjudged sft/preference records -> one current verdict each, filters run cheap to expensive.

Each batch of verdicts and the index rows of the records it accepts commit in one transaction, so a daemon
killed mid-filter restarts with every record judged exactly once (a record without a current verdict is simply
judged again).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable

from iceburg_daemon.config import Config
from iceburg_daemon.logs import get_logger
from iceburg_daemon.quality.dedup import DuplicateIndex
from iceburg_daemon.quality.embed import EmbeddingError, make_embedder
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.heuristics import check_repetition
from iceburg_daemon.quality.signals import NegativeSignals, check_signals
from iceburg_daemon.quality.semantic import SemanticDedup
from iceburg_daemon.quality.structure import check_structure
from iceburg_daemon.quality.text import answer as answer_of
from iceburg_daemon.quality.text import prompt as prompt_of
from iceburg_daemon.store import Store

PRINCIPLE_KEYS = ("principle_name", "one_sentence_summary", "derivation_logic", "framing", "domains",
                  "evidence_pairs", "predictions", "study_design", "implications", "prior_principles")
FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")

Judged = Counter  # (role, verdict, reason) -> count
log = get_logger("iceburgd.filter")


class FilterChain:
    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float]):
        self.cfg = cfg
        self.q = cfg.quality
        self.store = store
        self.clock = clock
        self.index = DuplicateIndex(store, cfg.quality)
        self.negatives = NegativeSignals()
        embedder = make_embedder(cfg) if cfg.quality.semantic else None
        self.semantic = SemanticDedup(store, cfg.index_dir, embedder, cfg.quality.semantic_threshold) \
            if embedder else None

    def run(self, *, should_stop: Callable[[], bool] = lambda: False, limit: int | None = None,
            progress: Callable[[int], None] | None = None) -> Judged:
        """Judge every pending record (or `limit` of them); returns counts per (role, verdict, reason)."""
        judged: Judged = Counter()
        self.negatives.refresh(self.store)
        done = 0
        while not should_stop() and (limit is None or done < limit):
            rows = self.store.pending_records(min(self.q.batch_size, (limit or 1 << 62) - done))
            if not rows:
                break
            for verdict in self._judge_batch(rows):
                judged[(verdict["role"], verdict["verdict"], verdict["reason"] or "")] += 1
            done += len(rows)
            if progress:
                progress(done)
        return judged

    def _judge_batch(self, rows: list[Any]) -> list[dict[str, Any]]:
        generation = self.store.generation()
        verdicts, waiting = [], []  # waiting: passed filters 1-7 and 9, semantic check still to come
        with self.store.transaction():
            for row in rows:
                record = json.loads(row["canonical"])
                scores: dict[str, Any] = {}
                finding, exact, near = self._filters(row, record, scores)
                if finding is None:
                    self.index.remember(row["id"], exact, near)  # later records of this batch see it
                if finding is None and self.semantic is not None:
                    waiting.append((row, record, scores))
                else:
                    verdicts.append(self._verdict(row, record, scores, finding, generation))
            accepted, vectors = self._semantic(waiting, verdicts, generation)
            upto = self.store.last_verdict_id()
        if accepted and self.semantic is not None:
            self.semantic.add(accepted, vectors, upto)
        return verdicts

    def _semantic(self, waiting: list[Any], verdicts: list[dict[str, Any]], generation: int) -> tuple[list[Any], Any]:
        if not waiting:
            return [], None
        assert self.semantic is not None
        items = [(r["id"], r["role"], answer_of(rec)) for r, rec, _ in waiting]
        try:
            try:
                findings, vectors = self.semantic.check(items)
            except EmbeddingError:
                raise
            except Exception as exc:  # noqa: BLE001 - an unreadable index is derived data: rebuild it, then retry
                log.warning("semantic_index_unreadable", error=f"{type(exc).__name__}: {exc}")
                self.semantic.rebuild()
                findings, vectors = self.semantic.check(items)
        except EmbeddingError as exc:  # e.g. Ollama is down: judge without this filter rather than stall
            log.warning("semantic_unavailable", error=str(exc))
            findings, vectors = [None] * len(waiting), None
            for _, _, scores in waiting:
                scores["semantic"] = "unavailable"
        accepted, keep = [], []
        for i, ((row, record, scores), finding) in enumerate(zip(waiting, findings)):
            if finding is not None:
                scores["semantic_similarity"] = finding.score
            verdicts.append(self._verdict(row, record, scores, finding, generation))
            if finding is None and vectors is not None:
                accepted.append((row["id"], row["role"]))
                keep.append(i)
        return accepted, (vectors[keep] if vectors is not None else None)

    def _verdict(self, row: Any, record: dict[str, Any], scores: dict[str, Any], finding: Finding | None,
                 generation: int) -> dict[str, Any]:
        verdict = {
            "record_id": row["id"], "role": row["role"], "verdict": "reject" if finding else "accept",
            "filter": finding.filter if finding else None, "reason": finding.reason if finding else None,
            "detail": finding.detail if finding else None, "score": finding.score if finding else None,
            "duplicate_of": finding.duplicate_of if finding else None,
            "cluster_id": finding.cluster_id if finding else None,
            "redacted": 1 if record.get("redactions") else 0, "scores": json.dumps(scores, sort_keys=True),
            "generation": generation, "created_at": self.clock(),
        }
        self.store.add_verdict(verdict)
        return verdict

    def _filters(self, row: Any, record: dict[str, Any], scores: dict[str, Any]
                 ) -> tuple[Finding | None, str | None, Any]:
        q, role_cfg = self.q, self.cfg.role(row["role"])
        prompt, answer = prompt_of(record), answer_of(record)
        found = check_structure(record, q)
        if found:
            return found, None, None
        if q.signals:
            found = check_signals(record, prompt, answer, role_cfg.min_quality_score, self.negatives)
            if found:
                return found, None, None
        exact = near = None
        if q.exact_dedup:
            found, exact = self.index.check_exact(prompt, answer)
            if found:
                return found, None, None
        if q.near_dedup:
            found, near, scores["near_similarity"] = self.index.check_near(answer)
            if found:
                return found, None, None
        if q.template:
            found, scores["template_similarity"] = self.index.check_template(row["id"], prompt, answer)
            if found:
                return found, None, None
        if q.repetition:
            found, rep = check_repetition(answer, q)
            scores.update({k: round(v, 4) for k, v in rep.items()})
            if found:
                return found, None, None
        if record.get("redactions"):
            scores["redactions"] = record["redactions"]
            if q.secrets == "reject":
                kinds = ", ".join(sorted(record["redactions"]))
                return Finding("secrets", "secret", f"redacted at ingest: {kinds}"), None, None
        if q.role_checks and role_cfg.require_json:  # 9 runs before 8: semantic works a batch at a time
            found = check_principle_json(answer)
            if found:
                return found, None, None
        return None, exact, near


def check_principle_json(answer: str) -> Finding | None:
    """ICEBURG's Oracle must answer with a principle object holding every documented key."""
    try:
        data = json.loads(FENCE.sub("", answer))
    except ValueError:
        return Finding("role", "not_json", "the answer is not JSON")
    if not isinstance(data, dict):
        return Finding("role", "not_json", "the answer is not a JSON object")
    missing = [k for k in PRINCIPLE_KEYS if k not in data]
    if missing:
        return Finding("role", "missing_keys", "missing " + ", ".join(missing), score=len(missing))
    return None
