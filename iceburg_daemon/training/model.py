"""Base model loading (local folder, imported GGUF, or Hugging Face cache), device choice, LoRA, the loss."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file


class BaseUnavailable(Exception):
    """The base model is neither a local folder nor in the Hugging Face cache (and downloads are off)."""


class DeviceUnavailable(Exception):
    """[training] device names a device this machine does not have (the run fails; the daemon goes on)."""


def pick_device(requested: str) -> tuple[torch.device, torch.dtype]:
    """auto: CUDA (bf16), else MPS (bf16 where the OS supports it, else fp32), else CPU (fp32)."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), torch.bfloat16
    if requested in ("auto", "mps") and torch.backends.mps.is_available():
        bf16 = torch.backends.mps.is_macos_or_newer(14, 0)
        return torch.device("mps"), torch.bfloat16 if bf16 else torch.float32
    if requested not in ("auto", "cpu"):
        raise DeviceUnavailable(f"device {requested!r} was requested but is not available on this machine")
    return torch.device("cpu"), torch.float32


def pick_attention(requested: str, device: torch.device) -> str:
    """auto: flex_attention on CUDA (Ampere or newer: packed rows isolated block-sparsely, 1.5x sdpa with an
    explicit mask on an H200), sdpa elsewhere (it takes the packed block mask on CPU and MPS)."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "flex_attention"
    return "sdpa"


def use_checkpointing(requested: str, device: torch.device) -> bool:
    """auto: on where activations live in the machine's own memory (CPU, MPS), off on CUDA (speed; an
    out-of-memory step is retried with half the micro-batch)."""
    return requested == "on" or (requested == "auto" and device.type != "cuda")


def load_base(ref: str, *, allow_download: bool, dtype: torch.dtype, attn: str = "sdpa") -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder). `ref` is a folder or a Hugging Face id; HF_HUB_OFFLINE is honoured."""
    local = Path(ref).expanduser()
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    source = str(local) if local.is_dir() else ref
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline,
                                                     attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise BaseUnavailable(_unavailable(ref, local, exc)) from exc
    folder = local if local.is_dir() else Path(cached_file(ref, "config.json", local_files_only=True)).parent
    return model, tok, folder


def _unavailable(ref: str, local: Path, exc: Exception) -> str:
    """What went wrong with the base, and what to do about it."""
    fixes = ["import the default with `iceburgd base import-gguf --default`",
             "point the role's base_model at a model folder"]
    if local.is_dir():
        problem = f"could not be loaded from {local} ({exc.__class__.__name__}: {str(exc)[:200]})"
    elif "/" in ref and not ref.startswith((".", "/", "~")):  # a Hugging Face id: it can be fetched
        problem = f"is not in the local Hugging Face cache ({exc.__class__.__name__})"
        fixes.insert(0, f"download it (`hf download {ref}`) or set [training] allow_download = true")
    else:
        problem = "was not found (no such folder under models/base/ or on disk)"
    return f"base model {ref!r} {problem}: " + "; or ".join(fixes)


def weights_hash(folder: Path) -> str:
    """Identity of the base: SHA-256 over its weight files (name and bytes, in name order)."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def add_lora(model: Any, params: dict[str, Any]) -> PeftModel:
    config = LoraConfig(r=params["lora_r"], lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"],
                        target_modules=list(params["target_modules"]), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def token_loss_sum(peft_model: Any, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                   chunk: int = 4096) -> torch.Tensor:
    """Sum of cross-entropy over trained tokens only: the LM head runs on labelled positions, in chunks, so the
    full (tokens x vocabulary) logits never exist. Packed rows are isolated by their restarting position_ids.

    `labels` may stay on the CPU: the trained positions are then found there, so nothing waits on the GPU
    (a boolean mask on a CUDA tensor synchronises the host every micro-batch)."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    flat = labels.reshape(-1)
    where = (flat != -100).nonzero().squeeze(1)
    targets = flat.index_select(0, where).to(hidden.device, non_blocking=True)
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where.to(hidden.device, non_blocking=True))
    head = causal_lm.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, where.numel(), chunk):
        h, t = picked[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():  # recompute the chunk's logits in backward instead of keeping them
            total = total + checkpoint(_chunk_loss, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, t)
    return total


def _chunk_loss(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
