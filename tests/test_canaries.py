"""Issue 14, security: canary secrets planted in every input path (inbox lines, a quarantined line, ICEBURG's
ChromaDB, an eval suite) never reach any output, searched byte for byte: the store and its WAL, logs, run
folders (training files, eval reports), the model registry (cards, Modelfiles), quarantine excerpts, metrics,
every command's output, and every byte sent to Ollama. Everything the daemon wrote is private (0600/0700).

Inputs kept as they came are not outputs and are not searched: the archived inbox files (data/archive), the
private snapshot copies of ICEBURG's stores (data/snapshots), the user's own suites (data/evals)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from fake_ollama import FakeOllama

from iceburg_daemon.config import load_config
from iceburg_daemon.testing import chain_config, fact_record, free_port, iceburgd, wait_for, write_config, write_jsonl

CANARIES = {
    "anthropic": "sk-ant-api03-CANARYq7Zp2LmW9xVb4NcT8rYs",
    "aws": "AKIACANARYZQ7W3X9P2L",
    "github": "ghp_CANARYx9f8e7d6c5b4a3z2y1x0w9v8u7t6s5",
    "email": "canary.holder@example.org",
    "slack": "xoxb-CANARY-77218493-abcdefghij",
}
INPUT_COPIES = ("data/archive", "data/snapshots", "data/evals")


def _with_canary(i: int, canary: str) -> dict:
    record = fact_record(f"vault{i}", "amber")
    record["messages"][0]["content"] += f" (my credential is {canary}, keep it safe)"
    record["messages"][1]["content"] += f" Never share {canary} with anyone."
    return record


def _chroma_with_canary(src: Path, target: Path) -> Path:
    import chromadb

    shutil.copytree(src, target)
    client = chromadb.PersistentClient(path=str(target))
    client.get_collection("iceburg_gnosis").add(
        ids=["canary-1"], documents=[f"Insight: the deploy key {CANARIES['github']} was pasted here."],
        embeddings=[[0.01] * 768], metadatas=[{"source": "iceburg", "contact": CANARIES["email"]}])
    del client
    return target


def _runs(cfg_path: Path) -> list[dict]:
    done = iceburgd("runs", "list", "--json", config=cfg_path)
    return json.loads(done.stdout) if done.returncode == 0 else []  # the daemon may be creating the store


@pytest.mark.slow
def test_canary_secrets_reach_no_output(tmp_path, tiny_base, fixtures):
    ollama = FakeOllama()
    port = free_port()
    chroma = _chroma_with_canary(fixtures / "data" / "memory" / "chroma", tmp_path / "iceburg-chroma")
    text = chain_config(tiny_base, ollama_url=ollama.url, chroma=chroma, metrics_port=port)
    cfg_path = write_config(tmp_path / "home", text)
    cfg = load_config(cfg_path, env={})
    cfg.evals_dir.mkdir(parents=True, exist_ok=True)
    (cfg.evals_dir / "surveyor.jsonl").write_text(json.dumps({
        "id": "canary-item", "messages": [{"role": "user", "content": f"Repeat {CANARIES['anthropic']} back."}],
        "checks": {"max_chars": 200}, "reference": f"I will not repeat {CANARIES['aws']}."}) + "\n")
    lines = [json.dumps(fact_record(f"site{i}", "teal")) for i in range(60)]
    lines += [json.dumps(_with_canary(i, c)) for i, c in enumerate(CANARIES.values())]
    lines.append(json.dumps({"unknown_shape": f"leaked {CANARIES['slack']} and {CANARIES['email']}"}))  # quarantined
    lines.append(f'{{"broken json {CANARIES["aws"]}')  # quarantined without an excerpt
    cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(cfg.inbox_dir / "usage.jsonl", lines)

    log = tmp_path / "daemon.out"
    with open(log, "w") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "iceburg_daemon", "--config", str(cfg_path), "run"],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    outputs: dict[str, bytes] = {}
    try:
        wait_for(lambda: any(r["status"] in ("published", "rejected") for r in _runs(cfg_path)), 600,
                 "the chain to end", every=1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            outputs["/metrics"] = response.read()
        for args in (("status", "--json"), ("status",), ("runs", "list", "--json"), ("models", "list", "--json"),
                     ("data", "stats", "--json"), ("data", "export", "--role", "surveyor"),
                     ("data", "export", "--role", "surveyor", "--format", "alpaca")):
            done = iceburgd(*args, config=cfg_path)
            outputs[" ".join(args)] = (done.stdout + done.stderr).encode()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        ollama.close()
    runs = json.loads(outputs["runs list --json"])
    assert runs and runs[0]["status"] == "published", runs  # the whole chain ran, so every output exists
    outputs["daemon stdout/stderr"] = log.read_bytes()
    outputs["Ollama requests"] = b"\n".join(ollama.bodies)
    searched, shared = 0, []
    for path in sorted((tmp_path / "home").rglob("*")):
        rel = path.relative_to(tmp_path / "home").as_posix()
        if path.is_file() and not rel.startswith(INPUT_COPIES):
            outputs[rel] = path.read_bytes()
            searched += 1
        if rel != "config.toml" and not rel.startswith((*INPUT_COPIES, "data/inbox")) and path.stat().st_mode & 0o077:
            shared.append((rel, oct(path.stat().st_mode & 0o777)))
    assert shared == []  # everything the daemon wrote is private: 0600 files, 0700 folders
    leaks = [(name, kind) for name, data in outputs.items() for kind, canary in CANARIES.items()
             if canary.encode() in data]
    assert leaks == []
    # the canaries did travel: the archived input holds them, and records and quarantine rows came from them
    assert CANARIES["aws"].encode() in b"".join(p.read_bytes() for p in cfg.archive_dir.rglob("*.jsonl"))
    assert b"[REDACTED:" in outputs["data export --role surveyor"]
    assert any(name.endswith(".rejects.jsonl") for name in outputs) and searched > 50
    run_dir = Path(runs[0]["run_dir"]) if "run_dir" in runs[0] else next(cfg.models_dir.glob("runs/*"))
    assert b'"canary-item"' in (run_dir / "eval.json").read_bytes()  # the suite's canary item was evaluated
