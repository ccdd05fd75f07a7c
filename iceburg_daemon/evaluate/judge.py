"""The optional pairwise judge: a model served by Ollama reads one question and two answers and names the
better one. Each pair is judged in both orders, so a judge that always prefers the first (or second) answer
scores the candidate 1 of 2 instead of 2 or 0: position bias cancels out.

Runs in the evaluation child, after the answers exist; the verdicts are cached like every other result."""

from __future__ import annotations

import re
from typing import Any, Callable

PROMPT = ("You compare two answers to the same question for an expert research assistant. Judge accuracy, "
          "evidence and clarity; ignore length. Reply with exactly one letter: A or B.\n\n"
          "Question:\n{question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nWhich answer is better, A or B?")
LETTER = re.compile(r"\b([AB])\b")


def judge_key(gen_key: str, baseline_weights: str) -> str:
    """Cache key of one candidate-vs-baseline verdict (under the candidate's weights)."""
    return f"{gen_key}:vs:{baseline_weights[:16]}"


def pick(reply: str) -> str | None:
    """The letter the judge chose, or None when it did not answer with one."""
    found = LETTER.search(reply.strip().upper()[:40])
    return found.group(1) if found else None


def judge_pair(ask: Callable[[str], str], question: str, candidate: str, baseline: str) -> dict[str, Any]:
    """{wins: 0-2 (candidate preferred, over both orders), picks: [first order, second order], consistent}."""
    first = pick(ask(PROMPT.format(question=question, a=candidate, b=baseline)))  # candidate is A
    second = pick(ask(PROMPT.format(question=question, a=baseline, b=candidate)))  # candidate is B
    wins = int(first == "A") + int(second == "B")
    return {"wins": wins, "picks": [first, second], "consistent": (first, second) in (("A", "B"), ("B", "A"))}
