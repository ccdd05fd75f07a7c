"""Filter 8, semantic duplicates: a batch of answers -> Findings, by cosine similarity to the role's accepted
answers in the daemon's vector index and to each other within the batch.

The index is derived data: vectors are added after their verdicts commit, a watermark in the store says how far
that got, and a missing or corrupted index is rebuilt from the store's accepted records.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from iceburg_daemon.chroma import VectorIndex
from iceburg_daemon.logs import get_logger
from iceburg_daemon.quality.embed import Embedder
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import answer as answer_of

log = get_logger("iceburgd.semantic")
WATERMARK = "semantic_indexed_verdict_id"


class SemanticDedup:
    def __init__(self, store: Any, index_path: Any, embedder: Embedder, threshold: float):
        self.store = store
        self.embedder = embedder
        self.threshold = threshold
        self.index_path = index_path
        self.index: VectorIndex | None = None

    def _index(self, dim: int) -> VectorIndex:
        if self.index is None or self.index.dim != dim:
            self.index = VectorIndex(self.index_path, self.embedder.model, dim)
        return self.index

    def check(self, items: list[tuple[int, str, str]]) -> tuple[list[Finding | None], np.ndarray]:
        """items: (record_id, role, answer). Returns a Finding or None per item, and the vectors."""
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
        """After the verdicts committed: index the accepted answers, then move the watermark."""
        index = self._index(vectors.shape[1]) if len(vectors) else self.index
        for role in {role for _, role in accepted}:
            rows = [i for i, (_, r) in enumerate(accepted) if r == role]
            assert index is not None
            index.add(role, [accepted[i][0] for i in rows], vectors[rows])
        with self.store.transaction():
            self.store.set_meta(WATERMARK, str(upto_verdict))

    def verify(self) -> None:
        """Open the index and read every collection; raises when it is corrupted."""
        if self.index_path.exists():
            VectorIndex(self.index_path, self.embedder.model, 0).verify()

    def catch_up(self, batch: int = 500, on_batch: Callable[[], object] = lambda: None) -> int:
        """Index accepted records whose verdicts are past the watermark (a crash between commit and add).
        `on_batch` runs after each batch (the daemon beats its heartbeat there)."""
        done = 0
        while True:
            on_batch()
            rows = self.store.accepted_after(int(self.store.meta(WATERMARK) or 0), batch)
            if not rows:
                return done
            texts = [answer_of(json.loads(r["canonical"])) for r in rows]
            vectors = self.embedder.embed(texts)
            self.add([(r["record_id"], r["role"]) for r in rows], vectors, rows[-1]["verdict_id"])
            done += len(rows)

    def rebuild(self, on_batch: Callable[[], object] = lambda: None) -> int:
        """Drop the index and re-embed every accepted record from the store."""
        VectorIndex(self.index_path, self.embedder.model, 0).destroy()
        self.index = None
        with self.store.transaction():
            self.store.set_meta(WATERMARK, "0")
        count = self.catch_up(on_batch=on_batch)
        log.info("semantic_index_rebuilt", records=count)
        return count
