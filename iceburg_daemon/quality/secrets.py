"""Text -> the same text with secrets and personal data replaced by typed placeholders, plus what was found.

Applied at ingest to every string of a record (and to quarantine excerpts), so a secret never reaches the
store, an export, a log line or a metric label. The filter chain then accepts the redacted record or rejects it,
per `[quality] secrets`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

# (kind, pattern). Order matters: specific token formats before the generic ones.
PATTERNS: list[tuple[str, str]] = [
    ("private_key", r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|$)"),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    ("bearer_token", r"(?<=\b[Bb]earer )[A-Za-z0-9_\-\.=+/]{20,}"),
    ("url_password", r"(?<=://)[^\s:/@]+:[^\s@/]+(?=@)"),
    ("email", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"),
    ("phone", r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)[\s.\-]?|\d{2,4}[\s.\-])\d{3,4}[\s.\-]\d{3,4}(?![\w.])"),
]
PII_KINDS = {"email", "phone"}
_COMBINED = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in PATTERNS))
# A cheap pre-check: most text holds none of these, and one `in`/search avoids the big regex.
_HINT = re.compile(r"-----BEGIN|sk-|AKIA|ASIA|gh[pousr]_|github_pat_|xox|AIza|eyJ|[Bb]earer |://[^\s/]*@|@|\d{3}")


def redact(text: str, *, pii: bool = True) -> tuple[str, Counter[str]]:
    """Replace each secret with `[REDACTED:<kind>]`; returns the new text and counts per kind."""
    found: Counter[str] = Counter()
    if not _HINT.search(text):
        return text, found

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup or "secret"
        if not pii and kind in PII_KINDS:
            return match.group(0)
        found[kind] += 1
        return f"[REDACTED:{kind}]"

    return _COMBINED.sub(replace, text), found


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
