"""After training: eval losses (adapter vs base), the adapter, the merged model, and the run manifest."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from iceburg_daemon import curves as loss_chart
from iceburg_daemon.training.data import Example, row_tensors_data
from iceburg_daemon.training.model import token_loss_sum, weights_hash

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "safetensors", "tokenizers")


@torch.no_grad()
def mean_loss(model: Any, examples: list[Example], device: torch.device, pad_id: int) -> float | None:
    total, count = 0.0, 0
    for ex in examples:
        ids, labels, pos = (torch.tensor([c], device=device)
                            for c in row_tensors_data([ex], [0], len(ex.input_ids), pad_id))
        total += token_loss_sum(model, ids, labels, pos).item()
        count += ex.trained
    return total / count if count else None


def eval_losses(peft_model: Any, examples: list[Example], device: torch.device, pad_id: int) -> dict[str, Any]:
    peft_model.eval()
    adapted = mean_loss(peft_model, examples, device, pad_id)
    with peft_model.disable_adapter():
        base = mean_loss(peft_model, examples, device, pad_id)
    return {"eval_loss": adapted, "eval_loss_base": base, "eval_examples": len(examples),
            "eval_perplexity": math.exp(adapted) if adapted is not None and adapted < 50 else None}


def write_outputs(run_dir: Path, spec: dict[str, Any], peft_model: Any, tok: Any, base_folder: Path, trainer: Any,
                  metrics: dict[str, Any], report: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    """adapter/, merged/ (safetensors + tokenizer + chat template: what Ollama imports), manifest.json."""
    base_hash = weights_hash(base_folder)
    _replace_dir(run_dir / "adapter", lambda d: (peft_model.save_pretrained(d), tok.save_pretrained(d)))
    curves = _last_curve(run_dir)
    merged = peft_model.merge_and_unload()
    saved_dtype = base_dtype(base_folder)
    if saved_dtype is not None and saved_dtype != merged.dtype:
        merged = merged.to(saved_dtype)  # the base's own dtype (bf16/fp16): half the bytes Ollama imports
    _replace_dir(run_dir / "merged", lambda d: (merged.save_pretrained(d), tok.save_pretrained(d)))
    merged_hash = weights_hash(run_dir / "merged")
    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    manifest = {
        "run_id": spec["run_id"], "role": spec["role"],
        "base_model": {"ref": spec["base_model"], "path": str(base_folder), "weights_sha256": base_hash},
        "merged": {"weights_sha256": merged_hash, "dtype": str(merged.dtype).removeprefix("torch."),
                   "architectures": list(getattr(merged.config, "architectures", None) or [])},
        "dataset": {"snapshot_id": snapshot["snapshot_id"], "train": snapshot["train_count"],
                    "eval": snapshot["eval_count"], **report},
        "params": spec["params"], "training": spec["training"], "seed": spec["params"]["seed"],
        "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "gradient_checkpointing": trainer.state.get("gradient_checkpointing", False),
        "autocast": trainer.state.get("autocast"),
        "steps": len(trainer.plan), "rows_per_step": trainer.rows_per_step, "oom_retries": trainer.state["oom_retries"],
        "final": {**metrics, "train_loss": curves.get("loss")},
        "libraries": {name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(), "finished_at": time.time(),
    }
    tmp = run_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, run_dir / "manifest.json")
    loss_chart.write_png(run_dir / "curves.png", loss_chart.read(run_dir))  # the loss curve, for people


def base_dtype(folder: Path) -> torch.dtype | None:
    """The dtype the base's config.json declares (transformers 5 writes `dtype`, older ones `torch_dtype`)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(str(name))


def _replace_dir(final: Path, write: Any) -> None:
    tmp = final.with_name("." + final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


def _last_curve(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "curves.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(json.loads(lines[-1])) if lines else {}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
