"""Filters 3-5 against all past accepted records: exact duplicates, near duplicates (MinHash + LSH) and
template skeletons (MinHash of the answer with the prompt's topic words masked), indexed in the store."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.heuristics import STOP_WORDS
from iceburg_daemon.quality.minhash import band_keys, shingle_hashes, signature, similarity
from iceburg_daemon.quality.text import normalise, words

NEAR_INDEX, TEMPLATE_INDEX = 1, 2
NEAR_PERMS, NEAR_BANDS, NEAR_SHINGLE = 64, 16, 5  # 16 bands x 4 rows: candidates from ~0.5 Jaccard
TEMPLATE_PERMS, TEMPLATE_BANDS, TEMPLATE_SHINGLE = 32, 16, 4  # 16 x 2: candidates from ~0.25
NUMBER = re.compile(r"^\d+([.,]\d+)*$")


def exact_key(prompt: str, answer: str) -> str:
    return hashlib.sha256(f"{normalise(prompt)}\x00{normalise(answer)}".encode("utf-8")).hexdigest()


def skeleton(prompt: str, answer: str) -> list[str]:
    """The answer's words with the prompt's content words and all numbers masked: what a template keeps."""
    topic = {w for w in words(prompt) if len(w) > 2 and w not in STOP_WORDS}
    return ["§" if w in topic else "#" if NUMBER.match(w) else w for w in words(answer)]


class DuplicateIndex:
    """Owns the three indexes' logic; the store holds their rows, so they survive restarts and are rebuildable."""

    def __init__(self, store: Any, q: Any):
        self.store = store
        self.q = q

    def check_exact(self, prompt: str, answer: str) -> tuple[Finding | None, str]:
        key = exact_key(prompt, answer)
        owner = self.store.exact_owner(key)
        if owner is not None:
            return Finding("exact_dedup", "exact_duplicate", f"same normalised text as record {owner}", score=1.0,
                           duplicate_of=owner), key
        return None, key

    def check_near(self, answer: str) -> tuple[Finding | None, tuple[list[int], Any], float]:
        sig = signature(shingle_hashes(words(answer), NEAR_SHINGLE), NEAR_PERMS)
        keys = _keys(sig, NEAR_BANDS)
        best_id, best = None, 0.0
        candidates = self.store.lsh_candidates(NEAR_INDEX, keys)
        for record_id, _cluster, other in candidates:
            sim = float(similarity(sig, other[None, :])[0])
            if sim > best:
                best_id, best = record_id, sim
        if best_id is not None and best >= self.q.near_threshold:
            return Finding("near_dedup", "near_duplicate", f"{best:.2f} similar to record {best_id}", score=best,
                           duplicate_of=best_id), (keys, sig), best
        return None, (keys, sig), best

    def check_template(self, record_id: int, prompt: str, answer: str) -> tuple[Finding | None, float]:
        """Join the answer's skeleton to a cluster (or start one); past `template_keep` members, reject."""
        sig = signature(shingle_hashes(skeleton(prompt, answer), TEMPLATE_SHINGLE), TEMPLATE_PERMS)
        keys = _keys(sig, TEMPLATE_BANDS)
        best_cluster, best = None, 0.0
        for _rid, cluster_id, other in self.store.lsh_candidates(TEMPLATE_INDEX, keys):
            sim = float(similarity(sig, other[None, :])[0])
            if sim > best:
                best_cluster, best = cluster_id, sim
        if best_cluster is not None and best >= self.q.template_threshold:
            cluster = self.store.cluster(best_cluster)
            keep = cluster["kept"] < self.q.template_keep
            self.store.grow_cluster(best_cluster, kept=keep)
            if not keep:
                return Finding("template", "template", f"skeleton cluster {best_cluster} has {cluster['size'] + 1}"
                               f" members; {self.q.template_keep} are kept", score=best, cluster_id=best_cluster), best
            self.store.lsh_add(TEMPLATE_INDEX, record_id, keys, sig, best_cluster)
            return None, best
        self.store.lsh_add(TEMPLATE_INDEX, record_id, keys, sig, self.store.new_cluster())
        return None, best

    def remember(self, record_id: int, exact: str | None, near: tuple[list[int], Any] | None) -> None:
        """An accepted record joins the duplicate indexes."""
        if exact is not None:
            self.store.add_exact_key(exact, record_id)
        if near is not None:
            self.store.lsh_add(NEAR_INDEX, record_id, near[0], near[1], None)


def _keys(sig: Any, bands: int) -> list[int]:
    # The band number is mixed in, so one key column serves all bands.
    return [(k ^ (b * 0x9E3779B97F4A7C15)) & 0x7FFF_FFFF_FFFF_FFFF for b, k in enumerate(band_keys(sig, bands))]
