"""GPU training throughput: the project's trainer vs naive padded HF+PEFT, in one run, on one CUDA device.

A Qwen2.5-0.5B-shaped model with random weights (no download), LoRA r16 on every linear layer, chat-like
examples of 80-900 tokens (the answer, ~half of each, is trained). Prints useful (non-padding) tokens/s per
variant, the speed-up over naive padding, MFU (4*N*tokens/s over 989 TFLOP/s, H100/H200 bf16 dense), and a
packed-row isolation check. Each variant runs in its own process under --variant-timeout, so one that hangs
while compiling loses only itself. Usage: python benchmarks/train_gpu.py [--seconds 25] [--out results.json]
[--variants attn:row:micro[:flag...],...] [--variant-timeout 240] [--smoke]; flags: compile, cudagraphs, maxat,
nockpt, closs, tf32, autocast, prof, modelmask (see project()). --smoke runs a tiny model on the CPU (sdpa
variants): the plumbing only. The best measured: --variants flex_attention:16384:2:compile:nockpt:closs:autocast.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iceburg_daemon.training.data import IGNORE, Example  # noqa: E402
from iceburg_daemon.training.model import add_lora, compile_layers, document_block_mask  # noqa: E402
from iceburg_daemon.training.progress import Progress  # noqa: E402
from iceburg_daemon.training.sft import Settings, Trainer  # noqa: E402

PEAK = 989e12
LONGEST = 900  # tokens in the longest example: a packed row must hold it (the child would truncate or drop it)
FLAGS = {"compile", "cudagraphs", "maxat", "nockpt", "closs", "tf32", "autocast", "prof", "modelmask"}
DEVICE = torch.device("cuda")
SMOKE = False  # --smoke: a tiny model on the CPU, to check this script's plumbing before device time is spent
LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def qwen05(attn: str) -> torch.nn.Module:
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if SMOKE else \
        dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14)
    cfg = Qwen2Config(vocab_size=151936, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, rope_theta=1e6, attn_implementation=attn, **shape)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(device=DEVICE, dtype=torch.float32 if SMOKE else torch.bfloat16)


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(80, LONGEST)
        ids = [rng.randrange(1000, 150000) for _ in range(length)]
        answer_from = rng.randint(length // 3, (2 * length) // 3)
        labels = [ids[t + 1] if t + 1 >= answer_from else IGNORE for t in range(length - 1)] + [IGNORE]
        out.append(Example(ids, labels))
    return out


def naive_padded(data: list[Example], rows: int, seconds: float) -> dict[str, float]:
    """HF forward with labels (full-vocabulary logits), right-padded batches of `rows`, attention_mask."""
    model = add_lora(qwen05("sdpa"), LORA)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    done, tokens, t_start, i, steps = 0.0, 0, None, 0, 0
    while True:
        batch = data[i : i + rows]
        i += rows
        width = max(len(e.input_ids) for e in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for r, e in enumerate(batch):
            n = len(e.input_ids)
            ids[r, :n] = torch.tensor(e.input_ids)
            mask[r, :n] = 1
            labels[r, 1:n] = torch.tensor(e.labels[: n - 1])  # HF shifts labels itself
        loss = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=labels.to(DEVICE)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        steps += 1
        if steps == 3:
            t_start = time.perf_counter()
        elif steps > 3:
            tokens += int(mask.sum())
            done = time.perf_counter() - t_start
            if done >= seconds:
                break
    del model, opt
    torch.cuda.empty_cache()
    return {"tokens_per_s": tokens / done, "steps": steps, "peak_gib": _peak()}


class _Timing(Progress):
    def __init__(self, run_dir: Path):
        super().__init__(run_dir, enabled=False)
        self.steps: list[tuple[int, float]] = []

    def on_step(self, fields: dict) -> None:
        self.steps.append((fields["tokens"], fields["step_seconds"]))


def project(data: list[Example], attn: str, row: int, micro: int, seconds: float, flags: set[str]) -> dict:
    """flags: compile (each decoder layer compiled), cudagraphs (compiled with mode="reduce-overhead": each
    layer's kernels replayed as a CUDA graph, the shapes being fixed; implies compile), maxat (compiled with
    mode="max-autotune-no-cudagraphs": Triton matmul templates tried against cuBLAS, element-wise work fused
    into their epilogues; long compiles; implies compile), nockpt (the loss keeps its logits instead of
    recomputing them in backward: more memory, less compute), closs (the chunk loss compiled: fused
    log-softmax), tf32 (float32 matmuls, the adapters', on TF32 tensor cores), autocast (forward and loss under
    bf16 autocast, as the child runs on CUDA: the adapters' matmuls in bf16), prof (two more steps under
    torch.profiler: GPU busy share and the top kernels, to see where the time goes), modelmask (flex_attention's
    block mask built by transformers from the positions, as before the trainer built it on the host)."""
    compiled = bool({"compile", "cudagraphs", "maxat"} & flags)
    if "tf32" in flags:  # PEFT keeps the adapters in float32: their matmuls on TF32 tensor cores, not FFMA
        torch.set_float32_matmul_precision("high")
    model = add_lora(qwen05(attn), LORA)
    if compiled:  # as the child does with compile_layers = true
        compile_layers(model, mode="reduce-overhead" if "cudagraphs" in flags else
                       "max-autotune-no-cudagraphs" if "maxat" in flags else None)
    s = Settings(micro_batch=micro, grad_accum=1, learning_rate=1e-4, warmup_ratio=0.0, epochs=1, max_steps=3_000,
                 seed=0, order="random", packing=True, max_length=row, max_grad_norm=1.0,
                 checkpoint_every_steps=0, checkpoint_every_seconds=1e12,
                 fixed_width=attn == "flex_attention" or compiled,  # as the child sets it
                 recompute_loss="nockpt" not in flags, compile_loss="closs" in flags,
                 autocast_dtype=torch.bfloat16 if "autocast" in flags else None)
    with tempfile.TemporaryDirectory() as tmp:
        progress = _Timing(Path(tmp))
        started = time.perf_counter()
        warm = 3 if not compiled else 6
        trainer = Trainer(model, data, s, Path(tmp), DEVICE, 0, progress,
                          lambda: len(progress.steps) > warm and sum(t for _, t in progress.steps[warm:]) >= seconds)
        trainer.save = lambda: None  # throughput only: no checkpoints
        trainer.flex = trainer.flex and "modelmask" not in flags
        trainer.run()
        profile = profile_steps(trainer, len(progress.steps)) if "prof" in flags else None
    measured = progress.steps[warm:]
    tokens, secs = sum(n for n, _ in measured), sum(t for _, t in measured)
    result = {"tokens_per_s": tokens / secs, "steps": len(progress.steps), "peak_gib": _peak(),
              "first_steps_s": round(time.perf_counter() - started - secs, 1),
              "micro_batch_after_oom": trainer.micro}
    if profile:
        result["profile"] = profile
    del model, trainer
    torch.cuda.empty_cache()
    return result


def profile_steps(trainer: Trainer, first: int, steps: int = 2) -> dict:
    """`steps` more optimizer steps under the profiler: how busy the device was (kernel time over wall time:
    well under 1 means the host cannot launch work fast enough) and the kernels that took the most time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    trainer.should_stop = lambda: False  # it is already true (the run ended on it): no stop mid-step here
    sync()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for g in range(first, first + steps):
            trainer._step(g % len(trainer.plan))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        sync()
        wall = time.perf_counter() - started
    cuda = torch.cuda.is_available()  # without CUDA (a smoke run): CPU ops ranked by their own CPU time
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if (e.device_type.name != "CPU") == cuda]  # kernels once each
    busy = sum(getattr(e, attr) for e in events) / 1e6
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:20]
    return {"wall_s": round(wall, 3), "device_busy_s": round(busy, 3), "busy_share": round(busy / wall, 3),
            "top_kernels_ms_calls": {e.key[:90]: [round(getattr(e, attr) / 1e3, 1), e.count] for e in top}}


