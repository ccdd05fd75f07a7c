"""Per-role evaluation suites (`<data_dir>/evals/<role>.jsonl`) -> validated items; an answer -> failed checks.

An item is `{"id", "messages": [...ending with a user turn], "checks": {...}, "reference"?, "max_new_tokens"?}`.
Checks: must_include / must_not_include (case-insensitive substrings), regex (each must match), json_schema (the
answer, code fences stripped, parsed and validated), max_chars, min_chars. Starters for the four roles ship in
the package and are copied into the data folder on first start; the user extends them there.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from iceburg_daemon.errors import EvaluationError
from iceburg_daemon.quality.secrets import redact

CHECKS = ("must_include", "must_not_include", "regex", "json_schema", "max_chars", "min_chars")
FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")
STARTER_ROLES = ("surveyor", "dissident", "synthesist", "oracle")


@dataclass(frozen=True)
class SuiteItem:
    id: str
    messages: list[dict[str, str]]
    checks: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    max_new_tokens: int | None = None

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def item_hash(self) -> str:
        """Identity of what is scored: messages and reference (a changed item is a new item for the cache)."""
        body = json.dumps([self.messages, self.reference], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


def install_starters(evals_dir: Path) -> list[Path]:
    """Copy the shipped starter suites into the data folder where none exists yet (never overwrites)."""
    evals_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for role in STARTER_ROLES:
        target = evals_dir / f"{role}.jsonl"
        if not target.exists():
            with resources.as_file(resources.files("iceburg_daemon.evaluate") / "starters" / f"{role}.jsonl") as src:
                shutil.copyfile(src, target)
            written.append(target)
    return written


def load_suite(path: Path) -> list[SuiteItem]:
    """Every item of a suite file, or EvaluationError listing every bad line at once. No file: no items."""
    if not path.exists():
        return []
    items, problems, seen = [], [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            item = _item(json.loads(line))
        except (ValueError, TypeError, KeyError, re.error, jsonschema.SchemaError) as exc:
            problems.append(f"{path.name}:{n}: {exc}")
            continue
        if item.id in seen:
            problems.append(f"{path.name}:{n}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if problems:
        raise EvaluationError("invalid suite items:\n  " + "\n  ".join(problems))
    return items


def _item(raw: Any) -> SuiteItem:
    if not isinstance(raw, dict):
        raise ValueError("an item is a JSON object")
    messages = raw["messages"]
    if (not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user",
                                                                                             "assistant")
            for m in messages) or messages[-1]["role"] != "user"):
        raise ValueError("messages: a list of {role, content} ending with a user turn")
    checks = raw.get("checks", {})
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    for key in ("regex",):
        for pattern in checks.get(key, []):
            re.compile(pattern)
    if "json_schema" in checks:
        jsonschema.validators.validator_for(checks["json_schema"]).check_schema(checks["json_schema"])
    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("reference: a string")
    # A secret pasted into a suite must not reach a model, Ollama or a report: redacted like ingested records.
    messages = [{**m, "content": redact(m["content"])[0]} for m in messages]
    reference = redact(reference)[0] if reference is not None else None
    return SuiteItem(id=str(raw["id"]), messages=messages, checks=checks, reference=reference,
                     max_new_tokens=raw.get("max_new_tokens"))


def failed_checks(item: SuiteItem, answer: str) -> list[str]:
    """The checks the answer fails, each as `name: what`; empty when it passes them all."""
    c, low, failed = item.checks, answer.lower(), []
    failed += [f"must_include: {s!r}" for s in c.get("must_include", []) if s.lower() not in low]
    failed += [f"must_not_include: {s!r}" for s in c.get("must_not_include", []) if s.lower() in low]
    failed += [f"regex: {p!r}" for p in c.get("regex", []) if not re.search(p, answer, re.MULTILINE)]
    if "max_chars" in c and len(answer) > c["max_chars"]:
        failed.append(f"max_chars: {len(answer)} > {c['max_chars']}")
    if "min_chars" in c and len(answer.strip()) < c["min_chars"]:
        failed.append(f"min_chars: {len(answer.strip())} < {c['min_chars']}")
    if "json_schema" in c:
        try:
            jsonschema.validate(json.loads(FENCE.sub("", answer)), c["json_schema"])
        except ValueError:
            failed.append("json_schema: not JSON")
        except jsonschema.ValidationError as exc:
            failed.append(f"json_schema: {exc.message[:120]}")
    return failed
