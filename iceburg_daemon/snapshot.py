"""Freeze a role's accepted records into a run's dataset: train/eval (and preference) files plus a manifest.

The eval split is chosen by content hash and is permanent: a record once held out (table eval_records) stays
in every later eval set, whatever eval_percent says then, so no run ever trains on it.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from iceburg_daemon.store import Store


@dataclass
class Snapshot:
    snapshot_id: str
    train_count: int
    eval_count: int
    preference_count: int
    eval_ids: list[int]


def in_eval_bucket(content_hash: str, eval_percent: float) -> bool:
    return int(content_hash[:8], 16) % 10_000 < eval_percent * 100


def freeze(store: Store, role: str, eval_percent: float, run_dir: Path, now: float,
           on_progress: Callable[[], object] = lambda: None) -> Snapshot:
    """Stream the role's accepted records into the run's files (only their hashes stay in memory: a role may hold
    hundreds of thousands); `on_progress` runs every few thousand records (the daemon beats its heartbeat)."""
    held = store.eval_record_ids()
    names = ("train", "eval", "preference", "preference_eval")
    hashes: dict[str, list[str]] = {k: [] for k in names}
    eval_ids: list[int] = []
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        out = {k: stack.enter_context(open(run_dir / f"{k}.jsonl", "w", encoding="utf-8")) for k in names}
        for n, row in enumerate(store.accepted_training_records(role)):
            if n % 5000 == 4999:
                on_progress()
            record = json.loads(row["canonical"])
            held_out = row["id"] in held or in_eval_bucket(row["content_hash"], eval_percent)
            if held_out:
                eval_ids.append(row["id"])
            if record["kind"] == "preference":
                name = "preference_eval" if held_out else "preference"
                item = {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
            else:
                name = "eval" if held_out else "train"
                item = {"messages": record["messages"]}
            out[name].write(json.dumps({"id": row["id"], "hash": row["content_hash"], **item}, ensure_ascii=False)
                            + "\n")
            hashes[name].append(row["content_hash"])
    digest = hashlib.sha256(json.dumps({k: sorted(v) for k, v in hashes.items()}, sort_keys=True).encode())
    snap = Snapshot(digest.hexdigest()[:16], len(hashes["train"]), len(hashes["eval"]), len(hashes["preference"]),
                    eval_ids)
    manifest = {"snapshot_id": snap.snapshot_id, "role": role, "created_at": now, "eval_percent": eval_percent,
                "train_count": snap.train_count, "eval_count": snap.eval_count,
                "preference_count": snap.preference_count, "preference_eval_count": len(hashes["preference_eval"]),
                "records": hashes}
    (run_dir / "snapshot.json").write_text(json.dumps(manifest, indent=1))
    return snap
