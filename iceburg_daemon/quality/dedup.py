"""Filters 3-5 against all past accepted records: exact duplicates, near duplicates (MinHash + LSH) and
template skeletons (MinHash of the answer with the prompt's topic words masked), indexed in the store.

The index works a batch at a time: `load` reads, in a few queries, every stored row the batch's keys can touch;
the checks then run in memory (records of the batch see the ones judged before them), and `flush` writes what
the batch added in one go. Results are the same as record-by-record lookups.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any, Iterable

import numpy as np

from iceburg_daemon.quality.bands import BandIndex
from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.heuristics import STOP_WORDS
from iceburg_daemon.quality.minhash import band_keys, shingle_hashes, signatures
from iceburg_daemon.quality.signature_cache import SignatureCache
from iceburg_daemon.quality.text import normalise, words
from iceburg_daemon.quality.vocab import Encoded

NEAR_INDEX, TEMPLATE_INDEX = 1, 2
NEAR_PERMS, NEAR_BANDS, NEAR_SHINGLE = 64, 16, 5  # 16 bands x 4 rows: candidates from ~0.5 Jaccard
# A band key shared by thousands of records (long answers' skeletons are made of the same common phrases) says
# little, and reading every sharer made each lookup cost grow with history: the oldest this many are candidates
# (a template cluster's kept member is its oldest; a real duplicate shares several bands, not one hot key).
MAX_SHARERS_PER_KEY = 256
# A template key is shared by every member of its cluster: the oldest 64 hold the kept members and are as similar
# to a new member as the next ones (150k records: the same verdicts as 256, template lookups 58 -> 40 us).
MAX_SHARERS_PER_TEMPLATE_KEY = 64
TEMPLATE_PERMS, TEMPLATE_BANDS, TEMPLATE_SHINGLE = 32, 16, 4  # 16 x 2: candidates from ~0.25

Sketch = tuple[np.ndarray, np.ndarray]  # LSH band keys and MinHash signature
_TOPIC_HASH, _NUMBER_HASH = np.uint64(zlib.crc32("§".encode())), np.uint64(zlib.crc32(b"#"))


def exact_key(prompt: str, answer: str, answer_words: list[str] | None = None) -> str:
    """answer_words: the answer's `words()`, when known; for ASCII text their join is its normalised form."""
    folded = " ".join(answer_words) if answer_words is not None and answer.isascii() else normalise(answer)
    return hashlib.sha256(f"{normalise(prompt)}\x00{folded}".encode("utf-8")).hexdigest()


def topic_words(prompt: str) -> list[str]:
    """The prompt's content words: what a template slots in, masked in the answer's skeleton."""
    return [w for w in words(prompt) if len(w) > 2 and w not in STOP_WORDS]


def near_sketches(answers: Encoded) -> list[Sketch]:
    """Answers' encoded words -> their near-duplicate sketches (MinHash of word 5-grams + LSH keys)."""
    return _sketches(shingle_hashes(answers.hashes, answers.sizes, NEAR_SHINGLE), NEAR_PERMS, NEAR_BANDS)


def template_sketches(answers: Encoded, topics: Encoded) -> list[Sketch]:
    """Answers' and their prompts' topic words (encoded in one call, so their ids agree) -> template sketches:
    MinHash of the 4-grams of each answer's skeleton, its words with the topic words as "§" and numbers as "#"."""
    text = np.repeat(np.arange(len(answers.sizes)), answers.sizes)
    topic_keys = np.repeat(np.arange(len(topics.sizes)), topics.sizes) * topics.distinct + topics.ids
    masked = np.isin(text * topics.distinct + answers.ids, topic_keys)
    hashes = np.where(masked, _TOPIC_HASH, np.where(answers.numbers, _NUMBER_HASH, answers.hashes))
    return _sketches(shingle_hashes(hashes, answers.sizes, TEMPLATE_SHINGLE), TEMPLATE_PERMS, TEMPLATE_BANDS)


