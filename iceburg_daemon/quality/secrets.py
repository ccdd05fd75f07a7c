"""Text -> the same text with secrets and personal data replaced by typed placeholders, plus what was found.

Applied at ingest to every string of a record (and to quarantine excerpts), so a secret never reaches the
store, an export, a log line or a metric label. The filter chain then accepts the redacted record or rejects it,
per `[quality] secrets`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# Distinctive prefixes match even glued to a preceding word ("token=...", "0sk-ant-..." in a dump): hypothesis
# found keys that a leading \b let through. Only the generic `sk-` keeps \b ("risk-assessment-..." is prose).
# (kind, cheap hint, pattern). A pattern runs only on text holding its hint (a substring, or a tiny regex for
# phone numbers), which keeps redaction off the hot path for the vast majority of text.
PATTERNS: list[tuple[str, str, str]] = [
    ("private_key", "-----BEGIN",
     r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|$)"),
    ("anthropic_key", "sk-ant-", r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", "sk-", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("aws_access_key", "IA", r"(?:AKIA|ASIA)[0-9A-Z]{16}"),
    ("github_token", "_", r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("slack_token", "xox", r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("google_api_key", "AIza", r"AIza[0-9A-Za-z_\-]{35}"),
    ("jwt", "eyJ", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    ("bearer_token", "earer ", r"(?<=\b[Bb]earer )[A-Za-z0-9_\-\.=+/]{20,}"),
    ("url_password", "://", r"(?<=://)[^\s:/@]+:[^\s@/]+(?=@)"),
    ("email", "@", r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}(?![A-Za-z])"),
    ("phone", r"\d{3}[\s.\-)\\n]+\d{3}",
     r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)[\s.\-]?|\d{2,4}[\s.\-])\d{3,4}[\s.\-]\d{3,4}(?![\w.])"),
]
PII_KINDS = {"email", "phone"}
# Any hint at all, looked for once in a record's JSON: most records have none and skip redaction entirely.
# Plain substring tests (memchr-fast) plus one small regex; one big alternation was 20x slower.
_LITERAL_HINTS = ("-----BEGIN", "sk-", "xox", "eyJ", "earer ", "://", "@")
# Families with a literal prefix: one regex search each is faster than one substring test per member.
_PREFIX_HINTS = (re.compile(r"g(?:h[pousr]|ithub_pat)_"), re.compile(r"A(?:KIA|SIA|Iza)"))
# Phone hint: bytes mapped to digit '9', separator ' ' or other 'x', so one literal-prefixed regex finds
# "three digits, separators, three digits" without the per-position cost of a \d search.
_PHONE_MAP = bytes(ord("9") if chr(b).isdigit() else ord(" ") if chr(b) in " \t\r\n.-)\\" else ord("x")
                   for b in range(256))
_PHONE_HINT = re.compile(rb"999 +999")


def may_hold_secrets(text: str) -> bool:
    if any(map(text.__contains__, _LITERAL_HINTS)) or any(p.search(text) for p in _PREFIX_HINTS):
        return True
    return _PHONE_HINT.search(text.encode("utf-8").translate(_PHONE_MAP)) is not None


_COMPILED = [(kind, re.compile(hint) if kind == "phone" else hint, re.compile(pattern))
             for kind, hint, pattern in PATTERNS]


def redact(text: str, *, pii: bool = True) -> tuple[str, Counter[str]]:
    """Replace each secret with `[REDACTED:<kind>]`; returns the new text and counts per kind."""
    found: Counter[str] = Counter()
    for kind, hint, pattern in _COMPILED:
        if (hint not in text) if isinstance(hint, str) else not hint.search(text):
            continue
        if not pii and kind in PII_KINDS:
            continue
        text, count = pattern.subn(f"[REDACTED:{kind}]", text)
        if count:
            found[kind] += count
    return text, found


def redact_value(value: Any, found: Counter[str], *, pii: bool = True) -> Any:
    """Every string inside a JSON value, redacted in place of the original; counts added to `found`."""
    if isinstance(value, str):
        text, counts = redact(value, pii=pii)
        found.update(counts)
        return text
    if isinstance(value, list):
        return [redact_value(v, found, pii=pii) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v, found, pii=pii) for k, v in value.items()}
    return value
