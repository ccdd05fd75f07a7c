"""progress.json (replaced atomically; the daemon polls it) and curves.jsonl (one line per step) in the run folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Progress:
    def __init__(self, run_dir: Path, *, enabled: bool = True, micro_interval_s: float = 2.0):
        self.run_dir, self.enabled, self.micro_interval_s = run_dir, enabled, micro_interval_s
        self.data: dict[str, Any] = {"phase": "starting", "pid": os.getpid()}

    def update(self, **fields: Any) -> None:
        self.data.update(fields, updated_at=time.time())
        if not self.enabled:
            return
        tmp = self.run_dir / ".progress.json.tmp"
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.run_dir / "progress.json")

    def micro(self, done: int, total: int) -> None:
        """Micro-batches done within the current step: a CPU step takes minutes, and this shows it moving.
        Written at most every micro_interval_s (a GPU micro-batch takes a fraction of a second)."""
        if time.time() - self.data.get("updated_at", 0.0) >= self.micro_interval_s:
            self.update(micro_done=done, micro_total=total)

    def step(self, **fields: Any) -> None:
        fields = {k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()}
        self.update(phase="training", micro_done=0, **fields)
        if self.enabled:
            with open(self.run_dir / "curves.jsonl", "a", encoding="utf-8") as f:
                keys = ("step", "epoch", "loss", "lr", "tokens", "tokens_per_s")
                f.write(json.dumps({k: fields[k] for k in keys}) + "\n")
        self.on_step(fields)

    def on_step(self, fields: dict[str, Any]) -> None:
        """Hook for in-process callers (benchmarks); the daemon reads the files."""

    def event(self, kind: str, **fields: Any) -> None:
        if self.enabled:
            with open(self.run_dir / "events.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"ts": time.time(), "event": kind, **fields}) + "\n")
