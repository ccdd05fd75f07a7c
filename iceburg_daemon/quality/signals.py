"""Filter 2, quality signals: a record's own quality_score against its role's threshold, and negative signals
(failed telemetry for the same prompt, hallucination patterns of the same agent) stored as signal records."""

from __future__ import annotations

import json
from typing import Any

from iceburg_daemon.quality.findings import Finding
from iceburg_daemon.quality.text import normalise

PROMPT_KEY_CHARS = 200  # ICEBURG's telemetry cuts prompt_text at 200 characters


def prompt_key(text: str) -> str:
    return normalise(text[:PROMPT_KEY_CHARS])


class NegativeSignals:
    """Failed prompts and hallucination patterns, loaded incrementally from the store's signal records."""

    def __init__(self) -> None:
        self.failed_prompts: set[str] = set()
        self.hallucinations: dict[str, set[str]] = {}
        self.last_id = 0  # every record up to this id has been looked at

    def refresh(self, store: Any) -> None:
        # Up to the newest record, not the newest signal: with no signal records at all, `id > last signal`
        # rescanned the whole table on every filter pass (42 % of the daemon's time at 1M records).
        top = store.max_record_id()
        for row in store.signal_records(self.last_id, top):
            rec = json.loads(row["canonical"])
            signal = rec.get("signal") or {}
            if signal.get("type") == "telemetry" and rec["signals"].get("success") is False:
                if isinstance(signal.get("prompt_text"), str):
                    self.failed_prompts.add(prompt_key(signal["prompt_text"]))
            elif signal.get("type") == "hallucination_pattern" and isinstance(signal.get("document"), str):
                self.hallucinations.setdefault(row["role"], set()).add(normalise(signal["document"])[:500])
        self.last_id = max(self.last_id, top)


def check_signals(record: dict[str, Any], prompt: str, answer: str, min_score: float,
                  negatives: NegativeSignals) -> Finding | None:
    score = record.get("signals", {}).get("quality_score")
    if score is not None and score < min_score:
        return Finding("quality_signals", "low_quality_score", f"quality_score {score} < {min_score}", score=score)
    if record.get("signals", {}).get("success") is False:
        return Finding("quality_signals", "failed_generation", str(record["signals"].get("error") or "success=false"))
    if negatives.failed_prompts and prompt_key(prompt) in negatives.failed_prompts:
        return Finding("quality_signals", "failed_generation", "telemetry reports this prompt failed")
    patterns = negatives.hallucinations.get(record["role"], set()) | negatives.hallucinations.get("general", set())
    if patterns:
        norm = normalise(answer)
        hit = next((p for p in patterns if p and p in norm), None)
        if hit:
            return Finding("quality_signals", "hallucination_pattern", f"answer contains a known pattern: {hit[:60]}")
    return None
