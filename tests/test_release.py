"""The chain after training, end to end on the tiny model: evaluate -> gate -> promote -> publish to an Ollama
served over real HTTP (tests/fake_ollama.py), a worse candidate rejected, rollback, Ollama down and back. A daemon
killed -9 in each stage of the chain is tests/test_chaos.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from fake_ollama import FakeOllama

from iceburg_daemon.config import load_config
from iceburg_daemon.store import Store
from iceburg_daemon.testing import (TINY_TRAINING, fact_record, iceburgd, write_config,
                                    write_jsonl)

COLOURS = ("amber", "cobalt", "saffron", "teal", "ochre", "indigo", "silver", "umber", "crimson", "jade")


@pytest.fixture
def ollama():
    fake = FakeOllama()
    yield fake
    fake.close()


def _suite(n: int = 8) -> str:
    """Fact questions about places no record names: the format can be learnt, the colour cannot."""
    items = []
    for i in range(n):
        place, colour = f"vault{i}", COLOURS[(i * 3) % len(COLOURS)]
        items.append({"id": f"fact-{i}", "messages": [{"role": "user", "content": f"Which colour marks the {place}"
                                                                                  " archive?"}],
                      "checks": {"must_include": [f"{place} archive is marked"], "max_chars": 200},
                      "reference": f"The {place} archive is marked {colour}, as the survey notes.",
                      "max_new_tokens": 20})
    return "".join(json.dumps(i) + "\n" for i in items)


def _home(tmp_path: Path, base: Path, ollama: FakeOllama | None, *, records: int = 80, extra: str = "",
          trigger: str = "", evals: str = "", gate: str = "") -> Path:
    """A tiny-model home with `records` facts ingested and the fact suite; `trigger`, `evals` and `gate` are
    added to those sections."""
    publish = (f'[publish]\nollama_host = "{ollama.url}"\ntimeout_seconds = 30.0\nretry_base_minutes = 0.005\n'
               "retry_max_minutes = 0.01\n") if ollama else ""
    text = (TINY_TRAINING.format(base=base, epochs=3, max_steps=0).replace("[surveyor.trigger]\n",
                                                                           "[surveyor.trigger]\n" + trigger)
            .replace("[eval]\n", "[eval]\n" + evals)
            + "[gate]\nmin_eval_items = 10\nmax_pass_rate_drop = 0.2\nmax_distinct_2_drop = 0.5\n"
              "max_repetition_rise = 0.5\nmax_empty_rise = 0.2\n" + gate + publish + extra)
    cfg_path = write_config(tmp_path / "home", text)
    suites = tmp_path / "home" / "data" / "evals"
    suites.mkdir(parents=True, exist_ok=True)
    (suites / "surveyor.jsonl").write_text(_suite())
    recs = [fact_record(f"site{i}", COLOURS[i % len(COLOURS)]) for i in range(records)]
    assert iceburgd("ingest", str(write_jsonl(tmp_path / "r.jsonl", recs)), config=cfg_path).returncode == 0
    return cfg_path


def _runs(cfg_path: Path) -> list[dict]:
    return json.loads(iceburgd("runs", "list", "--json", config=cfg_path).stdout)


def _statuses(db_path: Path) -> list[str]:
    if not db_path.exists():
        return []
    store = Store.open_readonly(db_path)
    try:
        return [r["status"] for r in store.runs()]
    finally:
        store.close()


def _models(cfg_path: Path) -> dict:
    done = iceburgd("models", "list", "--json", config=cfg_path)
    assert done.returncode == 0, done.stderr
    return {r["role"]: r for r in json.loads(done.stdout)["roles"]}


def _shuffle_training_answers(run_dir: Path) -> None:
    """The frozen snapshot is what the child trains on: scramble every answer's words (a deliberately bad run)."""
    rng = random.Random(7)
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    for row in rows:
        words = row["messages"][-1]["content"].split()
        rng.shuffle(words)
        row["messages"][-1]["content"] = " ".join(words)
    (run_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_promoted_published_then_a_worse_candidate_is_rejected_and_rollback(tmp_path, tiny_base, ollama):
    cfg_path = _home(tmp_path, tiny_base, ollama)
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout)
    assert first["status"] == "published", first
    assert first["evaluation"]["passed"] and first["evaluation"]["baseline"] == "base"
    run_dir = Path(first["run_dir"])
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["items"]["suite"] == 8 and report["items"]["references"] == 8 and report["items"]["held_out"] >= 10
    assert "**Decision: PROMOTE**" in (run_dir / "eval.md").read_text()
    # Ollama: the version tag was created from the uploaded safetensors and the alias shares its weights
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v1") is not None
    created = ollama.models["iceburg-surveyor:v1"]
    assert created["parameters"] == {"stop": ["<|im_start|>", "<|im_end|>"]} and "<|im_start|>" in created["template"]
    assert created["system"].startswith("You are ICEBURG Surveyor")
    assert any(p.endswith(".safetensors") for p in created["files"])
    assert [("POST", "/api/chat")] == [r for r in ollama.requests if r == ("POST", "/api/chat")]  # one smoke test
    # the registry: v1 with its manifest, card and Modelfile; merged weights hard-linked, not copied
    v1 = tmp_path / "home" / "models" / "surveyor" / "v1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["run_id"] == first["id"] and manifest["gate"]["passed"] and manifest["parent_champion"] is None
    weights = next((v1 / "merged").glob("*.safetensors"))
    assert weights.stat().st_ino == (run_dir / "merged" / weights.name).stat().st_ino
    assert "FROM ./merged" in (v1 / "Modelfile").read_text() and "rollback" in (v1 / "README.md").read_text()

    # a deliberately worse candidate, through the daemon: rejected, kept for inspection, never published
    queued = json.loads(iceburgd("train", "--role", "surveyor", "--now", "--json", config=cfg_path).stdout)
    assert queued["created"], queued
    _shuffle_training_answers(Path(json.loads(iceburgd("runs", "show", queued["id"], "--json",
                                                       config=cfg_path).stdout)["run_dir"]))
    done = iceburgd("run", "--once", config=cfg_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads(iceburgd("runs", "show", queued["id"], "--json", config=cfg_path).stdout)
    assert second["status"] == "rejected" and second["evaluation"]["baseline"] == "champion", second
    assert "not_better" in second["evaluation"]["reasons"]
    models = _models(cfg_path)["surveyor"]
    assert models["champion"] == 1 and [v["decision"] for v in models["versions"]] == ["promoted", "rejected"]
    assert "iceburg-surveyor:v2" not in ollama.models
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v1")

    # forced anyway (recorded as forced), then rolled back in one command: the alias follows both moves
    forced = iceburgd("promote", queued["id"], "--force", "--reason", "testing the override", "--json",
                      config=cfg_path)
    assert forced.returncode == 0, forced.stderr
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v2") is not None
    back = iceburgd("rollback", "surveyor", "--json", config=cfg_path)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"role": "surveyor", "from": 2, "to": 1, "published": True}
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v1")
    history = _models(cfg_path)["surveyor"]["history"]
    assert [(h["action"], h["from_version"], h["to_version"], h["forced"]) for h in history] == [
        ("promote", None, 1, 0), ("force", 1, 2, 1), ("rollback", 2, 1, 0)]
    creates = [r for r in ollama.requests if r == ("POST", "/api/create")]
    assert len(creates) == 2  # v1 once, v2 once: the rollback reused v1's tag
    again = iceburgd("eval", queued["id"], "--against", "v1", "--json", config=cfg_path, timeout=300)
    assert again.returncode == 0, again.stderr
    again = json.loads(again.stdout)
    assert again["status"] == "rejected" and again["evaluation"]["baseline"] == "v1", again
    assert _models(cfg_path)["surveyor"]["champion"] == 1

    # lineage: a trained record names the versions that saw it; forgetting it keeps it out of the next run
    store = Store.open_readonly(load_config(cfg_path, env={}).db_path)
    record_id = store.conn.execute("SELECT record_id FROM run_records WHERE run_id = ? LIMIT 1",
                                   (first["id"],)).fetchone()[0]
    store.close()
    which = json.loads(iceburgd("data", "which-models", str(record_id), "--json", config=cfg_path).stdout)
    assert [(v["version"], v["champion"]) for v in which["versions"]] == [(1, True), (2, False)]
    forgot = json.loads(iceburgd("data", "forget", str(record_id), "--json", config=cfg_path).stdout)
    assert forgot["retrain"] == ["surveyor"] and forgot["newly"] is True
    third = json.loads(iceburgd("train", "--role", "surveyor", "--now", "--json", config=cfg_path).stdout)
    third_dir = Path(json.loads(iceburgd("runs", "show", third["id"], "--json", config=cfg_path).stdout)["run_dir"])
    trained_on = [json.loads(line)["id"] for line in (third_dir / "train.jsonl").read_text().splitlines()]
    assert record_id not in trained_on and len(trained_on) == first["train_count"] - 1


