"""The only module that imports faiss: the daemon's own vector index for semantic duplicates, held in the daemon's
memory (one per role) and saved to data/index/ now and then.

A role's first TRAIN_AT vectors are searched exactly (numpy); from then on an HNSW graph over 8-bit codes of the
vectors does it (per dimension, trained on those first vectors; the cosine it reports is within about 0.02 of
the exact one). A PCA in front made it faster, but hash vectors of similar answers spread their differences over
every dimension: it lost the true neighbour of most pairs at cosine >= 0.95 (recall 8 %; this: 98.6 %).

The index is derived data: a saved copy records the verdict id it is complete up to, and whatever came after
(or the whole index, when the copy is missing, unreadable or of another model) is rebuilt from the store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iceburg_daemon.errors import IceburgDaemonError
from iceburg_daemon.fsutil import fsync_path

TRAIN_AT = 4096  # vectors per role searched exactly before the graph is trained on them
HNSW_NEIGHBOURS, EF_SEARCH = 16, 64  # measured: recall 98.6 % of the >= 0.95 pairs (note of issue 16)
RANGE_MARGIN = 0.25  # of the trained range, on each side: the first answers need not span what later ones reach
FORMAT = 1


class VectorIndexError(IceburgDaemonError):
    """The saved vector index cannot be read (it is rebuilt from the store)."""


def _faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)  # the other core extracts features; threads here would only contend
    return faiss


class RoleVectors:
    """One role's vectors and their record ids; exact below TRAIN_AT, a trained graph above."""

    def __init__(self, dim: int):
        self.dim = dim
        self.ids = np.empty(0, dtype=np.int64)
        self.flat: np.ndarray | None = np.empty((0, dim), dtype=np.float32)
        self.graph: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record id (-1: none) and cosine similarity of the closest stored vector to each of `vectors`."""
        if len(self.ids) == 0:
            return np.full(len(vectors), -1, dtype=np.int64), np.zeros(len(vectors), dtype=np.float32)
        if self.graph is None:
            assert self.flat is not None
            sims = vectors @ self.flat.T
            best = sims.argmax(axis=1)
            return self.ids[best], sims[np.arange(len(vectors)), best]
        found, rows = self.graph.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        rows = rows[:, 0]
        return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1), found[:, 0]

    def add(self, record_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.concatenate([self.ids, np.asarray(record_ids, dtype=np.int64)])
        if self.graph is not None:
            self.graph.add(vectors)
            return
        assert self.flat is not None
        self.flat = np.concatenate([self.flat, vectors])
        if len(self.flat) >= TRAIN_AT:
            self.graph = _train(self.flat)
            self.graph.add(self.flat)
            self.flat = None

    def save(self, stem: Path) -> dict[str, Any]:
        np.save(_file(stem, ".ids.npy"), self.ids)
        if self.graph is not None:
            _faiss().write_index(self.graph, str(_file(stem, ".faiss")))
            return {"stem": stem.name, "kind": "graph", "count": len(self.ids)}
        np.save(_file(stem, ".flat.npy"), self.flat)
        return {"stem": stem.name, "kind": "flat", "count": len(self.ids)}

    @classmethod
    def load(cls, folder: Path, entry: dict[str, Any], dim: int) -> RoleVectors:
        stem = folder / entry["stem"]
        role = cls(dim)
        role.ids = np.load(_file(stem, ".ids.npy"))
        if entry["kind"] == "graph":
            role.graph, role.flat = _tuned(_faiss().read_index(str(_file(stem, ".faiss")))), None
            size = role.graph.ntotal
        else:
            role.flat = np.load(_file(stem, ".flat.npy"))
            size = len(role.flat) if role.flat.ndim == 2 and role.flat.shape[1] == dim else -1
        if not len(role.ids) == size == entry["count"]:
            raise VectorIndexError(f"{stem.name}: {len(role.ids)} ids, {size} vectors, manifest {entry['count']}")
        return role


def _train(sample: np.ndarray) -> Any:
    faiss = _faiss()
    graph = faiss.IndexHNSWSQ(sample.shape[1], faiss.ScalarQuantizer.QT_8bit, HNSW_NEIGHBOURS,
                              faiss.METRIC_INNER_PRODUCT)
    sq = faiss.downcast_index(graph.storage).sq  # 8-bit codes span each dimension's trained range, widened:
    sq.rangestat, sq.rangestat_arg = faiss.ScalarQuantizer.RS_minmax, RANGE_MARGIN  # past it a value is clipped
    graph.train(sample)
    return _tuned(graph)


def _tuned(graph: Any) -> Any:
    """Search settings (set again after loading, whatever a saved copy carries)."""
    graph.hnsw.efSearch = EF_SEARCH
    return graph


class VectorIndex:
    """Every role's vectors of one embedding model and dimension, kept in data/index/<model>-<dim>/: a manifest
    names the files of the last save and the verdict id they are complete up to (`upto`)."""

    def __init__(self, path: Path, model: str, dim: int):
        self.path = path
        self.model = model
        self.dim = dim
        self.roles: dict[str, RoleVectors] = {}
        self.upto = 0  # every accepted verdict up to this id is in the index (in memory)
        self.saved_upto = 0
        self._seq = 0

    @property
    def folder(self) -> Path:
        slug = "".join(c if c.isalnum() else "-" for c in self.model.lower()).strip("-")
        return self.path / f"{slug}-{self.dim}"

    def nearest(self, role: str, vectors: np.ndarray) -> list[tuple[int, float] | None]:
        """(record id, cosine similarity) of the closest stored answer for each vector, or None."""
        if role not in self.roles:
            return [None] * len(vectors)
        ids, sims = self.roles[role].nearest(vectors)
        return [(int(i), float(s)) if i >= 0 else None for i, s in zip(ids, sims)]

    def add(self, role: str, record_ids: Sequence[int], vectors: np.ndarray) -> None:
        if len(record_ids):
            self.roles.setdefault(role, RoleVectors(self.dim)).add(record_ids, vectors)

    def count(self, role: str) -> int:
        return len(self.roles.get(role, ()))

    def load(self) -> None:
        """Read the last save (nothing saved: an empty index). Raises VectorIndexError when it is unreadable."""
        manifest = self.folder / "manifest.json"
        if not manifest.exists():
            _drop_chroma_index(self.path)
            return
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("format") != FORMAT or meta.get("dim") != self.dim or meta.get("model") != self.model:
                raise VectorIndexError(f"{manifest}: another format, model or dimension")
            self.roles = {role: RoleVectors.load(self.folder, entry, self.dim) for role, entry in meta["roles"].items()}
            self.upto = self.saved_upto = int(meta["upto"])
            self._seq = int(meta["seq"])
        except VectorIndexError:
            raise
        except Exception as exc:  # noqa: BLE001 - json, numpy and faiss each raise their own kinds
            raise VectorIndexError(f"{self.folder}: {type(exc).__name__}: {exc}") from exc

    def save(self) -> None:
        """Write every role under a new sequence number, then switch the manifest to them in one rename (a crash
        leaves the previous save whole), then delete the previous files."""
        if self.upto == self.saved_upto and (self.folder / "manifest.json").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        seq = self._seq + 1
        roles = {role: vectors.save(self.folder / f"{role}.{seq}") for role, vectors in self.roles.items()}
        for entry in roles.values():
            for f in self.folder.glob(f"{entry['stem']}.*"):
                fsync_path(f)
        tmp = self.folder / "manifest.json.tmp"
        tmp.write_text(json.dumps({"format": FORMAT, "model": self.model, "dim": self.dim, "upto": self.upto,
                                   "seq": seq, "roles": roles}))
        fsync_path(tmp)
        os.replace(tmp, self.folder / "manifest.json")
        fsync_path(self.folder)
        keep = {entry["stem"] for entry in roles.values()}
        for f in self.folder.iterdir():
            if f.name != "manifest.json" and ".".join(f.name.split(".")[:2]) not in keep:
                f.unlink(missing_ok=True)
        self._seq, self.saved_upto = seq, self.upto

    def destroy(self) -> None:
        """Forget everything, saved copies of any model included (a corrupted or stale index, or the ChromaDB
        index of earlier versions); the store is the truth it is rebuilt from."""
        self.roles.clear()
        self.upto = self.saved_upto = self._seq = 0
        shutil.rmtree(self.path, ignore_errors=True)


def _drop_chroma_index(path: Path) -> None:
    """Versions before this index kept a ChromaDB store in data/index/ (chroma.sqlite3 and a folder per
    collection segment): nothing reads it any more, and it was the bigger of the two (1.9 KB per record)."""
    if (path / "chroma.sqlite3").exists():
        for entry in path.iterdir():
            if entry.name.startswith("chroma.sqlite3") or (entry.is_dir() and len(entry.name) == 36
                                                           and entry.name.count("-") == 4):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _file(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)  # not with_suffix: the stem "oracle.3" has a suffix of its own
