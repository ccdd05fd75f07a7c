"""Answer texts -> unit vectors. Providers: `hash` (feature hashing, offline, deterministic: the test default)
and `ollama` (`/api/embed`, e.g. nomic-embed-text, what ICEBURG itself uses). No torch in the daemon."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol

import numpy as np

from iceburg_daemon.errors import IceburgDaemonError
from iceburg_daemon.quality.minhash import word_hashes
from iceburg_daemon.quality.text import words


class EmbeddingError(IceburgDaemonError):
    """The embedding provider did not answer (e.g. Ollama is not running)."""


class Embedder(Protocol):
    model: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class HashEmbedder:
    """Signed feature hashing of word unigrams and bigrams: paraphrase-blind, but offline and deterministic."""

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.model = f"hash-{dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            uni = word_hashes(words(text))
            with np.errstate(over="ignore"):  # bigram ids mix two word hashes; wrapping is fine
                bi = uni[:-1] * np.uint64(0x9E3779B1) + uni[1:]
            features = np.concatenate([uni, bi & np.uint64(0xFFFFFFFF)])
            signs = np.where(features & np.uint64(0x80000000), 1.0, -1.0)
            out[row] = np.bincount((features % np.uint64(self.dim)).astype(np.int64), weights=signs,
                                   minlength=self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


class OllamaEmbedder:
    def __init__(self, url: str, model: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.dim = 0  # learnt from the first answer

    def embed(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.model, "input": texts}).encode()
        request = urllib.request.Request(f"{self.url}/api/embed", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EmbeddingError(f"ollama embed at {self.url} failed: {exc}") from exc
        vectors = np.asarray(data.get("embeddings") or [], dtype=np.float32)
        if vectors.shape[0] != len(texts):
            raise EmbeddingError(f"ollama returned {vectors.shape[0]} embeddings for {len(texts)} texts")
        self.dim = int(vectors.shape[1])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)


def make_embedder(cfg: Any) -> Embedder | None:
    e = cfg.embedding
    if e.provider == "hash":
        return HashEmbedder(e.dim)
    if e.provider == "ollama":
        return OllamaEmbedder(e.url, e.model)
    return None
