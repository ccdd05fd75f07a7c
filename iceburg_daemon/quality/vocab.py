"""Words -> small integer ids, so the word-level filters (near and template MinHash, repetition n-grams) work on
numpy arrays: a batch's words are looked up once, and what each filter needs of a word (its hash, its length,
whether it is a number) is read from per-id tables instead of being computed word by word in Python."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

LIMIT = 200_000  # the memo is cleared past this many words: the daemon is long-lived


@dataclass
class Encoded:
    ids: np.ndarray  # int64, every text's word ids one after another
    sizes: np.ndarray  # int64, words per text
    hashes: np.ndarray  # uint64, crc32 of each word (stored signatures depend on it: never change it)
    lengths: np.ndarray  # int64, characters of each word
    numbers: np.ndarray  # bool, the word is all digits (a template's number slot)
    distinct: int  # ids are below this

    def split(self, k: int) -> tuple[Encoded, Encoded]:
        """The first k texts and the rest (their ids stay comparable: they come from one encode call)."""
        cut = int(self.sizes[:k].sum())
        return self._part(slice(None, cut), slice(None, k)), self._part(slice(cut, None), slice(k, None))

    def select(self, texts: list[int]) -> Encoded:
        """These texts only, in this order."""
        picked = np.asarray(texts, dtype=np.int64)
        sizes = self.sizes[picked]
        starts = (np.cumsum(self.sizes) - self.sizes)[picked]
        at = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        return Encoded(self.ids[at], sizes, self.hashes[at], self.lengths[at], self.numbers[at], self.distinct)

    def _part(self, words: slice, texts: slice) -> Encoded:
        return Encoded(self.ids[words], self.sizes[texts], self.hashes[words], self.lengths[words],
                       self.numbers[words], self.distinct)


class Vocab(dict):  # type: ignore[type-arg]
    """Word -> id, memoised across calls; ids agree within one `encode` call only (the memo may be cleared
    between calls)."""

    def __init__(self) -> None:
        super().__init__()
        self._tables = self._empty(1024)  # hash, length, number: rows past len(self) are unused capacity
        self._new: list[str] = []

    @staticmethod
    def _empty(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros(capacity, np.uint64), np.zeros(capacity, np.int64), np.zeros(capacity, bool)

    def __missing__(self, word: str) -> int:
        value = self[word] = len(self)
        self._new.append(word)
        return value

    def encode(self, token_lists: list[list[str]]) -> Encoded:
        if len(self) > LIMIT:
            self.clear()
        sizes = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        ids = np.fromiter(map(self.__getitem__, itertools.chain.from_iterable(token_lists)), dtype=np.int64,
                          count=int(sizes.sum()))
        if self._new:
            self._add(self._new)
            self._new = []
        hashes, lengths, numbers = self._tables
        return Encoded(ids, sizes, hashes[ids], lengths[ids], numbers[ids], len(self))

    def _add(self, new: list[str]) -> None:
        """Table rows for the words this call saw first (capacity doubles, so growing costs little)."""
        end, start = len(self), len(self) - len(new)
        if end > len(self._tables[0]):
            grown = self._empty(max(end, 2 * len(self._tables[0])))
            for old, table in zip(self._tables, grown):
                table[:start] = old[:start]
            self._tables = grown
        hashes, lengths, numbers = self._tables
        hashes[start:end] = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in new), np.uint64, len(new))
        lengths[start:end] = np.fromiter(map(len, new), np.int64, len(new))
        numbers[start:end] = np.fromiter(map(str.isdecimal, new), bool, len(new))


VOCAB = Vocab()  # one per process (workers have their own); not thread-safe: the filter runs in one thread


def encode(token_lists: list[list[str]]) -> Encoded:
    return VOCAB.encode(token_lists)
