"""GGUF -> a trainable base folder. transformers dequantizes a GGUF on load, but the loaded model cannot be
trained or saved as is: rebuild it from its config, load the state dict, save safetensors + tokenizer once."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def import_gguf(gguf: Path, out: Path) -> Path:
    gguf = gguf.resolve()
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{gguf}: state dict does not fit its config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    tmp = out.with_name("." + out.name + ".tmp")
    model.to(torch.bfloat16).save_pretrained(tmp)  # dequantised Q4 weights lose nothing in bf16; half the disk
    tok.save_pretrained(tmp)
    (tmp / "imported_from.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    tmp.rename(out)
    return out
