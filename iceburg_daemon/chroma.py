"""The only module that imports chromadb: reading ICEBURG's stores (in the reader child) and the daemon's own
vector index for semantic duplicates (data/index/, one writer: the daemon). Both import chromadb lazily."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

PAGE = 500


def _client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def dump_store(snapshot: Path, out: Path) -> None:
    """Every collection and item of a (snapshot) store -> JSON lines: a header, then one item per line."""
    client = _client(snapshot)
    collections, problems, rows = [], [], []
    for col in client.list_collections():
        dims: set[int] = set()
        count = col.count()
        for start in range(0, count, PAGE):
            got = col.get(include=["documents", "metadatas", "embeddings"], limit=PAGE, offset=start)
            embeddings = got.get("embeddings")
            for i, item_id in enumerate(got["ids"]):
                dim = len(embeddings[i]) if embeddings is not None and embeddings[i] is not None else None
                if dim:
                    dims.add(dim)
                rows.append(json.dumps({"collection": col.name, "id": item_id, "document": got["documents"][i],
                                        "metadata": got["metadatas"][i], "dimension": dim}, ensure_ascii=False))
        if len(dims) > 1:
            problems.append(f"collection {col.name} mixes vector dimensions {sorted(dims)}")
        collections.append({"name": col.name, "count": count, "dimension": min(dims) if dims else None})
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"collections": collections, "problems": problems}) + "\n")
        for row in rows:
            fh.write(row + "\n")


class VectorIndex:
    """One cosine collection per role and embedding model; the name carries model and dimension, so vectors of
    different models or sizes never share a collection."""

    def __init__(self, path: Path, model: str, dim: int):
        self.path = path
        self.model = model
        self.dim = dim
        self._client: Any = None
        self._collections: dict[str, Any] = {}

    def collection_name(self, role: str) -> str:
        slug = "".join(c if c.isalnum() else "-" for c in self.model.lower()).strip("-")
        return f"answers-{role}-{slug}-{self.dim}"

    def _collection(self, role: str) -> Any:
        if self._client is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._client = _client(self.path)
        if role not in self._collections:
            self._collections[role] = self._client.get_or_create_collection(
                self.collection_name(role), metadata={"hnsw:space": "cosine"}, embedding_function=None)
        return self._collections[role]

    def nearest(self, role: str, vectors: Any) -> list[tuple[int, float] | None]:
        """(record id, cosine similarity) of the closest stored answer for each vector, or None."""
        col = self._collection(role)
        if col.count() == 0:
            return [None] * len(vectors)
        got = col.query(query_embeddings=vectors, n_results=1, include=["distances"])
        return [(int(ids[0]), 1.0 - float(d[0])) if ids else None for ids, d in zip(got["ids"], got["distances"])]

    def add(self, role: str, record_ids: Sequence[int], vectors: Any) -> None:
        if len(record_ids):
            self._collection(role).upsert(ids=[str(i) for i in record_ids], embeddings=vectors)

    def count(self, role: str) -> int:
        return int(self._collection(role).count())

    def verify(self) -> None:
        """Open the store and count every collection (raises on a corrupted index)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for col in _client(self.path).list_collections():
            col.count()

    def destroy(self) -> None:
        """Forget everything (a corrupted or stale index); the store is the truth it is rebuilt from."""
        from chromadb.api.client import SharedSystemClient

        self._client = None
        self._collections.clear()
        SharedSystemClient.clear_system_cache()  # chromadb keeps one open system per path; drop the broken one
        shutil.rmtree(self.path, ignore_errors=True)
