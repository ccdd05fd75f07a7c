"""The only module that imports chromadb: reading ICEBURG's stores, in the reader child (imported lazily: the
daemon process never loads chromadb's native code). The daemon's own vector index is vector_index.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
