"""LSH band key -> record ids, in memory: two sorted arrays (binary search for a whole batch of keys at once), a
large one and a recent one that each batch is merged into, the recent one merged into the large one when it has
grown to an eighth of it (so the copying stays proportional to what is added).

The keys are a pure function of the signatures the store keeps (`lsh_sigs`), so this index is rebuilt from the
store when a process starts instead of being stored: a B-tree of random 64-bit keys on disk cost every batch a
write of most of its pages (measured: 0.5 ms per record at 20k records, growing with the index).
Memory: 16 bytes per band key, i.e. 256 bytes per record per index (0.5 GB at 1M records in both indexes).
"""

from __future__ import annotations

import numpy as np

MERGE_AFTER = 200_000  # the recent array is merged into the large one past this many keys (or an eighth of it)


class BandIndex:
    def __init__(self) -> None:
        self.keys = self.recent_keys = np.empty(0, dtype=np.uint64)  # each sorted
        self.ids = self.recent_ids = np.empty(0, dtype=np.int64)  # the record id of each key
        self.max_id = 0

    def __len__(self) -> int:
        return len(self.keys) + len(self.recent_keys)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.ids.nbytes + self.recent_keys.nbytes + self.recent_ids.nbytes)

    def add(self, keys: np.ndarray, record_ids: np.ndarray) -> None:
        """keys: (records x bands) of the records with these ids."""
        if not len(keys):
            return
        flat = np.ascontiguousarray(keys, dtype=np.uint64).ravel()
        ids = np.repeat(np.asarray(record_ids, dtype=np.int64), keys.shape[1])
        order = np.argsort(flat, kind="stable")
        self.recent_keys, self.recent_ids = _merge(self.recent_keys, self.recent_ids, flat[order], ids[order])
        self.max_id = max(self.max_id, int(ids.max()))
        if len(self.recent_keys) > max(MERGE_AFTER, len(self.keys) // 8):
            self.compact()

    def compact(self) -> None:
        """Merge the recent array into the large one."""
        self.keys, self.ids = _merge(self.keys, self.ids, self.recent_keys, self.recent_ids)
        self.recent_keys, self.recent_ids = self.recent_keys[:0], self.recent_ids[:0]

    def lookup(self, keys: np.ndarray | list[int], limit: int | None = None) -> dict[int, list[int]]:
        """key -> record ids (oldest first), for the keys that have any; at most `limit` ids per key and array."""
        query = np.unique(np.asarray(keys, dtype=np.uint64))
        found: dict[int, list[int]] = {}
        for sorted_keys, ids in ((self.keys, self.ids), (self.recent_keys, self.recent_ids)):
            # One binary search per key (each a chain of cache misses in a large index); the end of the run of
            # equal keys is searched only for the few keys that are present.
            left = np.searchsorted(sorted_keys, query, side="left")
            hits = np.flatnonzero(sorted_keys[np.minimum(left, len(sorted_keys) - 1)] == query) \
                if len(sorted_keys) else left[:0]
            right = np.searchsorted(sorted_keys, query[hits], side="right")
            for i, end in zip(hits.tolist(), right.tolist()):
                stop = end if limit is None else min(end, int(left[i]) + limit)
                found.setdefault(int(query[i]), []).extend(ids[left[i] : stop].tolist())
        return found


def _merge(keys: np.ndarray, ids: np.ndarray, more_keys: np.ndarray, more_ids: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted (key, id) arrays -> one, in a single copy."""
    at = np.searchsorted(keys, more_keys, side="right")
    return np.insert(keys, at, more_keys), np.insert(ids, at, more_ids)
