"""One training run, start to finish, from its run folder alone (run.json + dataset snapshot).

Exit codes (the daemon's runner maps them to a run status): 0 succeeded; 75 interrupted (SIGTERM/SIGINT, a
checkpoint was written); 3 base model unavailable; 4 no trainable example; 1 any other failure. Failures also
leave error.json with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BASE, EXIT_NO_DATA, EXIT_INTERRUPTED = 0, 1, 3, 4, 75


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: Any) -> None:
        self.requested = True


def main(run_dir: Path) -> int:
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    spec = json.loads((run_dir / "run.json").read_text())
    try:
        return _run(run_dir, spec, stop)
    except Exception as exc:  # noqa: BLE001 - the child's last word: the reason goes to error.json
        from iceburg_daemon.training.model import BaseUnavailable

        code = EXIT_BASE if isinstance(exc, BaseUnavailable) else EXIT_FAILED
        reason = "base_unavailable" if code == EXIT_BASE else type(exc).__name__
        _write_json(run_dir / "error.json", {"reason": reason, "message": str(exc),
                                              "traceback": traceback.format_exc()})
        print(f"training failed: {reason}: {exc}", file=sys.stderr)
        return code


def _run(run_dir: Path, spec: dict[str, Any], stop: _Stop) -> int:
    import torch
    import torch.distributed as dist

    from iceburg_daemon.training import data, export, model as models
    from iceburg_daemon.training.dpo import load_pairs, train_dpo
    from iceburg_daemon.training.progress import Progress
    from iceburg_daemon.training.sft import Settings, Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    progress = Progress(run_dir, enabled=rank0)
    params, training = spec["params"], spec["training"]
    torch.manual_seed(params["seed"])
    device, dtype = models.pick_device(training["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    progress.update(phase="loading_base", device=str(device), dtype=str(dtype).removeprefix("torch."))
    attn = models.pick_attention(params.get("attn_implementation", "auto"), device)
    base, tok, folder = models.load_base(spec["base_model"], allow_download=training["allow_download"], dtype=dtype,
                                         attn=attn)
    fallback_template = data.ensure_chat_template(tok)
    progress.update(phase="tokenising")
    train = data.encode_file(tok, run_dir / "train.jsonl", params["max_length"], params["truncation"])
    evals = data.encode_file(tok, run_dir / "eval.jsonl", params["max_length"], params["truncation"])
    report = {"train_examples": len(train.examples), "train_dropped": dict(train.dropped),
              "train_truncated": train.truncated, "eval_examples": len(evals.examples),
              "eval_dropped": dict(evals.dropped), "eval_truncated": evals.truncated,
              "fallback_chat_template": fallback_template}
    if rank0:
        _write_json(run_dir / "data_report.json", report)
    if not train.examples:
        _write_json(run_dir / "error.json", {"reason": "no_trainable_examples", "message": json.dumps(report)})
        return EXIT_NO_DATA
    peft_model = models.add_lora(base, params).to(device)
    checkpointing = models.use_checkpointing(params.get("gradient_checkpointing", "auto"), device)
    if checkpointing:
        models.enable_checkpointing(base)
    mixed = models.autocast_dtype(params.get("autocast", "auto"), device, dtype)
    mixed_name = str(mixed).removeprefix("torch.") if mixed else None
    progress.update(gradient_checkpointing=checkpointing, autocast=mixed_name)
    if params.get("compile_layers"):
        models.compile_layers(peft_model)
    settings = Settings(
        micro_batch=params["micro_batch"], grad_accum=params["grad_accum"], learning_rate=params["learning_rate"],
        warmup_ratio=params["warmup_ratio"], epochs=params["epochs"], max_steps=params["max_steps"],
        min_steps=params.get("min_steps", 0),
        seed=params["seed"], order=params["order"], packing=params["packing"], max_length=params["max_length"],
        max_grad_norm=params["max_grad_norm"], checkpoint_every_steps=training["checkpoint_every_steps"],
        checkpoint_every_seconds=training["checkpoint_every_minutes"] * 60,
        fixed_width=attn == "flex_attention" or bool(params.get("compile_layers")),
        recompute_loss=checkpointing, compile_loss=bool(params.get("compile_layers")), autocast_dtype=mixed,
        inject_oom_at_step=spec.get("test_hooks", {}).get("oom_at_step", -1))
    pad_id = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)  # pads carry no label
    trainer = Trainer(peft_model, train.examples, settings, run_dir, device, pad_id, progress, lambda: stop.requested)
    start = trainer.resume()
    trainer.state["gradient_checkpointing"] = checkpointing  # after resume(), which replaces the state
    trainer.state["autocast"] = mixed_name
    if start:
        progress.event("resumed", step=start)
    progress.update(phase="training", step=start, total=len(trainer.plan), resumed_from=start)
    outcome = trainer.run()
    if outcome == "interrupted":
        progress.update(phase="interrupted")
        return EXIT_INTERRUPTED
    dpo_metrics: dict[str, Any] = {}
    pairs = load_pairs(run_dir / "preference.jsonl")
    if len(pairs) >= params["dpo_min_pairs"]:
        progress.update(phase="dpo", pairs=len(pairs))
        dpo_metrics = train_dpo(peft_model, tok, pairs, params, run_dir, device, dtype, lambda: stop.requested,
                                lambda logs: progress.update(phase="dpo", **logs))
        if dpo_metrics.pop("interrupted"):
            progress.update(phase="interrupted")
            return EXIT_INTERRUPTED  # the resumed run redoes DPO from the final SFT checkpoint
    if rank0:
        progress.update(phase="evaluating")
        metrics = {**export.eval_losses(peft_model, evals.examples, device, pad_id), **dpo_metrics}
        progress.update(phase="exporting")
        export.write_outputs(run_dir, spec, peft_model, tok, folder, trainer, metrics, report, device, dtype)
        progress.update(phase="done", finished_at=time.time(), metrics=metrics)
    if dist.is_initialized():
        dist.destroy_process_group()
    return EXIT_OK


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