def test_ollama_down_then_back_and_an_error_mid_stream(tmp_path, tiny_base, ollama):
    cfg_path = _home(tmp_path, tiny_base, ollama)
    ollama.stop()
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=600)
    run = json.loads(done.stdout)
    assert done.returncode == 1 and run["status"] == "publish_pending", run
    assert "unreachable" in run["reason"]
    models = _models(cfg_path)["surveyor"]
    assert models["champion"] == 1 and models["alias_version"] is None and "unreachable" in models["publish_error"]
    status = json.loads(iceburgd("status", "--json", config=cfg_path).stdout)
    assert any("iceburg-surveyor:latest" in w and "v1" in w for w in status["warnings"]), status["warnings"]
    ollama.start()
    ollama.faults["create"] = "midstream"  # the first retry fails after streaming began
    retry = iceburgd("publish", "surveyor", "--json", config=cfg_path)
    assert retry.returncode == 1 and "no space left on device" in retry.stdout
    assert "iceburg-surveyor:v1" not in ollama.models
    retry = iceburgd("publish", "--json", config=cfg_path)
    assert retry.returncode == 0, retry.stdout
    assert ollama.target("iceburg-surveyor:latest") == ollama.target("iceburg-surveyor:v1") is not None
    assert json.loads(iceburgd("runs", "show", run["id"], "--json", config=cfg_path).stdout)["status"] == "published"
    blobs = [r for r in ollama.requests if r[0] == "POST" and r[1].startswith("/api/blobs/")]
    assert len(blobs) == len(set(blobs))  # HEAD first: a blob already uploaded is not sent again
    status = json.loads(iceburgd("status", "--json", config=cfg_path).stdout)
    assert not any("iceburg-surveyor" in w for w in status["warnings"])