def isolation(attn: str) -> dict[str, float]:
    """Hidden states of docs packed in one row (restarting position_ids) vs each doc alone; and a doc's outputs
    when its neighbour's tokens change (must not move at all)."""
    model = qwen05(attn).eval()
    rng = random.Random(1)
    docs = [[rng.randrange(1000, 150000) for _ in range(n)] for n in (300, 517, 211)]

    @torch.no_grad()
    def hidden(ids: list[int], pos: list[int]) -> torch.Tensor:
        return model.model(input_ids=torch.tensor([ids], device=DEVICE), position_ids=torch.tensor([pos], device=DEVICE),
                           use_cache=False).last_hidden_state[0].float()

    positions = [p for d in docs for p in range(len(d))]
    packed = hidden(sum(docs, []), positions)
    alone = torch.cat([hidden(d, list(range(len(d)))) for d in docs])
    changed = [[t + 1 for t in docs[0]]] + docs[1:]
    packed2 = hidden(sum(changed, []), [p for d in changed for p in range(len(d))])
    n0 = len(docs[0])
    scale = alone.abs().max().item()
    result = {"max_abs_diff_packed_vs_alone": (packed - alone).abs().max().item(), "hidden_scale": scale,
              "neighbour_change_max_diff": (packed2[n0:] - packed[n0:]).abs().max().item()}
    if attn == "flex_attention":  # the mask the trainer builds on the host
        mask = document_block_mask(torch.tensor([positions]), DEVICE)
        with torch.no_grad():
            host = model.model(input_ids=torch.tensor([sum(docs, [])], device=DEVICE), attention_mask=mask,
                               position_ids=torch.tensor([positions], device=DEVICE), use_cache=False)
        host_hidden = host.last_hidden_state[0].float()
        result["host_mask_max_abs_diff_vs_alone"] = (host_hidden - alone).abs().max().item()
        result["host_mask_max_abs_diff_vs_model_mask"] = (host_hidden - packed).abs().max().item()
    model.cpu()  # free the GPU for the next variant
    torch.cuda.empty_cache()
    return result


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _peak() -> float:
    if DEVICE.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 1)


