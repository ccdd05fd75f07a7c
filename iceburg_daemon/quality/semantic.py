"""Filter 8, semantic duplicates: a batch of answers -> Findings, by cosine similarity to the role's accepted
answers in the daemon's vector index and to each other within the batch.

The index is derived data held in memory: vectors are added after their verdicts commit, the index knows the
verdict id it is complete up to, and it is saved every SAVE_EVERY_SECONDS and when the filter closes. After a
crash the accepted records past the last save are indexed again from the store; a missing or corrupted copy is
rebuilt from the store whole.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import numpy as np

from iceburg_daemon.logs import get_logger
from iceburg_daemon.quality.embed import Embedder
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import answer as answer_of
from iceburg_daemon.vector_index import VectorIndex

log = get_logger("iceburgd.semantic")
SAVE_EVERY_SECONDS = 600.0  # at most this much indexing is repeated after a crash (hash: ~1 s per 10k records)


class SemanticDedup:
    def __init__(self, store: Any, index_path: Any, embedder: Embedder, threshold: float):
        self.store = store
        self.embedder = embedder
        self.threshold = threshold
        self.index_path = index_path
        self.index: VectorIndex | None = None
        self._saved_at = time.monotonic()

    def _index(self, dim: int) -> VectorIndex:
        """The index of this model and dimension, read from its last save when first needed (an Ollama model
        tells its dimension only with its first answer)."""
        if self.index is None or self.index.dim != dim:
            index = VectorIndex(self.index_path, self.embedder.model, dim)
            index.load()
            self.index = index
        return self.index

    def check(self, items: list[tuple[int, str, str]], vectors: np.ndarray | None = None
              ) -> tuple[list[Finding | None], np.ndarray]:
        """items: (record_id, role, answer). Returns a Finding or None per item, and the vectors (embedded here
        unless given: the feature workers compute hash vectors beside the other features)."""
        if vectors is None:
            vectors = self.embedder.embed([text for _, _, text in items])
        index = self._index(vectors.shape[1])
        findings: list[Finding | None] = [None] * len(items)
        for role in {role for _, role, _ in items}:
            rows = [i for i, (_, r, _) in enumerate(items) if r == role]
            for i, hit in zip(rows, index.nearest(role, vectors[rows])):
                if hit and hit[0] != items[i][0] and hit[1] >= self.threshold:
                    findings[i] = Finding("semantic", "semantic_duplicate", f"cosine {hit[1]:.3f} to record {hit[0]}",
                                          score=round(hit[1], 4), duplicate_of=hit[0])
            kept: list[int] = []  # earlier answers of this batch that stay
            for i in rows:
                if findings[i] is None:
                    if kept:
                        sims = vectors[kept] @ vectors[i]
                        best = int(sims.argmax())
                        if sims[best] >= self.threshold:
                            other = items[kept[best]][0]
                            findings[i] = Finding("semantic", "semantic_duplicate",
                                                  f"cosine {sims[best]:.3f} to record {other}",
                                                  score=round(float(sims[best]), 4), duplicate_of=other)
                            continue
                    kept.append(i)
        return findings, vectors

    def add(self, accepted: list[tuple[int, str]], vectors: np.ndarray, upto_verdict: int) -> None:
        """After the verdicts committed: index the accepted answers; the index is now complete up to
        upto_verdict. Saved when the last save is SAVE_EVERY_SECONDS old."""
        index = self._index(vectors.shape[1]) if len(vectors) else self.index
        if index is None:
            return
        for role in {role for _, role in accepted}:
            rows = [i for i, (_, r) in enumerate(accepted) if r == role]
            index.add(role, [accepted[i][0] for i in rows], vectors[rows])
        index.upto = max(index.upto, upto_verdict)
        if time.monotonic() - self._saved_at >= SAVE_EVERY_SECONDS:
            self.save()

    def save(self) -> None:
        if self.index is not None:
            started = time.monotonic()
            self.index.save()
            self._saved_at = time.monotonic()
            log.debug("semantic_index_saved", upto=self.index.upto, seconds=round(self._saved_at - started, 2))

    def verify(self) -> None:
        """Read the saved index of the embedder's known dimension; raises VectorIndexError when it is corrupted.
        (Ollama's dimension is known only after its first answer: that index is read when first used.)"""
        if self.embedder.dim:
            self._index(self.embedder.dim)

    def catch_up(self, batch: int = 500, on_batch: Callable[[], object] = lambda: None) -> int:
        """Index accepted records whose verdicts are past what the index holds (after a crash, or a fresh
        index). `on_batch` runs after each batch (the daemon beats its heartbeat there)."""
        done = 0
        while True:
            on_batch()
            if self.index is None and self.embedder.dim:
                self._index(self.embedder.dim)
            rows = self.store.accepted_after(self.index.upto if self.index is not None else 0, batch)
            if not rows:
                if done:
                    self.save()
                return done
            vectors = self.embedder.embed([answer_of(json.loads(r["canonical"])) for r in rows])
            upto = self._index(vectors.shape[1]).upto  # known only now for an Ollama model: its save is read
            new = [i for i, r in enumerate(rows) if r["verdict_id"] > upto]
            self.add([(rows[i]["record_id"], rows[i]["role"]) for i in new], vectors[new], rows[-1]["verdict_id"])
            done += len(new)

    def rebuild(self, on_batch: Callable[[], object] = lambda: None) -> int:
        """Drop the index and re-embed every accepted record from the store."""
        VectorIndex(self.index_path, self.embedder.model, 0).destroy()
        self.index = None
        count = self.catch_up(on_batch=on_batch)
        if self.index is None and self.embedder.dim:  # nothing accepted: an empty index, saved as such
            self._index(self.embedder.dim).save()
        log.info("semantic_index_rebuilt", records=count)
        return count
