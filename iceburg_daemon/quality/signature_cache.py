"""Record id -> (template cluster id, MinHash signature) of the stored records the LSH lookups touch, kept across
batches: a template's members are candidates of every later member, and reading their signatures again for each
batch (with one numpy array per candidate to stack) was most of the template filter's cost. Rows sit in one
matrix, so a record's candidates are compared in one gather. Bounded: emptied when full (what is hot comes back
with the next batch's reads)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

MAX_ROWS = 50_000  # 50k template signatures (32 x uint32) are 6.4 MB


class SignatureCache:
    def __init__(self, perms: int):
        self.perms = perms
        self.row: dict[int, int] = {}  # record id -> row of sigs/clusters
        self.sigs = np.empty((1024, perms), np.uint32)
        self.clusters = np.empty(1024, np.int64)  # -1: no cluster (the near index)

    def __len__(self) -> int:
        return len(self.row)

    def missing(self, record_ids: Iterable[int]) -> list[int]:
        """Of these ids, those not held (the cache is emptied first when it is full)."""
        if len(self.row) > MAX_ROWS:
            self.row.clear()
        return [r for r in record_ids if r not in self.row]

    def put(self, record_id: int, cluster_id: int | None, sig: np.ndarray) -> None:
        at = self.row.setdefault(record_id, len(self.row))
        if at >= len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.empty_like(self.sigs)])
            self.clusters = np.concatenate([self.clusters, np.empty_like(self.clusters)])
        self.sigs[at] = sig
        self.clusters[at] = -1 if cluster_id is None else cluster_id

    def cluster(self, record_id: int) -> int | None:
        at = self.row.get(record_id)
        return None if at is None or self.clusters[at] < 0 else int(self.clusters[at])

    def best(self, candidates: list[int], sig: np.ndarray) -> tuple[int | None, float]:
        """The candidate (sorted ids) whose signature agrees most with sig (the lowest id among equals), and the
        share of agreeing values: the estimated Jaccard similarity."""
        rows = np.fromiter(map(self.row.__getitem__, candidates), np.int64, len(candidates))
        sims = (self.sigs[rows] == sig.astype(np.uint32)[None, :]).mean(axis=1)
        best = int(sims.argmax())
        return (candidates[best], float(sims[best])) if sims[best] > 0 else (None, 0.0)