def run_one(spec: str, seconds: float, check_isolation: bool) -> dict:
    """One variant in this process: `naive` or attention:row:micro[:flag...]; the isolation check depends on
    the attention implementation alone, so it runs for the first variant of each."""
    data = examples(6000)
    n_params = sum(p.numel() for p in qwen05("sdpa").parameters())
    torch.cuda.empty_cache()
    if spec == "naive":
        r = naive_padded(data, 8, seconds)
    else:
        attn, row, micro, *flags = spec.split(":")
        r = project(data, attn, int(row), int(micro), seconds, set(flags))
        try:
            if check_isolation:
                r["isolation"] = isolation(attn)
        except Exception as exc:  # noqa: BLE001 - report, go on
            r["isolation"] = f"failed: {exc!r}"[:300]
    r["mfu"] = round(4 * n_params * r["tokens_per_s"] / PEAK, 4)
    r["params"] = n_params
    return r


def _name(spec: str) -> str:
    if spec == "naive":
        return "naive_padded_8rows"
    attn, row, micro, *flags = spec.split(":")
    return f"project_{attn}_row{row}_micro{micro}" + "".join(f"_{f}" for f in flags)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=25)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--variants", default="sdpa:4096:4,flex_attention:8192:2,flex_attention:8192:2:compile")
    ap.add_argument("--variant-timeout", type=float, default=240, help="seconds per variant (compiles included)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the plumbing, not speed"
                    " (sdpa variants only: flex_attention has no backward on the CPU)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    ap.add_argument("--no-isolation", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        global SMOKE, DEVICE
        SMOKE, DEVICE = True, torch.device("cpu")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.seconds, not args.no_isolation)), flush=True)
        return
    import transformers

    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
                     "torch": torch.__version__,
                     "transformers": transformers.__version__}

    def save() -> None:
        print(json.dumps(results, indent=2), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    for spec in args.variants.split(","):
        unknown = set(spec.split(":")[3:]) - FLAGS
        if len(spec.split(":")) < 3 or unknown:
            raise SystemExit(f"bad variant {spec!r}: attention:row:micro[:flag...], flags {sorted(FLAGS)}")
        if int(spec.split(":")[1]) < LONGEST:
            raise SystemExit(f"bad variant {spec!r}: rows must hold the longest example ({LONGEST} tokens)")
    # Each variant in its own process with its own time limit: a compile that hangs loses one variant, not all.
    checked: set[str] = set()
    for spec in ["naive", *args.variants.split(",")]:
        name, attn = _name(spec), spec.split(":")[0]
        cmd = [sys.executable, __file__, "--one", spec, "--seconds", str(args.seconds)] + ["--smoke"] * args.smoke
        if attn in checked:
            cmd.append("--no-isolation")
        checked.add(attn)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.variant_timeout, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"error": (done.stderr or done.stdout)[-800:]}
        except subprocess.TimeoutExpired:
            r = {"error": f"ran past {args.variant_timeout:.0f} s (compiling included)"}
        if spec != "naive" and "tokens_per_s" in r and "tokens_per_s" in results["naive_padded_8rows"]:
            r["speedup_vs_naive"] = round(r["tokens_per_s"] / results["naive_padded_8rows"]["tokens_per_s"], 2)
        results[name] = r
        save()


if __name__ == "__main__":
    main()
