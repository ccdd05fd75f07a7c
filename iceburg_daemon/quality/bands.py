"""LSH band key -> record ids, in memory: per band, one sorted uint64 array of (32 bits of the key, record id)
pairs (binary search for a whole batch of keys at once), a large one and a recent one that each batch is merged
into, the recent one merged into the large one when it has grown to an eighth of it (so the copying stays
proportional to what is added).

32 bits of a key suffice within its own band: at 1M records a lookup meets another key's entries about once per
4,000 records, and a candidate is only ever accepted on its stored signature. 8 bytes per band key, i.e. 128
bytes per record per index (16 bands); one array of full keys and ids took twice that.

The keys are a pure function of the signatures the store keeps (`lsh_sigs`), so this index is rebuilt from the
store when a process starts instead of being stored: a B-tree of random 64-bit keys on disk cost every batch a
write of most of its pages (measured: 0.5 ms per record at 20k records, growing with the index).
"""

from __future__ import annotations

import numpy as np

MERGE_AFTER = 20_000  # a band's recent array is merged into its large one past this many keys (or an eighth of it)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


class BandIndex:
    def __init__(self) -> None:
        self.large: list[np.ndarray] = []  # per band, sorted (key bits << 32 | record id)
        self.recent: list[np.ndarray] = []
        self.max_id = 0

    def __len__(self) -> int:
        return sum(len(a) for a in self.large) + sum(len(a) for a in self.recent)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.large) + sum(a.nbytes for a in self.recent)

    def add(self, keys: np.ndarray, record_ids: np.ndarray) -> None:
        """keys: (records x bands) of the records with these ids (below 2**32)."""
        if not len(keys):
            return
        ids = np.asarray(record_ids, dtype=np.uint64)
        if not self.large:
            self.large = [np.empty(0, np.uint64) for _ in range(keys.shape[1])]
            self.recent = [np.empty(0, np.uint64) for _ in range(keys.shape[1])]
        for band, column in enumerate(np.asarray(keys, dtype=np.uint64).T):
            packed = np.sort(_top32(column) << _SHIFT | ids)
            self.recent[band] = _merge(self.recent[band], packed)
            if len(self.recent[band]) > max(MERGE_AFTER, len(self.large[band]) // 8):
                self.large[band], self.recent[band] = _merge(self.large[band], self.recent[band]), packed[:0]
        self.max_id = max(self.max_id, int(ids.max()))

    def compact(self) -> None:
        """Merge the recent arrays into the large ones."""
        for band, recent in enumerate(self.recent):
            self.large[band], self.recent[band] = _merge(self.large[band], recent), recent[:0]

    def lookup(self, keys: np.ndarray, limit: int | None = None) -> dict[int, list[int]]:
        """keys: (records x bands) -> {key: record ids (oldest first)} for the keys that have any; at most
        `limit` ids per key and array."""
        found: dict[int, list[int]] = {}
        if not self.large or not len(keys):
            return found
        for band, column in enumerate(np.asarray(keys, dtype=np.uint64).T):
            query = np.unique(column)
            top = _top32(query)
            low = top << _SHIFT
            for packed in (self.large[band], self.recent[band]):
                if not len(packed):
                    continue
                # One binary search per key (each a chain of cache misses in a large array); the end of the run
                # of equal keys is searched only for the few keys that are present.
                left = np.searchsorted(packed, low, side="left")
                hits = np.flatnonzero(packed[np.minimum(left, len(packed) - 1)] >> _SHIFT == top)
                right = np.searchsorted(packed, low[hits] | _LOW32, side="right")
                for i, end in zip(hits.tolist(), right.tolist()):
                    stop = end if limit is None else min(end, int(left[i]) + limit)
                    found.setdefault(int(query[i]), []).extend((packed[left[i]: stop] & _LOW32).tolist())
        return found


def _top32(keys: np.ndarray) -> np.ndarray:
    return keys >> np.uint64(31)  # keys are 63-bit: their top 32 bits


def _merge(packed: np.ndarray, more: np.ndarray) -> np.ndarray:
    """Two sorted arrays -> one, in a single copy."""
    if not len(packed):
        return more.copy()
    return np.insert(packed, np.searchsorted(packed, more, side="right"), more)
