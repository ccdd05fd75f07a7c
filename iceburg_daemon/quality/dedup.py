"""Filters 3-5 against all past accepted records: exact duplicates, near duplicates (MinHash + LSH) and
template skeletons (MinHash of the answer with the prompt's topic words masked), indexed in the store.

The index works a batch at a time: `load` reads, in a few queries, every stored row the batch's keys can touch;
the checks then run in memory (records of the batch see the ones judged before them), and `flush` writes what
the batch added in one go. Results are the same as record-by-record lookups.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np

from iceburg_daemon.quality.bands import BandIndex
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.heuristics import STOP_WORDS
from iceburg_daemon.quality.minhash import band_keys, shingle_hashes, signatures
from iceburg_daemon.quality.text import normalise, words

NEAR_INDEX, TEMPLATE_INDEX = 1, 2
NEAR_PERMS, NEAR_BANDS, NEAR_SHINGLE = 64, 16, 5  # 16 bands x 4 rows: candidates from ~0.5 Jaccard
TEMPLATE_PERMS, TEMPLATE_BANDS, TEMPLATE_SHINGLE = 32, 16, 4  # 16 x 2: candidates from ~0.25

Sketch = tuple[list[int], np.ndarray]  # LSH band keys and MinHash signature


def exact_key(prompt: str, answer: str) -> str:
    return hashlib.sha256(f"{normalise(prompt)}\x00{normalise(answer)}".encode("utf-8")).hexdigest()


def skeleton(prompt: str, answer: str, answer_words: list[str] | None = None) -> list[str]:
    """The answer's words with the prompt's content words and all numbers masked: what a template keeps."""
    topic = {w for w in words(prompt) if len(w) > 2 and w not in STOP_WORDS}
    # Words are \w+ runs, so "only digits" is exactly the old number pattern ^\d+([.,]\d+)*$ on them.
    return ["§" if w in topic else "#" if w.isdecimal() else w for w in (answer_words or words(answer))]


def near_sketches(answer_words: list[list[str]]) -> list[Sketch]:
    """Answers' word lists -> their near-duplicate sketches (MinHash of word 5-grams + LSH keys)."""
    return _sketches(shingle_hashes(answer_words, NEAR_SHINGLE), NEAR_PERMS, NEAR_BANDS)


def template_sketches(prompts: list[str], answers: list[str], answer_words: list[list[str]]) -> list[Sketch]:
    """(prompt, answer) pairs -> their template sketches (MinHash of skeleton 4-grams + LSH keys)."""
    skeletons = [skeleton(p, a, w) for p, a, w in zip(prompts, answers, answer_words)]
    return _sketches(shingle_hashes(skeletons, TEMPLATE_SHINGLE), TEMPLATE_PERMS, TEMPLATE_BANDS)


def _sketches(shingles: tuple[np.ndarray, np.ndarray], perms: int, bands: int) -> list[Sketch]:
    sigs = signatures(*shingles, perms)
    return list(zip(band_keys(sigs, bands).tolist(), sigs))


