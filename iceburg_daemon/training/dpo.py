"""DPO after SFT, with TRL's DPOTrainer: it continues the SFT adapter, and the reference is the base with the
adapter disabled (TRL does that for a PeftModel without ref_model). Not checkpointed mid-way: an interrupted
DPO phase restarts from the final SFT checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch


def load_pairs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def train_dpo(peft_model: Any, tok: Any, pairs: list[dict[str, Any]], params: dict[str, Any], run_dir: Path,
              device: torch.device, dtype: torch.dtype, should_stop: Callable[[], bool],
              on_log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Returns DPO metrics, with "interrupted": True when should_stop() ended it early."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class _Watch(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            control.should_training_stop = should_stop()
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs:
                on_log({"dpo_step": state.global_step, "dpo_total": state.max_steps, **logs})

    config = DPOConfig(
        output_dir=str(run_dir / "dpo"), beta=params["dpo_beta"], learning_rate=params["dpo_learning_rate"],
        num_train_epochs=params["dpo_epochs"], per_device_train_batch_size=params["micro_batch"],
        gradient_accumulation_steps=params["grad_accum"], max_length=params["max_length"], seed=params["seed"],
        lr_scheduler_type="cosine", warmup_steps=params["warmup_ratio"], max_grad_norm=params["max_grad_norm"],
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16, disable_tqdm=True)
    trainer = DPOTrainer(model=peft_model, ref_model=None, args=config, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok, callbacks=[_Watch()])
    result = trainer.train()
    interrupted = trainer.state.global_step < trainer.state.max_steps
    return {"dpo_pairs": len(pairs), "dpo_steps": trainer.state.global_step, "dpo_train_loss": result.training_loss,
            "interrupted": interrupted}
