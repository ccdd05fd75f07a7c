"""CPU training throughput: the project's trainer vs a plain PyTorch + PEFT loop, same model, data and steps.

Both optimise the same examples in the same steps (the project's step plan); the plain loop pads each
micro-batch of 4 examples and uses the HF loss over full-vocabulary logits, the project packs examples into rows
and computes the loss on trained tokens only. Prints useful (non-padding) tokens/s of each and the ratio
(target: project >= 0.9x plain). With --trl, TRL's SFTTrainer (completion-only loss, padded batches of 4) on the
same examples too. Each variant is warmed up first (2 untimed steps: allocator, thread pool, kernels), then the
variants run alternately for several rounds (reversed order every other round, so neither side always runs on a
warmer or cooler machine) and the medians are compared, as ingest.py does.
Usage: python benchmarks/train_cpu.py [steps] [--rounds R] [--trl] (default 12 steps, 3 rounds)
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iceburg_daemon.training.data import IGNORE, Example  # noqa: E402
from iceburg_daemon.training.model import add_lora, enable_checkpointing  # noqa: E402
from iceburg_daemon.training.progress import Progress  # noqa: E402
from iceburg_daemon.training.sft import Settings, Trainer, plan_steps  # noqa: E402
from iceburg_daemon.training.tiny import build_tokenizer  # noqa: E402

LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
SETTINGS = dict(micro_batch=2, grad_accum=2, learning_rate=1e-4, warmup_ratio=0.0, epochs=1, seed=0,
                order="random", packing=True, max_length=1024, max_grad_norm=1.0, checkpoint_every_steps=0,
                checkpoint_every_seconds=1e12)


def model() -> torch.nn.Module:
    """SmolLM2-like vocabulary and width, fewer layers, random weights (no download)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    return add_lora(LlamaForCausalLM(cfg), LORA)


def examples(n: int) -> list[Example]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        length = rng.randint(40, 400)
        ids = [rng.randrange(100, 49000) for _ in range(length)]
        start = rng.randint(length // 3, 2 * length // 3)
        out.append(Example(ids, [ids[t + 1] if t + 1 >= start else IGNORE for t in range(length - 1)] + [IGNORE]))
    return out


def plain(data: list[Example], plan: list[list[list[int]]]) -> float:
    m = model()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    tokens, started = 0, time.perf_counter()
    for step in plan:
        idx = [i for row in step for i in row]
        trained = sum(data[i].trained for i in idx)
        for k in range(0, len(idx), 4):
            batch = [data[i] for i in idx[k : k + 4]]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, IGNORE)
            for r, e in enumerate(batch):
                n = len(e.input_ids)
                ids[r, :n], mask[r, :n] = torch.tensor(e.input_ids), 1
                labels[r, 1:n] = torch.tensor(e.labels[: n - 1])
            out = m(input_ids=ids, attention_mask=mask, labels=labels)
            # HF averages per micro-batch; rescale to the same per-token mean over the step as the project
            (out.loss * sum(e.trained for e in batch) / trained).backward()
            tokens += int(mask.sum())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - started)


def project(data: list[Example], steps: int, checkpointing: bool = False) -> float:
    s = Settings(max_steps=steps, **SETTINGS)
    peft_model = model()
    if checkpointing:  # as the training child does on CPU and MPS by default
        enable_checkpointing(peft_model.get_base_model())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(peft_model, data, s, Path(tmp), torch.device("cpu"), 0, Progress(Path(tmp), enabled=False),
                          lambda: False)
        trainer.save = lambda: None  # throughput only
        started = time.perf_counter()
        trainer.run()
        elapsed = time.perf_counter() - started
    tokens = sum(len(data[i].input_ids) for step in trainer.plan for row in step for i in row)
    return tokens / elapsed


def trl_sft(data: list[Example], plan: list[list[list[int]]]) -> float:
    """The same examples through TRL's SFTTrainer: one epoch, 4 per micro-batch, as many optimizer steps."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    idx = [i for step in plan for row in step for i in row]
    rows = [{"input_ids": data[i].input_ids, "labels": [IGNORE] + data[i].labels[:-1]} for i in idx]  # unshifted
    per_step = max(1, round(len(idx) / len(plan) / 4))
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=4, gradient_accumulation_steps=per_step,
                         num_train_epochs=1, learning_rate=1e-4, max_length=1024,
                         dataset_kwargs={"skip_prepare_dataset": True}, use_cpu=True, report_to=[],
                         save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                         bf16=False, gradient_checkpointing=False)  # not its defaults: fp32, like the others
        tok = build_tokenizer(["a tokenizer only for its pad id"])  # the data is already token ids
        trainer = SFTTrainer(model=model(), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    return sum(len(data[i].input_ids) for i in idx) / elapsed


def main() -> None:
    argv = sys.argv[1:]
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 3
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--rounds")]
    steps = int(args[0]) if args else 12
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = examples(400)
    plan = plan_steps(data, Settings(max_steps=steps, **SETTINGS))
    rows = sum(len(s) for s in plan)
    n_ex = sum(len(r) for s in plan for r in s)
    print(f"{steps} steps, {n_ex} examples in {rows} packed rows, threads {torch.get_num_threads()},"
          f" {rounds} alternating rounds after a warm-up; torch {torch.__version__}")
    variants = {
        "plain PyTorch+PEFT (padded, HF loss)": lambda n: plain(data, plan[:n]),
        "project trainer (packed, chunked loss)": lambda n: project(data, n),
        "project trainer + gradient checkpointing (the CPU/MPS default)": lambda n: project(data, n, True),
    }
    if "--trl" in argv:
        variants["TRL SFTTrainer (padded, completion-only)"] = lambda n: trl_sft(data, plan[:n])
    for run in variants.values():
        run(2)  # warm-up, untimed
    measured: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            measured[name].append(variants[name](steps))
    medians = {name: statistics.median(values) for name, values in measured.items()}
    plain_tps = next(iter(medians.values()))
    for name, values in measured.items():
        print(f"{name:64} median {medians[name]:7.0f} useful tokens/s ({medians[name] / plain_tps:.2f}x plain;"
              f" rounds: {', '.join(f'{v:.0f}' for v in values)})")
    project_tps = medians["project trainer (packed, chunked loss)"]
    print(f"ratio project/plain: {project_tps / plain_tps:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
