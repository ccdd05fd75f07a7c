"""Generated answers -> degeneration metrics: the failure ICEBURG's old models showed (templated, repetitive,
empty answers). Template echo reuses the truth filter's own skeleton sketches on the model's outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from iceburg_daemon.quality.dedup import template_sketches, topic_words
from iceburg_daemon.quality.text import words
from iceburg_daemon.quality.vocab import encode

REPEAT_N = 3  # within-answer repeated word trigrams


def distinct_n(token_lists: list[list[str]], n: int) -> float | None:
    """Distinct n-grams over all n-grams of all answers (Li et al. 2016); None when there are none."""
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(tokens: list[str], n: int = REPEAT_N) -> float:
    """Share of an answer's n-grams that repeat an earlier one of the same answer (0 = no loop)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def template_echo(outputs: list[tuple[str, str]], rejected: list[tuple[str, str]], threshold: float) -> float:
    """Share of (prompt, answer) outputs whose answer skeleton (prompt topic words masked, numbers as #) is at
    least `threshold` similar to the skeleton of a record the truth filter rejected as a template."""
    if not outputs or not rejected:
        return 0.0
    both = outputs + rejected
    enc = encode([words(a) for _, a in both] + [topic_words(p) for p, _ in both])
    answers, topics = enc.split(len(both))
    sigs = np.stack([sig for _, sig in template_sketches(answers, topics)])
    mine, theirs = sigs[: len(outputs)], sigs[len(outputs) :]
    echoed = 0
    for sig in mine:  # MinHash: the share of equal slots estimates the skeletons' Jaccard similarity
        if (sig[None, :] == theirs).mean(axis=1).max() >= threshold:
            echoed += 1
    return echoed / len(outputs)


def degeneration(outputs: list[dict[str, Any]], rejected_templates: list[tuple[str, str]],
                 template_threshold: float) -> dict[str, float]:
    """outputs: {"prompt", "answer", "finished"} per generated suite answer (finished: ended by the model, not
    by max_new_tokens). Empty outputs give an empty dict: no answers, nothing to guard."""
    if not outputs:
        return {}
    tokens = [words(o["answer"]) for o in outputs]
    return {
        "distinct_1": distinct_n(tokens, 1) or 0.0,
        "distinct_2": distinct_n(tokens, 2) or 0.0,
        "repeated_ngram_rate": float(np.mean([repeated_ngram_rate(t) for t in tokens])),
        "mean_chars": float(np.mean([len(o["answer"]) for o in outputs])),
        "empty_rate": sum(1 for o in outputs if not o["answer"].strip()) / len(outputs),
        "unterminated_rate": sum(1 for o in outputs if not o.get("finished", True)) / len(outputs),
        "template_echo": template_echo([(o["prompt"], o["answer"]) for o in outputs], rejected_templates,
                                       template_threshold),
    }
