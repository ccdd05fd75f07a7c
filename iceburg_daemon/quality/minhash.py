"""Word lists -> MinHash signatures (numpy, many texts per call) and LSH band keys, deterministic across processes
and machines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


# The hash family is data, not a random stream: signatures are stored, and NumPy does not promise that
# default_rng's streams stay the same across versions. The values (drawn once from default_rng(20261126)) live
# in minhash_constants.json; a test checks their SHA-256.
_CONSTANTS = json.loads((Path(__file__).with_name("minhash_constants.json")).read_text())
# Multiply-shift hashing: (a*x + b mod 2**64) >> 32 with odd a is universal and needs no slow modulo.
_A = np.array(_CONSTANTS["a"], dtype=np.uint64)
_B = np.array(_CONSTANTS["b"], dtype=np.uint64)
_SHIFT = np.uint64(32)
_SHINGLE_MIX = np.array(_CONSTANTS["shingle_mix"], dtype=np.uint64)
_BAND_MIX = np.array(_CONSTANTS["band_mix"], dtype=np.uint64)
CONSTANTS_SHA256 = "3d6fb7414b5d8829f89eac6c79df792ffd608fb484de18f507ab02e3cdf2978e"
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK63 = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


def shingle_hashes(wh: np.ndarray, sizes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of many texts, one after another (`sizes` words each) -> 32-bit hashes of each text's word
    n-grams (the whole text as one shingle when it is shorter than n), all texts in one array: (hashes, count
    per text). Repeats are kept: MinHash ignores them."""
    starts = np.cumsum(sizes) - sizes
    acc = np.zeros(len(wh), dtype=np.uint64)
    for j in range(min(n, len(wh))):  # acc[i] = sum_j wh[i + j] * mix[j], wrapping mod 2**64, for every start i
        # (min: a batch of fewer than n words in all made acc[:len - j] wrap round to a negative end)
        acc[: len(wh) - j] += wh[j:] * _SHINGLE_MIX[j]
    counts = np.maximum(sizes - n + 1, np.minimum(sizes, 1))
    short = np.flatnonzero((sizes < n) & (sizes > 0))
    for i in short:  # the whole text is one shingle: only the first len(text) words contribute
        acc[starts[i]] = np.sum(wh[starts[i] : starts[i] + sizes[i]] * _SHINGLE_MIX[: sizes[i]])
    keep = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return acc[keep] & _MASK32, counts


def signatures(hashes: np.ndarray, counts: np.ndarray, perms: int, chunk: int = 4096) -> np.ndarray:
    """MinHash signatures (texts x perms): per text, the minimum over its shingle hashes of `perms`
    multiply-shift hashes (values below 2**32; a text without shingles gives all-max)."""
    out = np.full((len(counts), perms), 0xFFFFFFFF, dtype=np.uint64)
    live = np.flatnonzero(counts)
    ends = np.cumsum(counts)
    starts = ends - counts
    buf = np.empty((perms, chunk), dtype=np.uint64)
    i = 0
    while i < len(live):  # texts grouped so one group's hashes fit the buffer (kept small: cache-resident)
        j = max(i + 1, int(np.searchsorted(ends[live], starts[live[i]] + chunk, side="right")))
        lo, hi = starts[live[i]], ends[live[j - 1]]
        if hi - lo > buf.shape[1]:
            buf = np.empty((perms, hi - lo), dtype=np.uint64)
        hashed = buf[:, : hi - lo]
        with np.errstate(over="ignore"):
            np.multiply(_A[:perms, None], hashes[None, lo:hi], out=hashed)
            hashed += _B[:perms, None]
        hashed >>= _SHIFT
        out[live[i:j]] = np.minimum.reduceat(hashed, starts[live[i:j]] - lo, axis=1).T
        i = j
    return out


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """Signatures (n x perms) -> LSH keys (n x bands): equal bands give equal keys, and the band number is mixed
    in so one key space serves all bands. Non-negative 63-bit values."""
    rows = sigs.reshape(len(sigs), bands, sigs.shape[1] // bands)
    with np.errstate(over="ignore"):
        mixed = (rows * _BAND_MIX[: rows.shape[2]]).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64
        band_no = np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (mixed & _MASK63) ^ (band_no & _MASK63)
