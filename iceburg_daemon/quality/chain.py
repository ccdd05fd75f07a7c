"""Unjudged sft/preference records -> one current verdict each, filters run cheap to expensive.

Each batch of verdicts and the index rows of the records it accepts commit in one short transaction (judging
and embedding happen before it, with no lock held), so a daemon killed mid-filter restarts with every record
judged exactly once (a record without a current verdict is simply judged again).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from iceburg_daemon.config import Config
from iceburg_daemon.fsutil import is_disk_full
from iceburg_daemon.logs import get_logger
from iceburg_daemon.quality.dedup import DuplicateIndex
from iceburg_daemon.quality.embed import EmbeddingError, HashEmbedder, make_embedder
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.features import Features, Row, extract
from iceburg_daemon.quality.signals import NegativeSignals, check_signals
from iceburg_daemon.quality.semantic import SemanticDedup
from iceburg_daemon.quality.workers import FeatureWorkers, worker_count
from iceburg_daemon.store import Store

PRINCIPLE_KEYS = ("principle_name", "one_sentence_summary", "derivation_logic", "framing", "domains",
                  "evidence_pairs", "predictions", "study_design", "implications", "prior_principles")
FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")

Judged = Counter  # (role, verdict, reason) -> count
Batch = tuple[int, list[Row], Callable[[], list[Features]]]  # generation, rows, their features (waits for them)
log = get_logger("iceburgd.filter")
EMBED_BACKOFF_SECONDS, EMBED_BACKOFF_MAX_SECONDS = 30.0, 600.0
_SCORES = json.JSONEncoder(sort_keys=True)  # built once: json.dumps(sort_keys=True) builds one per call


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
        # Every record up to this id has a current verdict of this generation: the next search starts after it
        # (record ids only grow, and only a refilter, which bumps the generation, takes verdicts away).
        self._judged_upto = (0, 0)  # (generation, record id)
        self.hash_dim = embedder.dim if isinstance(embedder, HashEmbedder) else 0  # the workers embed then
        self.workers = FeatureWorkers(worker_count(cfg.quality.workers), self.hash_dim)
        self._ahead: Batch | None = None  # the next batch, its features being computed while one is judged
        self._should_stop: Callable[[], bool] = lambda: False
        self._embed_failures, self._embed_retry_at = 0, 0.0  # back-off of a failing embedder (monotonic time)

    def run(self, *, should_stop: Callable[[], bool] = lambda: False, limit: int | None = None,
            progress: Callable[[int], None] | None = None) -> Judged:
        """Judge every pending record (or `limit` of them); returns counts per (role, verdict, reason)."""
        judged: Judged = Counter()
        self._should_stop = should_stop  # also polled by an index rebuild, between its batches
        if self.q.mode == "off":
            return self._accept_all(should_stop, limit, progress)
        self.negatives.refresh(self.store)
        done = 0
        while not should_stop() and (limit is None or done < limit):
            generation = self.store.generation()
            batch, self._ahead = self._ahead, None
            if batch is None or batch[0] != generation:
                batch = self._fetch(generation, self._judged_upto[1] if self._judged_upto[0] == generation else 0)
            if batch is None:
                self.workers.close()  # the backlog is drained: no idle worker processes
                break
            _, rows, features = batch
            if len(rows) == self.q.batch_size:  # more is likely waiting: compute its features meanwhile
                self._ahead = self._fetch(generation, rows[-1][0], ahead=True)
            n = len(rows) if limit is None else min(len(rows), limit - done)
            if n < len(rows):
                self._ahead = None  # it starts after records this run leaves unjudged
            try:
                verdicts = self._judge_batch(generation, features()[:n])
            except Exception as exc:  # noqa: BLE001 - one bad record must not stall every later verdict
                if is_disk_full(exc):
                    raise  # no record's fault: the batch is judged again once there is space
                log.warning("filter_batch_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}", records=n)
                verdicts = self._judge_one_by_one(generation, rows[:n])
            for verdict in verdicts:
                judged[(verdict["role"], verdict["verdict"], verdict["reason"] or "")] += 1
            self._judged_upto = (generation, rows[n - 1][0])
            done += n
            if progress:
                progress(done)
        return judged

    def _judge_one_by_one(self, generation: int, rows: list[Row]) -> list[dict[str, Any]]:
        """After a batch failed: each record on its own (the second try); one that fails again is rejected with
        reason filter_error and the exception named, so it is visible in `data stats` and the rest go on."""
        self.index = DuplicateIndex(self.store, self.q)  # in-memory state of the failed batch is dropped
        self._ahead = None
        out = []
        for row in rows:
            try:
                out += self._judge_batch(generation, extract([row], self.q, self.hash_dim))
            except Exception as exc:  # noqa: BLE001 - the record's verdict says why
                if is_disk_full(exc):
                    raise
                self.index = DuplicateIndex(self.store, self.q)
                finding = Finding("error", "filter_error", f"{type(exc).__name__}: {str(exc)[:300]}")
                verdict = _verdict_row(row[0], row[1], _parsed(row[2]), {}, finding, generation, self.clock())
                with self.store.transaction():
                    self.store.add_verdicts([verdict])
                log.warning("filter_error", record=row[0], error=f"{type(exc).__name__}: {str(exc)[:200]}")
                out.append(verdict)
        return out

    def _accept_all(self, should_stop: Callable[[], bool], limit: int | None,
                    progress: Callable[[int], None] | None) -> Judged:
        """[quality] mode = "off": every pending record is accepted unjudged, with reason filter_off (secrets
        are still redacted at ingest). For comparisons such as the flywheel benchmark; status warns."""
        judged: Judged = Counter()
        done = 0
        while not should_stop() and (limit is None or done < limit):
            generation = self.store.generation()
            size = self.q.batch_size if limit is None else min(self.q.batch_size, limit - done)
            rows = self.store.pending_records(size, self._judged_upto[1] if self._judged_upto[0] == generation else 0)
            if not rows:
                break
            now = self.clock()
            verdicts = [{**_verdict_row(r["id"], r["role"], json.loads(r["canonical"]), {}, None, generation, now),
                         "filter": "off", "reason": "filter_off", "detail": '[quality] mode = "off"'} for r in rows]
            with self.store.transaction():
                self.store.add_verdicts(verdicts)
            for v in verdicts:
                judged[(v["role"], "accept", "filter_off")] += 1
            self._judged_upto = (generation, rows[-1]["id"])
            done += len(rows)
            if progress:
                progress(done)
        return judged

    def close(self) -> None:
        self._ahead = None
        self.workers.close()
        if self.semantic is not None:
            self.semantic.save()  # what was indexed since the last save need not be indexed again

    def _fetch(self, generation: int, after: int, *, ahead: bool = False) -> Batch | None:
        """The next pending rows after a record id, and (a way to wait for) their features: computed by the
        workers for a batch fetched ahead, here otherwise."""
        newest = self.store.last_record_id()  # read first: a record stored after this has a larger id
        rows = [(r["id"], r["role"], r["canonical"]) for r in self.store.pending_records(self.q.batch_size, after)]
        if not rows:
            if not ahead:
                self._judged_upto = (generation, max(after, newest))  # signals up to here need no more scans
            return None
        if ahead:
            return generation, rows, self.workers.submit(rows, self.q)
        feats = extract(rows, self.q, self.hash_dim)
        return generation, rows, lambda: feats

    def _judge_batch(self, generation: int, feats: list[Features]) -> list[dict[str, Any]]:
        """Judge in memory and embed with no lock held (an embedder may wait on the network for a minute, an
        index rebuild longer), then write the verdicts and index rows in one short transaction. Only this chain
        writes verdicts and index rows, so what `load` read still holds then, unless a refilter started a new
        generation meanwhile: then the batch is dropped unwritten and judged again."""
        verdicts, waiting = [], []  # waiting: passed filters 1-7 and 9, semantic check still to come
        self.index.load(generation, (f.exact for f in feats if f.exact),
                        [(f.record_id, f.near) for f in feats if f.near is not None],
                        [(f.record_id, f.template) for f in feats if f.template is not None])
        for f in feats:
            scores: dict[str, Any] = {}
            finding = self._filters(f, scores)
            if finding is not None and finding.filter != "template" and f.template is not None:
                self.index.unkeep_template(f.record_id)  # rejected after it took a template slot
            if finding is None:
                self.index.remember(f.record_id, f.exact, f.near)  # later records of this batch see it
            if finding is None and self.semantic is not None:
                waiting.append((f, scores))
            else:
                verdicts.append(self._verdict(f, scores, finding, generation))
        accepted, vectors = self._semantic(waiting, verdicts, generation)
        for v in verdicts:
            if v["filter"] == "semantic":
                self.index.unkeep_template(v["record_id"])
        with self.store.transaction():
            if self.store.generation() != generation:
                return []
            self.index.flush()
            self.store.add_verdicts(verdicts)
            upto = self.store.last_verdict_id()
        self.index.committed()
        if accepted and self.semantic is not None:
            self.semantic.add(accepted, vectors, upto)
        return verdicts

    def _semantic(self, waiting: list[Any], verdicts: list[dict[str, Any]], generation: int) -> tuple[list[Any], Any]:
        if not waiting:
            return [], None
        assert self.semantic is not None
        items = [(f.record_id, f.role, f.answer) for f, _ in waiting]
        given = np.stack([f.vector for f, _ in waiting]) if all(f.vector is not None for f, _ in waiting) else None
        try:
            if time.monotonic() < self._embed_retry_at:
                raise EmbeddingError("backing off")  # a slow or broken embedder is not asked on every batch
            try:
                findings, vectors = self.semantic.check(items, given)
            except EmbeddingError:
                raise
            except Exception as exc:  # noqa: BLE001 - an unreadable index is derived data: rebuild it, then retry
                log.warning("semantic_index_unreadable", error=f"{type(exc).__name__}: {exc}")
                self.semantic.rebuild(on_batch=self._should_stop)
                findings, vectors = self.semantic.check(items, given)
            self._embed_failures = 0
        except EmbeddingError as exc:  # e.g. Ollama is down: judge without this filter rather than stall
            if time.monotonic() >= self._embed_retry_at:
                self._embed_failures += 1
                delay = min(EMBED_BACKOFF_SECONDS * 2 ** (self._embed_failures - 1), EMBED_BACKOFF_MAX_SECONDS)
                self._embed_retry_at = time.monotonic() + delay
                log.warning("semantic_unavailable", error=str(exc), failures=self._embed_failures, retry_in_s=delay)
            findings, vectors = [None] * len(waiting), None
            for _, scores in waiting:
                scores["semantic"] = "unavailable"
        accepted, keep = [], []
        for i, ((f, scores), finding) in enumerate(zip(waiting, findings)):
            if finding is not None:
                scores["semantic_similarity"] = finding.score
            verdicts.append(self._verdict(f, scores, finding, generation))
            if finding is None and vectors is not None:
                accepted.append((f.record_id, f.role))
                keep.append(i)
        return accepted, (vectors[keep] if vectors is not None else None)

    def _verdict(self, f: Features, scores: dict[str, Any], finding: Finding | None, generation: int
                 ) -> dict[str, Any]:
        return _verdict_row(f.record_id, f.role, f.record, scores, finding, generation, self.clock())

    def _filters(self, f: Features, scores: dict[str, Any]) -> Finding | None:
        q, role_cfg, record = self.q, self.cfg.role(f.role), f.record
        if f.structure:
            return f.structure
        if q.signals:
            found = check_signals(record, f.prompt, f.answer, role_cfg.min_quality_score, self.negatives)
            if found:
                return found
        if f.exact is not None:
            found = self.index.check_exact(f.exact)
            if found:
                return found
        if f.near is not None:
            found, scores["near_similarity"] = self.index.check_near(f.record_id, f.near)
            if found:
                return found
        if f.template is not None:
            found, scores["template_similarity"] = self.index.check_template(f.record_id, f.template)
            if found:
                return found
        if f.repetition is not None:
            found, rep = f.repetition
            scores.update(rep)
            if found:
                return found
        if record.get("redactions"):
            scores["redactions"] = record["redactions"]
            if q.secrets == "reject":
                kinds = ", ".join(sorted(record["redactions"]))
                return Finding("secrets", "secret", f"redacted at ingest: {kinds}")
        if q.role_checks and role_cfg.require_json:  # 9 runs before 8: semantic works a batch at a time
            return check_principle_json(f.answer)
        return None


def _parsed(canonical: str) -> dict[str, Any]:
    try:
        return dict(json.loads(canonical))
    except (ValueError, TypeError):
        return {}


def _verdict_row(record_id: int, role: str, record: dict[str, Any], scores: dict[str, Any],
                 finding: Finding | None, generation: int, now: float) -> dict[str, Any]:
    return {
        "record_id": record_id, "role": role, "verdict": "reject" if finding else "accept",
        "filter": finding.filter if finding else None, "reason": finding.reason if finding else None,
        "detail": finding.detail if finding else None, "score": finding.score if finding else None,
        "duplicate_of": finding.duplicate_of if finding else None,
        "cluster_id": finding.cluster_id if finding else None,
        "redacted": 1 if record.get("redactions") else 0, "scores": _SCORES.encode(scores),
        "generation": generation, "created_at": now,
    }


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
