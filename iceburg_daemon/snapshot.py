"""Freeze a role's accepted records into a run's dataset: train/eval (and preference) files plus a manifest.

The eval split is chosen by content hash and is permanent: a record once held out (table eval_records) stays
in every later eval set, whatever eval_percent says then, so no run ever trains on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def freeze(store: Store, role: str, eval_percent: float, run_dir: Path, now: float) -> Snapshot:
    held = store.eval_record_ids()
    files: dict[str, list[dict[str, Any]]] = {"train": [], "eval": [], "preference": [], "preference_eval": []}
    hashes: dict[str, list[str]] = {k: [] for k in files}
    eval_ids: list[int] = []
    for row in store.accepted_training_records(role):
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
        files[name].append({"id": row["id"], "hash": row["content_hash"], **item})
        hashes[name].append(row["content_hash"])
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        (run_dir / f"{name}.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
                                               encoding="utf-8")
    digest = hashlib.sha256(json.dumps({k: sorted(v) for k, v in hashes.items()}, sort_keys=True).encode())
    snap = Snapshot(digest.hexdigest()[:16], len(files["train"]), len(files["eval"]), len(files["preference"]),
                    eval_ids)
    manifest = {"snapshot_id": snap.snapshot_id, "role": role, "created_at": now, "eval_percent": eval_percent,
                "train_count": snap.train_count, "eval_count": snap.eval_count,
                "preference_count": snap.preference_count, "preference_eval_count": len(files["preference_eval"]),
                "records": hashes}
    (run_dir / "snapshot.json").write_text(json.dumps(manifest, indent=1))
    return snap
