"""Filter 6, repetition and junk (Gopher-style ratios): answer text -> Finding when it is repetitive or not prose.

Code blocks are left out of every ratio; word-level checks run only on space-separated scripts, so a Chinese
or Japanese answer is not judged by English word lengths, and stop words come from several languages.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import without_code, words
from iceburg_daemon.quality.vocab import Encoded, encode

STOP_WORDS = frozenset(
    "the be to of and a in that have with this for is are was it on as not but by from at an or "  # en
    "le la les de des du et un une est que qui dans pour pas sur "  # fr
    "der die das und ist nicht ein eine zu den mit von sich auf "  # de
    "el los las y es en que por con para una del se "  # es
    "il di che e per non sono della "  # it
    "o os as um uma com não "  # pt
    "het een en van ik je dat niet op".split()  # nl
)
# Gopher's limits for the share of characters in duplicated n-grams, n = 5..10.
DUP_NGRAM_LIMITS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
TOP_NGRAM_LIMITS = {2: 0.20, 3: 0.18, 4: 0.16}
NOT_LETTER = re.compile(r"[\W\d_]+")
HEADING = re.compile(r"^\s*#{1,6}\s", re.MULTILINE)
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not chr(c).isalpha())


def _letters_and_visible(text: str) -> tuple[int, int]:
    """Letters (what NOT_LETTER keeps) and non-space characters; ASCII text takes a C fast path."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw.translate(None, _ASCII_NOT_LETTER)), len(raw.translate(None, _ASCII_SPACE))
    return len(NOT_LETTER.sub("", text)), len("".join(text.split()))


def _dup_share(items: list[str]) -> float:
    """Share of characters in items that repeat an earlier item."""
    seen: set[str] = set()
    dup = total = 0
    for item in items:
        total += len(item)
        if item in seen:
            dup += len(item)
        seen.add(item)
    return dup / total if total else 0.0


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(keys)'s return_index, return_inverse and return_counts, for non-negative int64 keys. Each key is
    packed with its position into one int64 and sorted by value (SIMD-sorted, and the position breaks ties, so
    no stable argsort is needed): 2-4x faster than np.unique on a batch's 150k n-grams. Keys too large to pack
    go to np.unique."""
    n = len(keys)
    bits = max(int(n).bit_length(), 1)
    if not n or int(keys.max()) >= 1 << (63 - bits) or int(keys.min()) < 0:
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        return first, inverse, counts
    packed = np.sort((keys.astype(np.int64) << bits) | np.arange(n, dtype=np.int64))
    order, ordered = packed & ((1 << bits) - 1), packed >> bits
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, n))
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = np.repeat(np.arange(len(starts)), counts)
    return order[starts], inverse, counts


def ngram_shares(enc: Encoded) -> list[tuple[dict[int, float], dict[int, float]]]:
    """Gopher's top n-gram and duplicated n-gram character shares for many texts (their encoded words) at once.

    All texts' word ids sit in one array. An n-gram can only repeat where its first n-1 words repeat, so each n
    looks only at those positions, and gives each n-gram there an exact id: the rank of (id of its first n-1
    words, its last word), with the text's index leading so n-grams never match across texts."""
    count = len(enc.sizes)
    sizes, ids, lengths, total = enc.sizes, enc.ids, enc.lengths, len(enc.ids)
    text = np.repeat(np.arange(count), sizes)
    left = np.repeat(np.cumsum(sizes), sizes) - np.arange(total)  # tokens from each position to its text's end
    chars = np.bincount(text, weights=lengths, minlength=count)
    chars[chars == 0] = 1
    cum = np.concatenate(([0], np.cumsum(lengths)))
    top = {n: np.zeros(count) for n in TOP_NGRAM_LIMITS}
    dup = {n: np.zeros(count) for n in DUP_NGRAM_LIMITS}
    base = enc.distinct + 1
    at = np.arange(total)  # positions whose (n-1)-gram occurs more than once (all, for words)
    rank = text * base + ids  # id of the (n-1)-gram at each position of `at`
    for n in range(1, max(DUP_NGRAM_LIMITS) + 1):
        keys = rank if n == 1 else rank * base + ids[at + n - 1]
        first, inverse, counts = _group(keys)
        if n in TOP_NGRAM_LIMITS:
            rep = np.flatnonzero(counts > 1)
            start = at[first[rep]]  # every occurrence of an n-gram has the same characters
            np.maximum.at(top[n], text[start], (cum[start + n] - cum[start]) * counts[rep])
        if n in DUP_NGRAM_LIMITS:
            later = at[first[inverse] != np.arange(len(at))]  # occurrences after the first
            if not len(later):
                break  # no repeated n-gram, hence no repeated longer one either
            edges = np.zeros(total + 1, dtype=np.int64)
            np.add.at(edges, later, 1)
            np.add.at(edges, later + n, -1)
            covered = np.cumsum(edges[:-1]) > 0
            dup[n] = np.bincount(text[covered], weights=lengths[covered], minlength=count)
        keep = (counts[inverse] > 1) & (left[at] > n)  # repeated, and an (n+1)-gram fits after it
        at, rank = at[keep], inverse[keep]
        if not len(at):
            break
    tops = (np.stack(list(top.values())) / chars).T.tolist()  # one division for all: ~15 us a text otherwise
    dups = (np.stack(list(dup.values())) / chars).T.tolist()
    return [(dict(zip(top, t)), dict(zip(dup, d))) for t, d in zip(tops, dups)]


