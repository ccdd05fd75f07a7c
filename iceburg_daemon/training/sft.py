"""The SFT loop: a plain PyTorch loop over packed rows of a PEFT model (TRL's SFTTrainer ran 2.3x slower than
a plain loop on CPU in benchmarks/train_cpu.py). Linear and resumable: the whole step plan is computed up
front from the seed, so a resumed run continues at its global step with the same data order, optimizer and
schedule."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from iceburg_daemon.training import checkpoint
from iceburg_daemon.training.data import Example, epoch_order, pack, row_tensors_data, steps_of
from iceburg_daemon.training.model import chunk_loss_fn, document_block_mask, token_loss_sum
from iceburg_daemon.training.progress import Progress


@dataclass
class Settings:
    micro_batch: int
    grad_accum: int
    learning_rate: float
    warmup_ratio: float
    epochs: int
    max_steps: int
    seed: int
    order: str
    packing: bool
    max_length: int
    max_grad_norm: float
    checkpoint_every_steps: int
    checkpoint_every_seconds: float
    fixed_width: bool = False  # pad every row to max_length: one shape, so compiled kernels compile once
    recompute_loss: bool = True  # recompute each loss chunk's logits in backward (memory) or keep them (speed)
    compile_loss: bool = False  # the per-chunk loss compiled (with compiled layers, on CUDA)
    autocast_dtype: Any = None  # a torch dtype: forward and loss under torch.autocast (mixed precision)
    min_steps: int = 0  # floor on optimizer steps when max_steps is 0: rows per step shrink to reach it
    inject_oom_at_step: int = -1  # tests only: raise one out-of-memory error at this step


def rows_per_step(examples: list[Example], s: Settings) -> int:
    """micro_batch x grad_accum, shrunk for a small role so that the configured epochs make at least min_steps
    optimizer steps (down to one row per step; a step never crosses an epoch). Without it a role with a few
    dozen records got about two steps from the defaults and barely trained."""
    configured = s.micro_batch * s.grad_accum
    if s.max_steps > 0 or s.min_steps <= 0:
        return configured
    rows = len(pack(examples, epoch_order(examples, 0, s.seed, s.order), s.max_length, s.packing))
    return max(1, min(configured, rows * s.epochs // s.min_steps))


def plan_steps(examples: list[Example], s: Settings) -> list[list[list[int]]]:
    """Every optimizer step's rows (each row a list of example indices), for the whole run."""
    per_step = rows_per_step(examples, s)
    plan: list[list[list[int]]] = []
    epoch = 0
    while True:
        rows = pack(examples, epoch_order(examples, epoch, s.seed, s.order), s.max_length, s.packing)
        if not rows:
            return []
        plan += list(steps_of(rows, per_step))
        epoch += 1
        # Past the configured epochs, a role too small to reach min_steps even one row per step repeats its
        # data until it does (the manifest records the epochs run).
        if (s.max_steps > 0 and len(plan) >= s.max_steps) or (
                s.max_steps <= 0 and epoch >= s.epochs and len(plan) >= s.min_steps):
            break
    if s.max_steps > 0:
        return plan[: s.max_steps]
    return plan[: s.min_steps] if epoch > s.epochs else plan  # extended for min_steps: stop right there


