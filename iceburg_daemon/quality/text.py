"""Canonical record -> the texts the filters look at (prompt, answer), normalised forms and word lists."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)
CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def turns(record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation as one message list (a preference record: prompt + chosen answer)."""
    if record["kind"] == "preference":
        return [*record["prompt"], *record["chosen"]]
    return list(record.get("messages") or [])


def answer(record: dict[str, Any]) -> str:
    msgs = turns(record)
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else ""


def prompt(record: dict[str, Any]) -> str:
    """The last user turn before the final answer."""
    users = [m["content"] for m in turns(record) if m["role"] == "user"]
    return users[-1] if users else ""


_ASCII_PUNCT = bytes.maketrans(bytes(c for c in range(128) if _PUNCT.match(chr(c))),
                               b" " * sum(1 for c in range(128) if _PUNCT.match(chr(c))))


def normalise(text: str) -> str:
    """Case, accents-as-written, whitespace and punctuation folded: the key of exact duplicates."""
    if text.isascii():  # the same result as the regexes below, in C (NFKC and casefold change no ASCII text)
        return " ".join(text.lower().encode("ascii").translate(_ASCII_PUNCT).decode("ascii").split())
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


_ASCII_NOT_WORD = bytes.maketrans(bytes(c for c in range(128) if not WORD.match(chr(c))),
                                  b" " * sum(1 for c in range(128) if not WORD.match(chr(c))))


def words(text: str) -> list[str]:
    """The casefolded \\w+ runs of text (ASCII text: the same list, split in C)."""
    if text.isascii():
        return text.lower().encode("ascii").translate(_ASCII_NOT_WORD).decode("ascii").split()
    return WORD.findall(text.casefold())


def without_code(text: str) -> str:
    """Prose only: code blocks repeat lines and symbols by nature and are judged by nothing here."""
    return CODE_BLOCK.sub(" ", text)
