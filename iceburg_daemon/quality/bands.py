"""LSH band key -> record ids, in memory: a sorted array (binary search for a whole batch of keys at once) plus a
dict of recent additions merged in now and then.

The keys are a pure function of the signatures the store keeps (`lsh_sigs`), so this index is rebuilt from the
store when a process starts instead of being stored: a B-tree of random 64-bit keys on disk cost every batch a
write of most of its pages (measured: 0.5 ms per record at 20k records, growing with the index).
Memory: 16 bytes per band key, i.e. 256 bytes per record per index (0.5 GB at 1M records in both indexes).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MERGE_AFTER = 200_000  # recent keys kept in a dict before they are merged into the sorted arrays


class BandIndex:
    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)  # sorted
        self.ids = np.empty(0, dtype=np.int64)  # record id of each key
        self.recent: dict[int, list[int]] = {}
        self.recent_count = 0
        self.max_id = 0

    def __len__(self) -> int:
        return len(self.keys) + self.recent_count

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.ids.nbytes)

    def extend(self, keys: np.ndarray, record_ids: np.ndarray) -> None:
        """Bulk load: keys (n x bands) of n records."""
        if not len(keys):
            return
        flat = np.concatenate([self.keys, keys.ravel()])
        ids = np.concatenate([self.ids, np.repeat(record_ids.astype(np.int64), keys.shape[1])])
        order = np.argsort(flat, kind="stable")
        self.keys, self.ids = flat[order], ids[order]
        self.max_id = max(self.max_id, int(record_ids.max()))

    def add(self, keys: Iterable[int], record_id: int) -> None:
        for key in keys:
            self.recent.setdefault(int(key), []).append(record_id)
            self.recent_count += 1
        self.max_id = max(self.max_id, record_id)
        if self.recent_count >= MERGE_AFTER:
            self.compact()

    def lookup(self, keys: Iterable[int]) -> dict[int, list[int]]:
        """key -> record ids, for the keys that have any."""
        query = np.unique(np.fromiter(keys, dtype=np.uint64))
        left = np.searchsorted(self.keys, query, side="left")
        right = np.searchsorted(self.keys, query, side="right")
        found: dict[int, list[int]] = {}
        for i in np.flatnonzero(right > left):
            found[int(query[i])] = self.ids[left[i] : right[i]].tolist()
        if self.recent:
            for key in query.tolist():
                more = self.recent.get(key)
                if more:
                    found.setdefault(key, []).extend(more)
        return found

    def compact(self) -> None:
        """Merge the recent additions into the sorted arrays."""
        if not self.recent:
            return
        keys = np.fromiter((k for k, ids in self.recent.items() for _ in ids), dtype=np.uint64, count=self.recent_count)
        ids = np.fromiter((i for v in self.recent.values() for i in v), dtype=np.int64, count=self.recent_count)
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        at = np.searchsorted(self.keys, keys, side="right")
        self.keys, self.ids = np.insert(self.keys, at, keys), np.insert(self.ids, at, ids)
        self.recent, self.recent_count = {}, 0
