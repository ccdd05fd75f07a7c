"""Checkpoints in the run folder: adapter weights, optimizer, scheduler, RNG and loop position, written atomically
(a folder is renamed into place only when complete) so a kill at any moment leaves the last one usable."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from iceburg_daemon.fsutil import fsync_path

KEEP = 2


def save(run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step-{state['global_step']:07d}"
    if final.exists():
        return final
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        fsync_path(f)
    os.rename(tmp, final)
    fsync_path(root)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file())
    return done[-1] if done else None


def load(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")))
    saved = torch.load(path / "trainer.pt", weights_only=True)  # plain tensors and numbers: nothing to unpickle
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    return dict(json.loads((path / "state.json").read_text()))
