"""A tiny Llama- or Qwen2-shaped chat model built on the spot (no download): for tests and benchmarks.

A byte-level BPE is trained on the given texts, the model gets a short full-parameter warm-up on them so that
LoRA has something to adapt, and the folder is saved like any Hugging Face model (safetensors + tokenizer with
a ChatML chat template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Sequence[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_model(out_dir: Path, conversations: Sequence[Sequence[dict[str, str]]], *,
                     arch: Literal["llama", "qwen2"] = "llama", hidden: int = 64, layers: int = 2,
                     warmup_steps: int = 40, seed: int = 0) -> Path:
    """Tokenizer + model trained briefly (all parameters) on `conversations`, saved to `out_dir`."""
    torch.manual_seed(seed)
    texts = [m["content"] for conv in conversations for m in conv]
    tok = build_tokenizer(texts)
    shape = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                 tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                 bos_token_id=None)
    config = LlamaConfig(**shape) if arch == "llama" else Qwen2Config(**shape)
    model = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(config)
    rendered = [tok.apply_chat_template(list(c), tokenize=False) for c in conversations]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:256] for t in rendered]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(warmup_steps):
        batch = ids[(step * 4) % len(ids):][:4] or ids[:4]
        for row in batch:
            x = torch.tensor([row])
            loss = model(input_ids=x, labels=x).loss / len(batch)
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