def check_repetition_batch(texts: list[str], q: Any, token_lists: list[list[str]] | None = None,
                           encoded: Encoded | None = None) -> list[tuple[Finding | None, dict[str, float]]]:
    """Filter 6 for many answers; token_lists: their `words()` when already known (saves a tokenisation), and
    encoded: those words encoded (saves encoding them again)."""
    results: list[tuple[Finding | None, dict[str, float]]] = []
    pending: list[tuple[int, str, list[str]]] = []  # (result index, prose, tokens) still to judge by words
    reused = True  # every long text's words are those of token_lists
    for i, text in enumerate(texts):
        prose = without_code(text) if "```" in text else text
        finding, scores = _by_lines(prose, q)
        results.append((finding, scores))
        if finding is None:
            known = token_lists[i] if token_lists is not None and prose is text else None
            tokens = known if known is not None else words(prose)
            reused &= known is not None or len(tokens) < 50
            pending.append((i, prose, tokens))
    long = [(i, tokens) for i, _, tokens in pending if len(tokens) >= 50]
    shares = iter([])
    if long:
        enc = encoded.select([i for i, _ in long]) if encoded is not None and reused else \
            encode([tokens for _, tokens in long])
        shares = iter(ngram_shares(enc))
    for i, prose, tokens in pending:
        results[i] = _by_words(prose, tokens, next(shares) if len(tokens) >= 50 else None, results[i][1])
    return [(finding, {k: round(v, 4) for k, v in scores.items()}) for finding, scores in results]  # as stored


def _by_lines(prose: str, q: Any) -> tuple[Finding | None, dict[str, float]]:
    scores: dict[str, float] = {}
    letters, visible = _letters_and_visible(prose)
    scores["alpha_share"] = letters / (visible or 1)
    if len(prose.strip()) >= 40 and scores["alpha_share"] < q.min_alpha_share:
        return Finding("repetition", "non_text", f"{scores['alpha_share']:.2f} of characters are letters",
                       score=scores["alpha_share"]), scores
    lines = [line.strip() for line in prose.splitlines() if line.strip()]
    paragraphs = [p.strip() for p in prose.split("\n\n") if p.strip()]
    scores["dup_line_share"] = _dup_share(lines)
    scores["dup_paragraph_share"] = _dup_share(paragraphs)
    if len(lines) >= 4 and scores["dup_line_share"] > q.max_dup_line_share:
        return Finding("repetition", "repeated_lines", f"{scores['dup_line_share']:.2f} of characters",
                       score=scores["dup_line_share"]), scores
    if len(paragraphs) >= 3 and scores["dup_paragraph_share"] > q.max_dup_line_share:
        return Finding("repetition", "repeated_paragraphs", f"{scores['dup_paragraph_share']:.2f} of characters",
                       score=scores["dup_paragraph_share"]), scores
    return None, scores


def _by_words(prose: str, tokens: list[str], shares: Any, scores: dict[str, float]
              ) -> tuple[Finding | None, dict[str, float]]:
    if shares is not None:
        top, dup = shares
        for n, share in top.items():
            scores[f"top_{n}gram_share"] = share
            if share > TOP_NGRAM_LIMITS[n]:
                return Finding("repetition", "repeated_ngrams", f"top {n}-gram covers {share:.2f}", score=share), scores
        for n, share in dup.items():
            scores[f"dup_{n}gram_share"] = share
            if share > DUP_NGRAM_LIMITS[n]:
                return Finding("repetition", "repeated_ngrams", f"duplicated {n}-grams cover {share:.2f}",
                               score=share), scores
    spaced = prose.count(" ") >= max(len(prose) // 40, 1)  # CJK text has few spaces: no word statistics
    if spaced and len(tokens) >= 20:
        mean = sum(map(len, tokens)) / len(tokens)
        scores["mean_word_length"] = mean
        if not 2.5 <= mean <= 12:
            return Finding("repetition", "word_length", f"mean word length {mean:.1f}", score=mean), scores
        stops = 0
        for token in tokens:  # only "fewer than two" matters: stop counting at two
            stops += token in STOP_WORDS
            if stops == 2:
                break
        if stops < 2 and prose.isascii():
            return Finding("repetition", "no_stop_words", f"{stops} stop words in {len(tokens)} words",
                           score=stops), scores
        body = HEADING.sub("", prose) if "#" in prose else prose  # Markdown headings are structure, not junk
        symbols = (body.count("...") + body.count("…") + body.count("#")) / len(tokens)
        scores["symbol_ratio"] = symbols
        if symbols > 0.1:
            return Finding("repetition", "symbols", f"{symbols:.2f} symbols per word", score=symbols), scores
    return None, scores