def schedule(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ceil(ratio * total) steps, then cosine decay to zero: the configured peak LR, as is."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


class _StoppedMidStep(Exception):
    """should_stop() turned true between two micro-batches of a step: its partial gradients are dropped."""


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Trainer:
    def __init__(self, model: Any, examples: list[Example], s: Settings, run_dir: Path, device: torch.device,
                 pad_id: int, progress: Progress, should_stop: Callable[[], bool]):
        self.model, self.examples, self.s, self.run_dir = model, examples, s, run_dir
        self.device, self.pad_id, self.progress, self.should_stop = device, pad_id, progress, should_stop
        self.rows_per_step = rows_per_step(examples, s)
        self.plan = plan_steps(examples, s)
        # Passes over the data by the end of each step (the real epoch, with or without max_steps).
        self._seen = list(itertools.accumulate(sum(len(row) for row in step) for step in self.plan))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule(len(self.plan), s.warmup_ratio))
        self.micro = s.micro_batch
        self.state: dict[str, Any] = {"global_step": 0, "oom_retries": [], "micro_batch": s.micro_batch}
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.flex = getattr(model.get_base_model().config, "_attn_implementation", None) == "flex_attention"
        self.chunk_loss = chunk_loss_fn(compiled=s.compile_loss)

    def resume(self) -> int:
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            return 0
        self.state = checkpoint.load(ckpt, self.model, self.optimizer, self.scheduler)
        self.micro = int(self.state.get("micro_batch", self.micro))
        return int(self.state["global_step"])

    def save(self) -> None:
        if self.rank == 0:
            checkpoint.save(self.run_dir, self.model, self.optimizer, self.scheduler, self.state)

    def run(self) -> str:
        """'succeeded', or 'interrupted' after a checkpoint when should_stop() turned true."""
        total = len(self.plan)
        start = self.state["global_step"]
        last_ckpt = time.monotonic()
        started, done_tokens = time.monotonic(), 0
        self.model.train()
        for g in range(start, total):
            if self._stop_requested():
                self.save()
                return "interrupted"
            t0 = time.monotonic()
            try:
                loss, tokens = self._step(g)
            except _StoppedMidStep:  # the weights are still those of global step g: saved as such
                self.optimizer.zero_grad(set_to_none=True)
                self.save()
                return "interrupted"
            torch.nn.utils.clip_grad_norm_(self.params, self.s.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state["global_step"] = g + 1
            self.state["epoch"] = self._epoch_of(g)
            done_tokens += tokens
            elapsed = time.monotonic() - started
            self.progress.step(step=g + 1, total=total, epoch=self.state["epoch"], loss=loss,
                               lr=self.scheduler.get_last_lr()[0], tokens=tokens, tokens_per_s=done_tokens / max(elapsed, 1e-9),
                               step_seconds=time.monotonic() - t0, eta_s=elapsed / (g + 1 - start) * (total - g - 1))
            every = self.s.checkpoint_every_steps
            if (every > 0 and (g + 1) % every == 0) or time.monotonic() - last_ckpt >= self.s.checkpoint_every_seconds:
                self.save()
                last_ckpt = time.monotonic()
        self.save()  # the final state too: a kill during export resumes straight to the export
        return "succeeded"

    def _stop_requested(self) -> bool:
        """Every rank stops at the same step (a rank that left alone would hang the others' all-reduce)."""
        stop = self.should_stop()
        if self.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _epoch_of(self, g: int) -> float:
        return round(self._seen[g] / max(len(self.examples), 1), 3)

    def _step(self, g: int) -> tuple[float, int]:
        """Forward/backward of one optimizer step; on out-of-memory, once: half the micro-batch, twice the
        accumulation (the same rows, so the same effective batch), recorded in the run's state."""
        try:
            return self._accumulate(g)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc) or self.state["oom_retries"] or self.micro == 1:
                raise
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.micro = max(1, self.micro // 2)
            self.state["micro_batch"] = self.micro
            self.state["oom_retries"].append({"step": g + 1, "micro_batch": self.micro,
                                              "grad_accum": self.s.micro_batch * self.s.grad_accum // self.micro})
            self.progress.event("oom_retry", step=g + 1, micro_batch=self.micro)
            return self._accumulate(g)

    def _accumulate(self, g: int) -> tuple[float, int]:
        rows = self.plan[g][self.rank :: self.world]
        trained = sum(self.examples[i].trained for row in self.plan[g] for i in row)  # all ranks: one normaliser
        # The loss stays on the device until the step ends: one host sync per step, not one per micro-batch.
        loss_total, tokens = torch.zeros((), device=self.device), 0
        micros = -(-len(rows) // self.micro)
        for k, micro in enumerate(steps_of(rows, self.micro)):
            # A stop waits for one micro-batch, not the whole step (minutes on a CPU). One process only: ranks
            # may hold different numbers of micro-batches, and the stop vote is a collective.
            if k and self.world == 1 and self.should_stop():
                raise _StoppedMidStep
            if g + 1 == self.s.inject_oom_at_step and not self.state["oom_retries"]:
                raise torch.OutOfMemoryError("injected out-of-memory (test hook)")
            ids, labels, pos, mask = self._batch(micro)
            with self._autocast():
                loss = token_loss_sum(self.model, ids, labels, pos, attention_mask=mask,
                                      recompute=self.s.recompute_loss, chunk_loss=self.chunk_loss) / trained
            loss.backward()
            loss_total += loss.detach()
            tokens += sum(len(self.examples[i].input_ids) for row in micro for i in row)
            if k + 1 < micros:
                self.progress.micro(k + 1, micros)
        if self.world > 1:
            for p in self.params:  # LoRA grads are small: an all-reduce of each beats wrapping PEFT in DDP
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            reduced = torch.stack([loss_total, torch.tensor(float(tokens), device=self.device)])
            dist.all_reduce(reduced)
            return reduced[0].item(), int(reduced[1].item())
        return loss_total.item(), tokens

    def _autocast(self) -> Any:
        if self.s.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.s.autocast_dtype)

    def _batch(self, micro: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """(input_ids, labels, position_ids, attention mask): ids and positions on the device (copied from
        pinned memory without blocking on CUDA), labels left on the host for token_loss_sum; the mask is
        flex_attention's block mask built on the host, else None (the model derives it from the positions)."""
        width = self.s.max_length if self.s.fixed_width else max(
            sum(len(self.examples[i].input_ids) for i in row) for row in micro)
        cols = [row_tensors_data(self.examples, row, width, self.pad_id) for row in micro]
        ids, labels, pos = (torch.tensor([c[j] for c in cols]) for j in range(3))
        if self.device.type == "cuda":
            ids, pos = ids.pin_memory(), pos.pin_memory()
        mask = document_block_mask(pos, self.device) if self.flex else None
        return ids.to(self.device, non_blocking=True), labels, pos.to(self.device, non_blocking=True), mask