class DuplicateIndex:
    """Owns the three indexes' logic. The store holds their rows (exact keys, MinHash signatures, template
    clusters), so they survive restarts; the LSH band keys live in memory (`BandIndex`), rebuilt from the stored
    signatures when this process first needs them or when the store's rows changed behind its back."""

    def __init__(self, store: Any, q: Any):
        self.store = store
        self.q = q
        self.bands: dict[int, BandIndex] = {}
        self._generation: int | None = None
        self._exact: dict[str, int] = {}
        self._found: dict[int, dict[int, list[int]]] = {}  # stored records sharing the batch's band keys
        self._added: dict[int, list[tuple[list[int], int]]] = {}  # (keys, record id) this batch adds
        self._batch_bands: dict[int, dict[int, list[int]]] = {}
        self._sigs: dict[int, dict[int, tuple[int | None, np.ndarray]]] = {}
        self._clusters: dict[int, list[int]] = {}  # cluster id -> [size, kept]
        self._next_cluster = 0
        self._new_exact: list[tuple[str, int]] = []
        self._new_sigs: list[tuple[int, int, int | None, bytes]] = []
        self._dirty: set[int] = set()

    def load(self, generation: int, exact_keys: Iterable[str], near: Iterable[list[int]],
             template: Iterable[list[int]]) -> None:
        """Read the stored rows a batch can touch: owners of its exact keys, records sharing its band keys."""
        self._ensure_bands(generation)
        self._exact = self.store.exact_owners(set(exact_keys))
        for idx, key_lists in ((NEAR_INDEX, near), (TEMPLATE_INDEX, template)):
            self._found[idx] = found = self.bands[idx].lookup(k for keys in key_lists for k in keys)
            self._sigs[idx] = self.store.lsh_signatures(idx, {r for ids in found.values() for r in ids})
            self._added[idx], self._batch_bands[idx] = [], {}
        clusters = {c for c, _ in self._sigs[TEMPLATE_INDEX].values() if c is not None}
        self._clusters = self.store.clusters(clusters)
        self._next_cluster = self.store.max_cluster_id() + 1
        self._new_exact, self._new_sigs, self._dirty = [], [], set()

    def _ensure_bands(self, generation: int) -> None:
        """(Re)build the in-memory band keys from the stored signatures when they no longer match the store."""
        current = generation == self._generation and all(
            self.bands[idx].max_id == self.store.lsh_max_record_id(idx) for idx in (NEAR_INDEX, TEMPLATE_INDEX))
        if current:
            return
        for idx, bands in ((NEAR_INDEX, NEAR_BANDS), (TEMPLATE_INDEX, TEMPLATE_BANDS)):
            self.bands[idx] = index = BandIndex()
            for record_ids, sigs in self.store.lsh_signature_chunks(idx):
                index.add(band_keys(sigs, bands), record_ids)
            index.compact()
        self._generation = generation

    def check_exact(self, key: str) -> Finding | None:
        owner = self._exact.get(key)
        if owner is not None:
            return Finding("exact_dedup", "exact_duplicate", f"same normalised text as record {owner}", score=1.0,
                           duplicate_of=owner)
        return None

    def check_near(self, sketch: Sketch) -> tuple[Finding | None, float]:
        best_id, best = self._best(NEAR_INDEX, sketch)
        if best_id is not None and best >= self.q.near_threshold:
            return Finding("near_dedup", "near_duplicate", f"{best:.2f} similar to record {best_id}", score=best,
                           duplicate_of=best_id), best
        return None, best

    def check_template(self, record_id: int, sketch: Sketch) -> tuple[Finding | None, float]:
        """Join the answer's skeleton to a cluster (or start one); past `template_keep` members, reject."""
        best_id, best = self._best(TEMPLATE_INDEX, sketch)
        if best_id is not None and best >= self.q.template_threshold:
            cluster_id = self._sigs[TEMPLATE_INDEX][best_id][0]
            assert cluster_id is not None
            cluster = self._clusters[cluster_id]
            keep = cluster[1] < self.q.template_keep
            cluster[0] += 1
            cluster[1] += keep
            self._dirty.add(cluster_id)
            if not keep:
                return Finding("template", "template", f"skeleton cluster {cluster_id} has {cluster[0]}"
                               f" members; {self.q.template_keep} are kept", score=best, cluster_id=cluster_id), best
            self._add(TEMPLATE_INDEX, record_id, sketch, cluster_id)
            return None, best
        cluster_id = self._next_cluster
        self._next_cluster += 1
        self._clusters[cluster_id] = [1, 1]
        self._dirty.add(cluster_id)
        self._add(TEMPLATE_INDEX, record_id, sketch, cluster_id)
        return None, best

    def remember(self, record_id: int, exact: str | None, near: Sketch | None) -> None:
        """An accepted record joins the duplicate indexes (later records of the batch see it at once)."""
        if exact is not None and exact not in self._exact:
            self._exact[exact] = record_id
            self._new_exact.append((exact, record_id))
        if near is not None:
            self._add(NEAR_INDEX, record_id, near, None)

    def flush(self) -> None:
        """Write what the batch added (inside the caller's transaction)."""
        self.store.add_exact_keys(self._new_exact)
        self.store.add_lsh_signatures(self._new_sigs)
        self.store.put_clusters([(c, *self._clusters[c]) for c in sorted(self._dirty)])

    def committed(self) -> None:
        """The batch's transaction committed: its band keys join the in-memory index."""
        for idx, added in self._added.items():
            if added:
                self.bands[idx].add(np.array([keys for keys, _ in added], dtype=np.uint64),
                                    np.array([record_id for _, record_id in added]))
            added.clear()

    def _best(self, idx: int, sketch: Sketch) -> tuple[int | None, float]:
        """The most similar indexed record (the lowest id among equals) and its estimated Jaccard similarity."""
        keys, sig = sketch
        found, batch = self._found[idx], self._batch_bands[idx]
        candidates = sorted({r for k in keys for r in (*found.get(k, ()), *batch.get(k, ()))})
        if not candidates:
            return None, 0.0
        sigs = self._sigs[idx]
        sims = (np.stack([sigs[r][1] for r in candidates]) == sig[None, :]).mean(axis=1)
        best = int(sims.argmax())
        return (candidates[best], float(sims[best])) if sims[best] > 0 else (None, 0.0)

    def _add(self, idx: int, record_id: int, sketch: Sketch, cluster_id: int | None) -> None:
        keys, sig = sketch
        self._sigs[idx][record_id] = (cluster_id, sig)
        batch = self._batch_bands[idx]
        for k in keys:
            batch.setdefault(k, []).append(record_id)
        self._added[idx].append((keys, record_id))
        self._new_sigs.append((idx, record_id, cluster_id, sig.astype(np.uint32).tobytes()))
