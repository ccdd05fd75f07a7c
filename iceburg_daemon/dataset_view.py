"""Store -> what `iceburgd data ...` reports: verdict stats, one record explained, exports (chat or alpaca)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from iceburg_daemon.quality.text import answer, prompt, turns
from iceburg_daemon.store import Store


def stats(store: Store, role: str | None = None, eval_percent: float = 10.0) -> dict[str, Any]:
    """Per role: verdict counts by reason, and accepted training records no run has trained on yet (outside
    the eval split: what the trigger's threshold counts)."""
    from iceburg_daemon.trigger.state import count_new

    roles: dict[str, Any] = {}
    for row in store.verdict_counts(role):
        entry = roles.setdefault(row["role"], {"accepted": 0, "rejected": 0, "reasons": {}})
        if row["verdict"] == "accept":
            entry["accepted"] += row["n"]
        else:
            entry["rejected"] += row["n"]
            entry["reasons"][row["reason"]] = row["n"]
    for name, entry in roles.items():
        entry["waiting_for_training"] = count_new(store, name, eval_percent)
    return {"roles": roles, "unfiltered": store.unfiltered_count(), "generation": store.generation()}


def explain(store: Store, record_id: int) -> dict[str, Any] | None:
    row = store.record(record_id)
    if row is None:
        return None
    history = [dict(v) for v in store.verdict_history(record_id)]
    for v in history:
        v["scores"] = json.loads(v["scores"])
    current = next((v for v in history if v["current"]), None)
    duplicate = None
    if current and current["duplicate_of"]:
        other = store.record(current["duplicate_of"])
        if other is not None:
            duplicate = {"id": other["id"], "source_ref": other["source_ref"], "answer": answer(
                json.loads(other["canonical"]))[:500]}
    return {"id": row["id"], "role": row["role"], "kind": row["kind"], "source": row["source"],
            "source_ref": row["source_ref"], "record": json.loads(row["canonical"]), "verdict": current,
            "history": history, "duplicate_of": duplicate}


def export(store: Store, role: str, verdict: str | None, fmt: str) -> Iterator[dict[str, Any]]:
    """Records of a role as training JSONL lines: chat {"messages"} or alpaca {"instruction","input","output"}."""
    for row in store.records_with_verdict(role, verdict):
        record = json.loads(row["canonical"])
        if fmt == "alpaca":
            system = next((m["content"] for m in turns(record) if m["role"] == "system"), "")
            item: dict[str, Any] = {"instruction": prompt(record), "input": "", "output": answer(record)}
            if system:
                item["system"] = system
        elif record["kind"] == "preference":
            item = {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
        else:
            item = {"messages": record["messages"]}
        item["id"] = row["id"]
        if verdict != "accept":
            item["verdict"], item["reason"] = row["verdict"], row["reason"]
        yield item
