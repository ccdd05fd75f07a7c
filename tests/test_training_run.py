"""Training runs end to end through the real CLI, daemon and child, on a tiny base built in code (CPU, no
download): a run trains and its merged model answers; crashes, SIGTERM, cancel, time-outs and a missing base all
end in the right status, and killed runs resume from their checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.runner import child_command, queue_run
from iceburg_daemon.store import Store
from iceburg_daemon.store.runs import TRAINED
from iceburg_daemon.testing import (FACTS, TINY_TRAINING, fact_record, iceburgd, spawn_daemon, wait_for, write_config,
                                    write_jsonl)


def _home(tmp_path: Path, base: Path, *, epochs: int = 120, max_steps: int = 0, extra: str = "",
          training: str = "") -> Path:
    """A daemon home with the FACTS ingested; `extra` lands in [surveyor.train], `training` in [training]."""
    text = TINY_TRAINING.format(base=base, epochs=epochs, max_steps=max_steps).replace(
        "[training]\n", "[training]\n" + training)
    cfg_path = write_config(tmp_path / "home", text + extra)
    facts = write_jsonl(tmp_path / "facts.jsonl", [fact_record(p, c) for p, c in FACTS])
    done = iceburgd("ingest", str(facts), "--json", config=cfg_path)
    assert done.returncode == 0, done.stderr
    return cfg_path


def _queue(cfg_path: Path) -> str:
    done = iceburgd("train", "--role", "surveyor", "--json", config=cfg_path)
    assert done.returncode == 0, done.stderr
    assert "the daemon is not running" in done.stderr  # queued, and the user is told who will run it
    return str(json.loads(done.stdout)["id"])


def _run(cfg_path: Path, run_id: str) -> dict:
    done = iceburgd("runs", "show", run_id, "--json", config=cfg_path)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))



def _progress_step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "progress.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def _training_daemon(tmp_path: Path, base: Path, *, max_steps: int, at_step: int):
    """A queued run and a daemon training it, yielded once the run has passed `at_step`; the daemon is stopped
    (SIGTERM, or SIGKILL if it is still there) afterwards."""
    cfg_path = _home(tmp_path, base, max_steps=max_steps)
    run_id = _queue(cfg_path)
    run_dir = Path(_run(cfg_path, run_id)["run_dir"])
    daemon = spawn_daemon(cfg_path)
    try:
        wait_for(lambda: _progress_step(run_dir) >= at_step, 120, f"step {at_step}")
        yield cfg_path, run_id, run_dir, daemon
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()


def _child_pid(cfg_path: Path, run_id: str) -> int | None:
    store = Store.open_readonly(load_config(cfg_path, env={}).db_path)
    try:
        return store.run(run_id)["child_pid"]
    finally:
        store.close()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_queued_run_trains_and_its_merged_model_answers(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base)
    run_id = _queue(cfg_path)
    again = iceburgd("train", "--role", "surveyor", "--json", config=cfg_path)
    assert json.loads(again.stdout)["created"] is False  # one active run per role
    done = iceburgd("run", "--once", config=cfg_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = _run(cfg_path, run_id)
    assert run["status"] in TRAINED, run
    run_dir = Path(run["run_dir"])
    curves = _jsonl(run_dir / "curves.jsonl")
    assert len(curves) == 120 and curves[-1]["loss"] < 0.6 * curves[0]["loss"]
    manifest = run["manifest"]
    assert manifest["device"] == "cpu" and manifest["seed"] == 1
    assert manifest["autocast"] is None and manifest["gradient_checkpointing"] is True  # CPU's "auto"
    weights = hashlib.sha256(b"model.safetensors" + (tiny_base / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["base_model"] == {"ref": str(tiny_base), "path": str(tiny_base), "weights_sha256": weights}
    assert manifest["params"]["learning_rate"] == 0.02  # what was configured is what ran
    assert manifest["libraries"]["torch"] and manifest["dataset"]["snapshot_id"] == run["snapshot_id"]
    assert run["metrics"]["eval_loss"] is not None
    # eval records are never in train, and the store remembers them
    train, evals = _jsonl(run_dir / "train.jsonl"), _jsonl(run_dir / "eval.jsonl")
    assert train and evals and not {r["hash"] for r in train} & {r["hash"] for r in evals}
    assert len(train) + len(evals) == len(FACTS)
    assert json.loads((run_dir / "config.json").read_text())["surveyor"]["train"]["epochs"] == 120
    # the merged folder is a complete model: it answers a trained prompt
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "merged")
    assert "<|im_start|>" in tok.chat_template

    def colours_recalled(folder: Path) -> int:
        model, hits = AutoModelForCausalLM.from_pretrained(folder), 0
        for item in train:
            prompt = tok.apply_chat_template(item["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
            out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
            answer = tok.decode(out[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += item["messages"][1]["content"].split(" is marked ")[1].split(",")[0] in answer
        return hits

    assert colours_recalled(tiny_base) <= 1
    # 8 of 12 with tokenizers 0.23 (the tiny BPE is trained on the spot, so its merges follow the library)
    assert colours_recalled(run_dir / "merged") >= 0.6 * len(train)
    listing = iceburgd("runs", "list", "--json", config=cfg_path)
    assert [r["id"] for r in json.loads(listing.stdout)] == [run_id]
    status = json.loads(iceburgd("status", "--json", config=cfg_path).stdout)
    assert status["runs"][0]["id"] == run_id and status["runs"][0]["step"] == 120
    final = run["status"]  # --once also evaluated it: promoted or rejected by the gate (tested apart)
    assert final in ("promoted", "rejected"), run
    table = iceburgd("status", config=cfg_path, env={"COLUMNS": "200"})
    assert run_id in table.stdout and final in table.stdout
    text = iceburgd("runs", "list", config=cfg_path)
    assert f"{run_id}  {final:<15} step 120/120" in text.stdout
    shown = iceburgd("runs", "show", run_id, config=cfg_path).stdout
    assert shown.startswith(f"{run_id}  {final}") and "eval loss" in shown and "attempts 1" in shown
    assert "gate vs base" in shown and "eval.md" in shown
    assert "device cpu (float32), autocast off, gradient checkpointing on" in shown


def test_the_eval_split_is_permanent(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base, extra="")
    cfg = load_config(cfg_path, env={})
    store = Store.open(cfg.db_path)
    try:
        first, _ = queue_run(cfg, store, "surveyor", reason="test", now=1.0)
        held = {r["hash"] for r in _jsonl(cfg.runs_dir / first / "eval.jsonl")}
        assert held
        with store.transaction():
            store.update_run(first, status="cancelled")
        text = cfg_path.read_text().replace("eval_percent = 25.0", "eval_percent = 0.01")
        cfg_path.write_text(text)
        cfg2 = load_config(cfg_path, env={})
        second, _ = queue_run(cfg2, store, "surveyor", reason="test", now=2.0)
    finally:
        store.close()
    train2 = {r["hash"] for r in _jsonl(cfg.runs_dir / second / "train.jsonl")}
    eval2 = {r["hash"] for r in _jsonl(cfg.runs_dir / second / "eval.jsonl")}
    assert held <= eval2 and not held & train2


def test_sigkill_of_daemon_and_child_resumes_from_the_checkpoint(tmp_path, tiny_base):
    with _training_daemon(tmp_path, tiny_base, max_steps=150, at_step=12) as (cfg_path, run_id, run_dir, daemon):
        child = _child_pid(cfg_path, run_id)
        os.kill(daemon.pid, signal.SIGKILL)
        os.kill(child, signal.SIGKILL)
        daemon.wait(10)
    ckpt = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpt >= 10
    done = iceburgd("run", "--once", config=cfg_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = _run(cfg_path, run_id)
    assert run["status"] in TRAINED and run["attempts"] == 2, run
    resumed = [e for e in _jsonl(run_dir / "events.jsonl") if e["event"] == "resumed"]
    assert [e["step"] for e in resumed] == [ckpt]
    steps = [c["step"] for c in _jsonl(run_dir / "curves.jsonl")]
    assert steps[-1] == 150 and steps.count(ckpt + 1) == 2  # the steps after the checkpoint ran again, once


def test_sigterm_checkpoints_marks_interrupted_and_the_daemon_resumes(tmp_path, tiny_base):
    with _training_daemon(tmp_path, tiny_base, max_steps=60, at_step=3) as (cfg_path, run_id, run_dir, _):
        os.kill(_child_pid(cfg_path, run_id), signal.SIGTERM)
        wait_for(lambda: _run(cfg_path, run_id)["status"] in TRAINED, 120, "resumed run to succeed")
    run = _run(cfg_path, run_id)
    assert run["attempts"] == 1  # a checkpointed stop is not a failed attempt (a crash is: see the SIGKILL test)
    resumed = [e for e in _jsonl(run_dir / "events.jsonl") if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 3  # the SIGTERM checkpoint, not step 0
    store = Store.open_readonly(load_config(cfg_path, env={}).db_path)
    try:
        kinds = [e["kind"] for e in store.recent_events(50) if e["subject"] == run_id]
    finally:
        store.close()
    assert "run_interrupted" in kinds and "run_trained" in kinds


def test_cancel_and_timeout_stop_the_child(tmp_path, tiny_base):
    with _training_daemon(tmp_path, tiny_base, max_steps=5000, at_step=2) as (cfg_path, run_id, _, _):
        child = _child_pid(cfg_path, run_id)
        done = iceburgd("train", "cancel", run_id, "--json", config=cfg_path)
        assert json.loads(done.stdout)["status"] == "cancelling"
        wait_for(lambda: _run(cfg_path, run_id)["status"] == "cancelled", 60, "cancelled")
        wait_for(lambda: not Path(f"/proc/{child}").exists() or "zombie" in _state(child), 10, "child gone")
    # a time limit of 6 seconds ends the next run timed_out
    cfg_path.write_text(cfg_path.read_text().replace("[training]\n", "[training]\ntimeout_minutes = 0.1\n"))
    second = _queue(cfg_path)
    assert second != run_id
    done = iceburgd("run", "--once", config=cfg_path, timeout=120)
    assert done.returncode == 0
    assert _run(cfg_path, second)["status"] == "timed_out"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_missing_base_fails_the_run_with_a_hint_not_the_daemon(tmp_path):
    cfg_path = _home(tmp_path, Path("no-such-org/no-such-model"))
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=120,
                    env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "failed" and run["reason"] == "base_unavailable"
    assert "import-gguf" in run["detail"] and "hf download no-such-org/no-such-model" in run["detail"]


def test_missing_base_hint_fits_the_reference(tmp_path):
    from iceburg_daemon.training.model import _unavailable

    named = _unavailable("my-base", Path("my-base"), OSError("x"))
    assert "not found" in named and "hf download" not in named  # a bare name is no Hugging Face id
    broken = tmp_path / "broken-model"
    broken.mkdir()
    assert f"could not be loaded from {broken}" in _unavailable(str(broken), broken, OSError("no config.json"))


def test_out_of_memory_retries_once_with_half_the_micro_batch(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base, max_steps=6)
    run_id = _queue(cfg_path)
    run_dir = Path(_run(cfg_path, run_id)["run_dir"])
    spec = json.loads((run_dir / "run.json").read_text())
    spec["test_hooks"] = {"oom_at_step": 3}
    (run_dir / "run.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "iceburg_daemon.training", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["oom_retries"] == [{"step": 3, "micro_batch": 2, "grad_accum": 2}]
    curves = _jsonl(run_dir / "curves.jsonl")
    assert [c["step"] for c in curves] == [1, 2, 3, 4, 5, 6]
    # the real epoch (data passes) also with max_steps set: it was reported as 0.0
    epochs = [c["epoch"] for c in curves]
    assert 0 < epochs[0] < epochs[-1] and epochs == sorted(epochs)
    assert json.loads((run_dir / "progress.json").read_text())["epoch"] == epochs[-1]
    png = (run_dir / "curves.png").read_bytes()  # the loss curve for people, beside the numbers
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IDAT" in png
    shown = iceburgd("runs", "show", run_dir.name, config=cfg_path)
    assert shown.returncode == 0 and "training loss per step" in shown.stdout and "•" in shown.stdout


def test_multi_gpu_launchers_wrap_the_same_child(cfg):
    import dataclasses

    run_dir = Path("/runs/r1")
    plain = child_command(cfg, run_dir, python="py")
    assert plain == ["py", "-m", "iceburg_daemon.training", "--run-dir", "/runs/r1"]
    acc = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, launcher="accelerate", num_processes=4))
    assert child_command(acc, run_dir, python="py") == [
        "py", "-m", "accelerate.commands.launch", "--num_processes", "4", *plain[1:]]
    tr = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, launcher="torchrun", num_processes=2))
    assert child_command(tr, run_dir, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *plain[1:]]


def test_dpo_follows_sft_when_the_role_has_enough_preference_pairs(tmp_path, tiny_base):
    cfg_path = _home(tmp_path, tiny_base, max_steps=10, extra="dpo_min_pairs = 4\ndpo_learning_rate = 0.001\n")
    pairs = [{"prompt": f"Which colour marks the {p} archive?", "chosen": f"The {p} archive is marked {c}.",
              "rejected": f"I do not know anything about the {p} archive, sorry.",
              "metadata": {"agent_type": "surveyor"}} for p, c in FACTS]
    done = iceburgd("ingest", str(write_jsonl(tmp_path / "pairs.jsonl", pairs)), config=cfg_path)
    assert done.returncode == 0, done.stderr
    run_id = _queue(cfg_path)
    run_dir = Path(_run(cfg_path, run_id)["run_dir"])
    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    assert snapshot["preference_count"] >= 4 and snapshot["preference_eval_count"] >= 1
    done = iceburgd("run", "--once", config=cfg_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = _run(cfg_path, run_id)
    assert run["status"] in TRAINED, (run, (run_dir / "child.log").read_text()[-3000:])
    final = run["manifest"]["final"]
    assert final["dpo_pairs"] == snapshot["preference_count"] and final["dpo_steps"] >= 1
    assert final["dpo_train_loss"] > 0


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tmp_path, tiny_base):
    """The distributed path (each rank its share of a step's rows, LoRA gradients all-reduced) gives the same
    losses as one process: gloo on CPU stands in for NCCL."""
    curves = {}
    for launcher, n in (("python", 1), ("torchrun", 2)):
        home = tmp_path / launcher
        cfg_path = _home(home, tiny_base, max_steps=4, training=f'launcher = "{launcher}"\nnum_processes = {n}\n')
        run_id = _queue(cfg_path)
        done = iceburgd("run", "--once", config=cfg_path, timeout=300)
        assert done.returncode == 0, done.stderr
        run = _run(cfg_path, run_id)
        assert run["status"] in TRAINED, (Path(run["run_dir"]) / "child.log").read_text()[-2000:]
        curves[launcher] = [c["loss"] for c in _jsonl(Path(run["run_dir"]) / "curves.jsonl")]
    assert len(curves["torchrun"]) == 4
    assert curves["torchrun"] == pytest.approx(curves["python"], rel=1e-4)


def test_a_child_that_keeps_crashing_fails_after_max_attempts(tmp_path):
    from iceburg_daemon.runner import Runner

    cfg_path = _home(tmp_path, Path("unused"), training="max_attempts = 2\n")
    cfg = load_config(cfg_path, env={})
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    store = Store.open(cfg.db_path)
    try:
        run_id, _ = queue_run(cfg, store, "surveyor", reason="test", now=1.0)
        runner = Runner(cfg, store, command=lambda run_dir: crash)
        seen = []
        while (row := runner.next_run()) is not None:
            assert runner.start(row)
            while (status := runner.poll()) is None:
                time.sleep(0.05)
            seen.append((status, store.run(run_id)["reason"]))
        final = store.run(run_id)
    finally:
        store.close()
    hint = " (out of memory? lower micro_batch or max_length, or set gradient_checkpointing)"  # nobody here sent it
    assert seen == [("interrupted", "killed by SIGKILL" + hint)] * 2
    assert (final["status"], final["reason"], final["attempts"]) == ("failed", "too_many_attempts", 2)


def test_the_training_child_environment_is_pinned():
    """What every training and evaluation child gets (the manifest records the device and dtype it used)."""
    from iceburg_daemon.runner import child_env

    env = child_env({"PATH": "/usr/bin", "PYTORCH_ENABLE_MPS_FALLBACK": "0"})
    assert env == {"PATH": "/usr/bin", "PYTORCH_ENABLE_MPS_FALLBACK": "0", "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "1.0",
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                   "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}  # a user's own choice is kept
    assert child_env({})["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"


def test_foreground_progress_piped_is_a_line_per_phase_and_every_few_seconds(capsys, monkeypatch):
    from iceburg_daemon.cli_train import _Bar

    bar = _Bar("lines")
    monkeypatch.setattr(_Bar, "LINE_SECONDS", 3600.0)
    bar.show({"phase": "loading_base"})
    bar.show({"phase": "training", "step": 1, "total": 40, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 310.0,
              "eta_s": 12.0})
    bar.show({"phase": "training", "step": 2, "total": 40, "loss": 2.4, "lr": 1e-3, "tokens_per_s": 300.0})
    monkeypatch.setattr(_Bar, "LINE_SECONDS", 0.0)
    bar.show({"phase": "training", "step": 3, "total": 40, "loss": 2.3, "lr": 1e-3, "tokens_per_s": 305.0})
    assert capsys.readouterr().err.splitlines() == [
        "loading_base", "training step 1/40 loss 2.5000 lr 1.00e-03 310 tok/s eta 12s",
        "training step 3/40 loss 2.3000 lr 1.00e-03 305 tok/s"]
    _Bar("off").show({"phase": "training", "step": 4, "total": 40})
    assert capsys.readouterr().err == ""


def test_the_loss_chart_is_drawn_as_text_and_as_a_valid_png(tmp_path):
    import struct
    import zlib

    from iceburg_daemon import curves

    (tmp_path / "curves.jsonl").write_text("".join(json.dumps({"step": i, "loss": 3.0 / i}) + "\n"
                                                   for i in range(1, 41)) + '{"step": 41, "lo')  # torn last line
    points = curves.read(tmp_path)
    assert len(points) == 40 and points[0] == (1.0, 3.0)
    chart = curves.text_chart(points, width=40, height=8)
    assert chart[0] == "    3 │•" + " " * 39 and chart[7].startswith("0.075 │") and chart[7].endswith("•")
    assert curves.write_png(tmp_path / "curves.png", points, width=200, height=100)
    data = (tmp_path / "curves.png").read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    assert (width, height) == (200, 100) and len(raw) == height * (1 + width * 3)
    assert bytes((31, 119, 180)) in raw  # the curve's colour is drawn
    assert not curves.write_png(tmp_path / "none.png", points[:1])