def test_an_architecture_ollama_cannot_import_is_refused_with_a_clear_error(tmp_path, tiny_base, ollama):
    cfg_path = _home(tmp_path, tiny_base, ollama)
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=600,
                    env={"ICEBURGD_PUBLISH_ENABLED": "false"})
    run = json.loads(done.stdout)
    assert run["status"] == "promoted", run
    config = tmp_path / "home" / "models" / "surveyor" / "v1" / "merged" / "config.json"
    config.write_text(config.read_text().replace("LlamaForCausalLM", "Qwen3ForCausalLM"))  # e.g. a Qwen3 base
    done = iceburgd("publish", "surveyor", "--json", config=cfg_path)
    assert done.returncode == 1
    error = json.loads(done.stdout)["published"][0]["error"]
    assert "Ollama cannot import architecture Qwen3ForCausalLM" in error and "LlamaForCausalLM" in error
    assert json.loads(iceburgd("runs", "show", run["id"], "--json", config=cfg_path).stdout)["status"] == \
        "publish_failed"
    assert not [r for r in ollama.requests if r[0] == "POST"]  # refused before anything was uploaded
    done = iceburgd("run", "--once", config=cfg_path, timeout=120)  # the daemon does not retry it by itself
    assert done.returncode == 0 and not [r for r in ollama.requests if r[0] == "POST"]


def test_the_optional_judge_sees_both_orders_so_position_bias_cancels(tmp_path, tiny_base, ollama):
    """A judge that always answers "A" prefers the candidate when it is shown first and the baseline when it is
    shown second: 1 win of 2 per prompt, a 50 % win rate, never a free pass."""
    ollama.scripted["always-a:latest"] = "A"
    cfg_path = _home(tmp_path, tiny_base, ollama, evals='judge_model = "always-a"\n',
                     gate="min_judge_win_rate = 0.6\n")
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=600,
                    env={"ICEBURGD_PUBLISH_ENABLED": "false"})
    run = json.loads(done.stdout)
    report = json.loads((Path(run["run_dir"]) / "eval.json").read_text())
    candidate = report["models"]["candidate"]
    assert candidate["judge_verdicts"] == 16 and candidate["judge_win_rate"] == 0.5  # 8 prompts x 2 orders
    assert run["status"] == "rejected" and run["evaluation"]["reasons"] == ["guard_judge_win_rate"], run
    judged = [json.loads(line) for line in (Path(run["run_dir"]) / "eval" / "results.jsonl").read_text().splitlines()
              if '"judge"' in line]
    assert all(j["picks"] == ["A", "A"] and not j["consistent"] for j in judged)
    assert "Judge: the candidate won 0.5000 of 16" in (Path(run["run_dir"]) / "eval.md").read_text()
