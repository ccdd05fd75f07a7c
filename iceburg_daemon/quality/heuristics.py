"""Filter 6, repetition and junk (Gopher-style ratios): answer text -> Finding when it is repetitive or not prose.

Code blocks are left out of every ratio; word-level checks run only on space-separated scripts, so a Chinese
or Japanese answer is not judged by English word lengths, and stop words come from several languages.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import without_code, words

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


def _ngram_shares(tokens: list[str]) -> tuple[dict[int, float], dict[int, float]]:
    """Gopher's top n-gram and duplicated n-gram character shares (zip over slices keeps the loops in C)."""
    lengths = [len(t) for t in tokens]
    chars = sum(lengths) or 1
    top: dict[int, float] = {}
    for n in TOP_NGRAM_LIMITS:
        grams = Counter(zip(*(tokens[i:] for i in range(n))))
        top[n] = max((sum(map(len, g)) * c for g, c in grams.items() if c > 1), default=0) / chars
    dup = dict.fromkeys(DUP_NGRAM_LIMITS, 0.0)
    for n in sorted(DUP_NGRAM_LIMITS):
        grams = list(zip(*(tokens[i:] for i in range(n))))
        if len(set(grams)) == len(grams):
            break  # no repeated n-gram, hence no repeated longer one either
        covered = bytearray(len(tokens))
        seen: set[tuple[str, ...]] = set()
        for i, gram in enumerate(grams):
            if gram in seen:
                covered[i:i + n] = b"\x01" * n
            else:
                seen.add(gram)
        dup[n] = sum(length for length, c in zip(lengths, covered) if c) / chars
    return top, dup


def check_repetition(text: str, q: Any) -> tuple[Finding | None, dict[str, float]]:
    prose = without_code(text)
    scores: dict[str, float] = {}
    visible = len("".join(prose.split())) or 1
    scores["alpha_share"] = len(NOT_LETTER.sub("", prose)) / visible
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
    tokens = words(prose)
    spaced = prose.count(" ") >= max(len(prose) // 40, 1)  # CJK text has few spaces: no word statistics
    if len(tokens) >= 50:
        top, dup = _ngram_shares(tokens)
        for n, share in top.items():
            scores[f"top_{n}gram_share"] = share
            if share > TOP_NGRAM_LIMITS[n]:
                return Finding("repetition", "repeated_ngrams", f"top {n}-gram covers {share:.2f}", score=share), scores
        for n, share in dup.items():
            scores[f"dup_{n}gram_share"] = share
            if share > DUP_NGRAM_LIMITS[n]:
                return Finding("repetition", "repeated_ngrams", f"duplicated {n}-grams cover {share:.2f}",
                               score=share), scores
    if spaced and len(tokens) >= 20:
        mean = sum(len(t) for t in tokens) / len(tokens)
        scores["mean_word_length"] = mean
        if not 2.5 <= mean <= 12:
            return Finding("repetition", "word_length", f"mean word length {mean:.1f}", score=mean), scores
        stops = sum(t in STOP_WORDS for t in tokens)
        if stops < 2 and prose.isascii():
            return Finding("repetition", "no_stop_words", f"{stops} stop words in {len(tokens)} words",
                           score=stops), scores
        body = HEADING.sub("", prose)  # Markdown headings are structure, not junk
        symbols = (body.count("...") + body.count("…") + body.count("#")) / len(tokens)
        scores["symbol_ratio"] = symbols
        if symbols > 0.1:
            return Finding("repetition", "symbols", f"{symbols:.2f} symbols per word", score=symbols), scores
    return None, scores
