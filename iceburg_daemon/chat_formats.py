"""A model folder's chat template -> the Ollama TEMPLATE (Go) and stop tokens of its family.

Ollama picks a built-in template only when the model's Jinja template is close to a known one, and otherwise
falls back to `{{ .Prompt }}`, which breaks chat: so the template and stops are always sent explicitly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iceburg_daemon.errors import PublishError

# Architectures Ollama's safetensors import converts (convert/convert.go, v0.33)
OLLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM",
                        "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Gemma3TextModel",
                        "Phi3ForCausalLM")


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str
    stop: tuple[str, ...]


CHATML = ChatFormat("chatml", (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"),
    ("<|im_start|>", "<|im_end|>"))
GEMMA = ChatFormat("gemma", (
    "{{- range $i, $m := .Messages }}<start_of_turn>{{ if eq $m.Role \"assistant\" }}model{{ else }}user"
    "{{ end }}\n{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}{{ $m.Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"), ("<end_of_turn>",))
LLAMA3 = ChatFormat("llama3", (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"), ("<|eot_id|>", "<|start_header_id|>"))


def chat_format(model_dir: Path) -> ChatFormat:
    """The family of the chat template saved with the model (tokenizer_config.json or chat_template.jinja)."""
    template = ""
    config = model_dir / "tokenizer_config.json"
    if config.exists():
        template = str(json.loads(config.read_text()).get("chat_template") or "")
    jinja = model_dir / "chat_template.jinja"
    if not template and jinja.exists():
        template = jinja.read_text()
    if "<|im_start|>" in template:
        return CHATML
    if "<start_of_turn>" in template:
        return GEMMA
    if "<|start_header_id|>" in template:
        return LLAMA3
    raise PublishError(f"{model_dir}: unknown chat template family (ChatML, Gemma and Llama 3 are known)",
                       retry=False)


def architecture(model_dir: Path) -> str:
    """The model's architecture, or PublishError when Ollama cannot import it from safetensors."""
    names = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    supported = [n for n in names if n in OLLAMA_ARCHITECTURES]
    if not supported:
        raise PublishError(f"Ollama cannot import architecture {', '.join(names) or '(none)'} from safetensors"
                           f" (it converts {', '.join(OLLAMA_ARCHITECTURES)}): choose a base of one of these",
                           retry=False)
    return supported[0]
