"""Filter 1, structure: canonical record -> Finding for broken turns, bad lengths, error outputs, refusals."""

from __future__ import annotations

import re
from typing import Any

from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import answer, turns

ERROR_OUTPUT = re.compile(
    r"(?P<agent_error>\[[A-Z][A-Z _\-]{1,30} ERROR\])"
    r"|(?P<traceback>Traceback \(most recent call last\))"
    r"|(?P<http_error>\b5\d\d (?:Server|Internal) Error\b|Internal Server Error|\bHTTP(?: status)? 5\d\d\b)",
    re.IGNORECASE,
)
EXCEPTION_ANSWER = re.compile(r"\W*(?:Error|Exception|[A-Z]\w*(?:Error|Exception)): ")  # the whole answer is one
# Generated pages whose slots were never filled: headings with nothing under them, or "Unknown Principle".
EMPTY_SECTION = re.compile(r"^#{1,6} [^\n]*\n\s*(?=^#{1,6} |\Z)", re.MULTILINE)
PLACEHOLDER = re.compile(r"\bunknown[_ ]principle\b|\{\{\s*\w+\s*\}\}|\bincluding  to\b", re.IGNORECASE)
REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry,?\s*(?:but\s*)?|sorry,?\s*|unfortunately,?\s*)?"
    r"(?:i (?:do not|don'?t) (?:know|have (?:enough )?information)|i (?:can ?no|can'?)t (?:help|answer|assist|"
    r"provide)|i am (?:not able|unable) to|i'?m (?:not able|unable) to|as an ai(?: language model)?\b|"
    r"i have no (?:information|idea))",
    re.IGNORECASE,
)


def check_structure(record: dict[str, Any], q: Any) -> Finding | None:
    msgs = turns(record)
    if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
        return Finding("structure", "missing_user_turn", "no non-empty user turn")
    final = answer(record).strip()
    if not final:
        return Finding("structure", "missing_answer", "the last turn is not a non-empty assistant answer")
    roles = [m["role"] for m in msgs]
    if "system" in roles[1:] or roles[1 if roles[0] == "system" else 0] != "user":
        return Finding("structure", "bad_role_order", " > ".join(roles)[:200])
    total = sum(len(m["content"]) for m in msgs)
    if len(final) < q.min_answer_chars:
        return Finding("structure", "too_short", f"answer has {len(final)} characters", score=len(final))
    if total > q.max_chars or total / 4 > q.max_tokens:  # about 4 characters a token for English
        return Finding("structure", "too_long", f"{total} characters (~{total // 4} tokens)", score=total)
    lower = final.lower()  # cheap substring checks keep the regexes off most answers
    error = ERROR_OUTPUT.search(final) if "error" in lower or "traceback" in lower else None
    if error or ("error" in lower or "exception" in lower) and EXCEPTION_ANSWER.match(final):
        return Finding("structure", "error_output", error.lastgroup if error else "exception")
    empty = len(EMPTY_SECTION.findall(final)) if "#" in final else 0
    if empty >= 2 or ("unknown" in lower or "{{" in final or "  to" in final) and PLACEHOLDER.search(final):
        return Finding("structure", "empty_template", f"{empty} empty sections or an unfilled slot", score=empty)
    if q.reject_refusals and REFUSAL.match(final):
        return Finding("structure", "refusal", final[:80])
    return None
