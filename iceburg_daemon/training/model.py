"""Base model loading (local folder, imported GGUF, or Hugging Face cache), device choice, LoRA, the loss."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import cached_file

PACKED_SDPA = "sdpa_packed"


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
    explicit mask on an H200), sdpa_packed on CPU (one sdpa call per document, below), sdpa on MPS (it takes the
    packed block mask; the per-document calls are measured on CPU only)."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "flex_attention"
    return PACKED_SDPA if device.type == "cpu" else "sdpa"


def packed_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                          position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention inside each document of a packed row (a document starts where its position is 0), one
    sdpa call per document: what sdpa computes under the block-diagonal mask, without the masked-out blocks,
    which sdpa on CPU computes anyway (a 2,048-token row of 5 documents: attention was 28 % of a step). A padded
    batch (DPO, evaluation) comes with a mask: plain sdpa then."""
    if attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    if position_ids is None:
        position_ids = torch.arange(query.shape[2], device=query.device)
    position_ids = position_ids.expand(query.shape[0], -1)  # one row of positions may serve the whole batch
    rows = []
    for b in range(query.shape[0]):
        starts = torch.nonzero(position_ids[b] == 0).flatten().tolist()
        bounds = ([0] if not starts or starts[0] != 0 else []) + starts + [query.shape[2]]
        rows.append(torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e], dropout_p=dropout,
            is_causal=True, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
            for s, e in zip(bounds, bounds[1:])], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def _packed_sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for packed rows (documents come from position_ids); a padding mask is built as sdpa builds it."""
    return sdpa_mask(*args, **kwargs) if kwargs.get("attention_mask") is not None else None


AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)


def use_checkpointing(requested: str, device: torch.device) -> bool:
    """auto: on where activations live in the machine's own memory (CPU, MPS), off on CUDA (speed; an
    out-of-memory step is retried with half the micro-batch)."""
    return requested == "on" or (requested == "auto" and device.type != "cuda")


def autocast_dtype(requested: str, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the forward runs under autocast, or None. auto: bf16 on CUDA with a bf16 base (the float32
    adapters' matmuls then use the tensor cores; measured on CUDA only)."""
    if requested == "on" or (requested == "auto" and device.type == "cuda" and dtype == torch.bfloat16):
        return torch.bfloat16
    return None


def enable_checkpointing(base: Any) -> None:
    """Non-reentrant activation checkpointing on every decoder layer (its name before transformers 5.2x kept
    for older installs, e.g. a GPU host's own stack)."""
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable({"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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


def document_block_mask(positions: torch.Tensor, device: torch.device, block: int = 128) -> Any:
    """flex_attention's BlockMask for packed rows (causal within each document; a document starts where the
    position restarts at 0), built on the host from the positions: transformers would instead find the
    documents on the device and wait for the answer (one host sync per forward), then compile a mask kernel."""
    from torch.nn.attention.flex_attention import BlockMask

    rows, length = positions.shape
    doc = (positions == 0).cumsum(1)
    n = -(-length // block)
    starts = torch.arange(n) * block
    ends = torch.clamp(starts + block, max=length) - 1
    first, last = doc[:, starts], doc[:, ends]  # (rows, n): documents at each block's first and last token
    q, kv = torch.arange(n).view(n, 1), torch.arange(n).view(1, n)
    # Documents are contiguous, so a kv block at or before a q block shares a document with it iff the kv
    # block's last document reaches the q block's first; it is full (no mask needed) when both blocks lie in
    # one document, are whole, and the kv block is strictly earlier.
    some = (kv <= q) & (last[:, None, :] >= first[:, :, None])
    whole = (ends - starts + 1 == block)
    full = (kv < q) & (first[:, None, :] == last[:, :, None]) & whole.view(1, n) & whole.view(n, 1)
    partial = some & ~full

    def blocks(kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort((~kind).to(torch.int8), dim=-1, stable=True)  # the kind's blocks first, in order
        count = kind.sum(-1, dtype=torch.int32)
        return (count[:, None].to(device, non_blocking=True),
                order[:, None].to(torch.int32).to(device, non_blocking=True))

    doc_on_device = doc.to(device, non_blocking=True)

    def same_document_causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (doc_on_device[b, q_idx] == doc_on_device[b, kv_idx]) & (q_idx >= kv_idx)

    (kv_num, kv_idx), (full_num, full_idx) = blocks(partial), blocks(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=same_document_causal, seq_lengths=(length, length))


def token_loss_sum(peft_model: Any, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                   chunk: int = 4096, attention_mask: Any = None, recompute: bool = True,
                   chunk_loss: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Sum of cross-entropy over trained tokens only: the LM head runs on labelled positions, in chunks, so the
    full (tokens x vocabulary) logits never exist. Packed rows are isolated by their restarting position_ids.
    `recompute`: each chunk's logits are recomputed in backward instead of kept (less memory, one more LM-head
    pass); `chunk_loss` replaces the per-chunk loss (e.g. chunk_loss_fn(compiled=True)).

    `labels` may stay on the CPU: the trained positions are then found there, so nothing waits on the GPU
    (a boolean mask on a CUDA tensor synchronises the host every micro-batch)."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state
    flat = labels.reshape(-1)
    where = (flat != -100).nonzero().squeeze(1)
    targets = flat.index_select(0, where).to(hidden.device, non_blocking=True)
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where.to(hidden.device, non_blocking=True))
    head = causal_lm.get_output_embeddings()
    loss = chunk_loss or _chunk_loss
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, where.numel(), chunk):
        h, t = picked[start : start + chunk], targets[start : start + chunk]
        if recompute and torch.is_grad_enabled():
            total = total + checkpoint(loss, head, h, t, use_reentrant=False)
        else:
            total = total + loss(head, h, t)
    return total


def _chunk_loss(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunk_loss_fn(compiled: bool) -> Callable[..., torch.Tensor]:
    """The per-chunk loss; compiled: the float upcast, log-softmax and pick fused into a few passes over the
    (chunk x vocabulary) logits instead of one per operation."""
    return torch.compile(_chunk_loss, dynamic=True) if compiled else _chunk_loss


def compile_layers(peft_model: Any, mode: str | None = None) -> None:
    """torch.compile each decoder layer (regional: one compiled graph reused by every layer); `mode` is
    torch.compile's (the GPU benchmark tries others than the default)."""
    for layer in peft_model.get_base_model().get_decoder().layers:
        layer.compile(mode=mode)
