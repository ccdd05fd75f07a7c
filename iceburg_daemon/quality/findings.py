"""The result of one filter on one record: nothing (pass) or a Finding (reject, with reason and score)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    filter: str  # structure, quality_signals, exact_dedup, near_dedup, template, repetition, secrets, semantic, role
    reason: str  # stable reason code (a metric label value: a closed set per filter)
    detail: str
    score: float | None = None
    duplicate_of: int | None = None  # record id this one duplicates
    cluster_id: int | None = None  # template cluster
