"""Word list -> MinHash signature (numpy) and LSH band keys, deterministic across processes and machines."""

from __future__ import annotations

import zlib

import numpy as np

PRIME = np.uint64((1 << 31) - 1)  # x and a below 2**31: a*x + b never overflows uint64
_RNG = np.random.default_rng(20261126)  # fixed: signatures are stored, so the hash family never changes
_A = _RNG.integers(1, (1 << 31) - 1, size=256, dtype=np.uint64)
_B = _RNG.integers(0, (1 << 31) - 1, size=256, dtype=np.uint64)
_SHINGLE_MIX = _RNG.integers(1, 1 << 31, size=16, dtype=np.uint64) | np.uint64(1)
_BAND_MIX = _RNG.integers(1, 1 << 31, size=64, dtype=np.uint64) | np.uint64(1)
_MASK32 = np.uint64(0xFFFFFFFF)


def word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter((zlib.crc32(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))


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
    """MinHash over `perms` universal hashes (a*x + b mod 2**31-1); empty input gives all-max."""
    if len(shingles) == 0:
        return np.full(perms, np.iinfo(np.uint64).max, dtype=np.uint64)
    a, b = _A[:perms, None], _B[:perms, None]
    return ((a * (shingles[None, :] % PRIME) + b) % PRIME).min(axis=1)


def band_keys(sig: np.ndarray, bands: int) -> list[int]:
    """One signed 63-bit key per band (SQLite INTEGER); equal bands give equal keys."""
    rows = sig.reshape(bands, -1)
    mixed = (rows * _BAND_MIX[: rows.shape[1]]).sum(axis=1)  # wraps mod 2**64
    return [int(k) & 0x7FFF_FFFF_FFFF_FFFF for k in mixed]


def similarity(sig: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of sig against each row of others."""
    return (others == sig[None, :]).mean(axis=1)
