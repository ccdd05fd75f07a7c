"""Word list -> MinHash signature (numpy) and LSH band keys, deterministic across processes and machines."""

from __future__ import annotations

import zlib

import numpy as np

_RNG = np.random.default_rng(20261126)  # fixed: signatures are stored, so the hash family never changes
# Multiply-shift hashing: (a*x + b mod 2**64) >> 32 with odd a is universal and needs no slow modulo.
_A = _RNG.integers(0, np.iinfo(np.uint64).max, size=256, dtype=np.uint64, endpoint=True) | np.uint64(1)
_B = _RNG.integers(0, np.iinfo(np.uint64).max, size=256, dtype=np.uint64, endpoint=True)
_SHIFT = np.uint64(32)
_SHINGLE_MIX = _RNG.integers(1, 1 << 31, size=16, dtype=np.uint64) | np.uint64(1)
_BAND_MIX = _RNG.integers(1, 1 << 31, size=64, dtype=np.uint64) | np.uint64(1)
_MASK32 = np.uint64(0xFFFFFFFF)


class _WordHashes(dict):  # type: ignore[type-arg]
    """crc32 per word, memoised: a dict lookup costs a fifth of encoding and hashing again."""

    def __missing__(self, word: str) -> int:
        if len(self) > 500_000:
            self.clear()
        value = self[word] = zlib.crc32(word.encode("utf-8"))
        return value


_WORD_HASHES = _WordHashes()


def word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter(map(_WORD_HASHES.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def shingle_hashes(tokens: list[str], n: int) -> np.ndarray:
    """32-bit hashes of the word n-grams (the whole text as one shingle when it is shorter than n)."""
    wh = word_hashes(tokens)
    if len(wh) < n:
        return np.array([int(np.sum(wh * _SHINGLE_MIX[: len(wh)]) & _MASK32)], dtype=np.uint64) if len(wh) else wh
    count = len(wh) - n + 1
    acc = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        acc += wh[j : j + count] * _SHINGLE_MIX[j]  # wraps mod 2**64, then folded to 32 bits
    return np.unique(acc & _MASK32)


def signature(shingles: np.ndarray, perms: int) -> np.ndarray:
    """MinHash over `perms` multiply-shift hashes (values below 2**32); empty input gives all-max."""
    if len(shingles) == 0:
        return np.full(perms, 0xFFFFFFFF, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return ((_A[:perms, None] * shingles[None, :] + _B[:perms, None]) >> _SHIFT).min(axis=1)


def band_keys(sig: np.ndarray, bands: int) -> list[int]:
    """One signed 63-bit key per band (SQLite INTEGER); equal bands give equal keys."""
    rows = sig.reshape(bands, -1)
    mixed = (rows * _BAND_MIX[: rows.shape[1]]).sum(axis=1)  # wraps mod 2**64
    return [int(k) & 0x7FFF_FFFF_FFFF_FFFF for k in mixed]


def similarity(sig: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of sig against each row of others."""
    return (others == sig[None, :]).mean(axis=1)