def _sketches(shingles: tuple[np.ndarray, np.ndarray], perms: int, bands: int) -> list[Sketch]:
    sigs = signatures(*shingles, perms)
    return list(zip(band_keys(sigs, bands), sigs))


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
        # Per record of the batch, its band keys that a stored record or another record of the batch shares:
        # a record without any (most of them) has no candidates at all.
        self._shared: dict[int, dict[int, list[int]]] = {}
        self._added: dict[int, list[tuple[np.ndarray, int]]] = {}  # (keys, record id) this batch adds
        self._batch_bands: dict[int, dict[int, list[int]]] = {}
        self._sigs = {NEAR_INDEX: SignatureCache(NEAR_PERMS), TEMPLATE_INDEX: SignatureCache(TEMPLATE_PERMS)}
        self._clusters: dict[int, list[int]] = {}  # cluster id -> [size, kept]
        self._next_cluster = 0
        self._new_exact: list[tuple[str, int]] = []
        self._new_sigs: list[tuple[int, int, int | None, bytes]] = []
        self._dirty: set[int] = set()

    def load(self, generation: int, exact_keys: Iterable[str], near: list[tuple[int, Sketch]],
             template: list[tuple[int, Sketch]]) -> None:
        """Read the stored rows a batch can touch: owners of its exact keys, records sharing its band keys
        (`near`, `template`: (record id, sketch) of the batch's records, in order)."""
        self._ensure_bands(generation)
        self._exact = self.store.exact_owners(set(exact_keys))
        for idx, items, cap in ((NEAR_INDEX, near, MAX_SHARERS_PER_KEY),
                                (TEMPLATE_INDEX, template, MAX_SHARERS_PER_TEMPLATE_KEY)):
            keys = np.array([sketch[0] for _, sketch in items] or [[]], np.uint64)[: len(items)]
            distinct, counts = np.unique(keys, return_counts=True)
            self._found[idx] = found = self.bands[idx].lookup(keys, cap)
            touched = {r for ids in found.values() for r in ids}
            cache = self._sigs[idx]
            for record_id, (cluster_id, sig) in self.store.lsh_signatures(idx, cache.missing(touched)).items():
                cache.put(record_id, cluster_id, sig)
            if idx == TEMPLATE_INDEX:
                clusters = {cache.cluster(r) for r in touched} - {None}
            shared = np.union1d(distinct[counts > 1], np.fromiter(found, np.uint64, len(found)))
            mask = np.isin(keys, shared)
            self._shared[idx] = {items[row][0]: keys[row][mask[row]].tolist() for row in np.flatnonzero(mask.any(1))}
            self._added[idx], self._batch_bands[idx] = [], {}
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
            self._sigs[idx] = SignatureCache(self._sigs[idx].perms)
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

    def check_near(self, record_id: int, sketch: Sketch) -> tuple[Finding | None, float]:
        best_id, best = self._best(NEAR_INDEX, record_id, sketch)
        if best_id is not None and best >= self.q.near_threshold:
            return Finding("near_dedup", "near_duplicate", f"{best:.2f} similar to record {best_id}", score=best,
                           duplicate_of=best_id), best
        return None, best

    def check_template(self, record_id: int, sketch: Sketch) -> tuple[Finding | None, float]:
        """Join the answer's skeleton to a cluster (or start one); past `template_keep` members, reject."""
        best_id, best = self._best(TEMPLATE_INDEX, record_id, sketch)
        if best_id is not None and best >= self.q.template_threshold:
            cluster_id = self._sigs[TEMPLATE_INDEX].cluster(best_id)
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

    def unkeep_template(self, record_id: int) -> None:
        """A record that took a template slot was rejected by a later filter: its slot is freed, so the
        cluster's next member is kept instead (slots count accepted records only). Its skeleton stays indexed:
        later members still join the same cluster."""
        cluster_id = self._sigs[TEMPLATE_INDEX].cluster(record_id)
        if cluster_id is None:
            return
        self._clusters[cluster_id][1] -= 1
        self._dirty.add(cluster_id)

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
                self.bands[idx].add(np.stack([keys for keys, _ in added]), np.array([r for _, r in added]))
            added.clear()

    def _best(self, idx: int, record_id: int, sketch: Sketch) -> tuple[int | None, float]:
        """The most similar indexed record (the lowest id among equals) and its estimated Jaccard similarity."""
        keys, sig = self._shared[idx].get(record_id), sketch[1]
        if not keys:
            return None, 0.0
        found, batch = self._found[idx], self._batch_bands[idx]
        candidates = sorted({r for k in keys for r in (*found.get(k, ()), *batch.get(k, ()))})
        if not candidates:
            return None, 0.0
        return self._sigs[idx].best(candidates, sig)

    def _add(self, idx: int, record_id: int, sketch: Sketch, cluster_id: int | None) -> None:
        keys, sig = sketch
        self._sigs[idx].put(record_id, cluster_id, sig)
        batch = self._batch_bands[idx]
        for k in self._shared[idx].get(record_id, ()):  # a key no other record has is never looked up
            batch.setdefault(k, []).append(record_id)
        self._added[idx].append((keys, record_id))
        self._new_sigs.append((idx, record_id, cluster_id, sig.astype(np.uint32).tobytes()))
