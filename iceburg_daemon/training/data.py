"""Conversations -> token rows: the base's chat template, assistant-only labels, EOS, truncation, packing.

Labels are stored already shifted (`labels[t]` is the token predicted at position t), so a packed row never
asks one conversation to predict the first token of the next one.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

IGNORE = -100
CHATML_FALLBACK = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # shifted: labels[t] = input_ids[t + 1] where that token is trained, else IGNORE
    truncated: bool = False  # the start of the prompt was cut to fit max_length

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class Encoded:
    examples: list[Example] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count; nothing is dropped silently
    truncated: int = 0


def ensure_chat_template(tok: Any) -> bool:
    """A base without a chat template gets ChatML; returns True when it had to. No tokens are added (LoRA
    would leave their embeddings random): the markers are plain text and EOS is appended after each answer."""
    if getattr(tok, "chat_template", None):
        return False
    tok.chat_template = CHATML_FALLBACK
    return True


def _render(tok: Any, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str:
    return str(tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt))


def assistant_spans(tok: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendered text and the character spans of every assistant turn (its end-of-turn marker included).

    Needs a template whose renderings of prefixes are prefixes of the whole; otherwise only the final answer is
    trained; None when even that does not hold.
    """
    full = _render(tok, messages)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = _render(tok, messages[:i], True), _render(tok, messages[: i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            spans = []
            break
        spans.append((len(before), len(through)))
    if spans:
        return full, spans
    before = _render(tok, messages[:-1], True)
    if full.startswith(before) and messages and messages[-1]["role"] == "assistant":
        return full, [(len(before), len(full))]
    return None


def encode_conversation(tok: Any, messages: Sequence[dict[str, str]], max_length: int,
                        truncation: str = "left") -> Example | str:
    """One conversation -> Example, or the reason it cannot be trained on."""
    rendered = assistant_spans(tok, messages)
    if rendered is None:
        return "template_mismatch"
    text, spans = rendered
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    trained = [any(s <= start < e for s, e in spans) for start, _ in enc["offset_mapping"]]
    eos = tok.eos_token_id
    if eos is not None and eos not in [t for t, keep in zip(ids, trained) if keep]:
        # The template's end of turn is not the EOS token: append it, or generation would never stop.
        at = max(i for i, keep in enumerate(trained) if keep) + 1 if any(trained) else len(ids)
        ids.insert(at, eos)
        trained.insert(at, True)
    if not any(trained):
        return "no_assistant_tokens"
    cut = max(0, len(ids) - max_length)
    if cut:
        if truncation == "drop":
            return "too_long"
        if cut >= _last_span_start(trained):
            return "answer_too_long"  # the final answer (and the token that predicts its first) does not fit
        ids, trained = ids[cut:], trained[cut:]
    labels = [ids[t + 1] if trained[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example(ids, labels, truncated=cut > 0)


def _last_span_start(trained: list[bool]) -> int:
    """Index of the first token of the last run of trained tokens."""
    i = len(trained) - 1
    while i > 0 and not trained[i]:
        i -= 1
    while i > 0 and trained[i - 1]:
        i -= 1
    return i


def encode_file(tok: Any, path: Path, max_length: int, truncation: str) -> Encoded:
    out = Encoded()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        result = encode_conversation(tok, item["messages"], max_length, truncation)
        if isinstance(result, str):
            out.dropped[result] += 1
            continue
        out.truncated += result.truncated
        out.examples.append(result)
    return out


def epoch_order(examples: Sequence[Example], epoch: int, seed: int, order: str) -> list[int]:
    """Deterministic example order of one epoch (a resumed run recomputes the same order)."""
    idx = list(range(len(examples)))
    if order == "short_first":
        idx.sort(key=lambda i: (len(examples[i].input_ids), i))
    else:
        random.Random(seed * 1_000_003 + epoch).shuffle(idx)
    return idx


def pack(examples: Sequence[Example], order: Sequence[int], row_length: int, packing: bool) -> list[list[int]]:
    """Greedy, order-preserving packing: each row is a list of example indices totalling <= row_length tokens."""
    rows: list[list[int]] = []
    used = 0
    for i in order:
        n = len(examples[i].input_ids)
        if packing and rows and used + n <= row_length:
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def row_tensors_data(examples: Sequence[Example], row: Sequence[int], width: int,
                     pad_id: int) -> tuple[list[int], list[int], list[int]]:
    """input_ids, labels, position_ids of one row, padded to `width`; positions restart per example."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for i in row:
        ex = examples[i]
        ids += ex.input_ids
        labels += ex.labels
        pos += range(len(ex.input_ids))
    pad = width - len(ids)
    return ids + [pad_id] * pad, labels + [IGNORE] * pad, pos + list(range(pad))


def steps_of(rows: list[list[int]], rows_per_step: int) -> Iterator[list[list[int]]]:
    for start in range(0, len(rows), rows_per_step):
        yield rows[start : start + rows_per_step]
