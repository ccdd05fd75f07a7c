"""The seed's lesson, measured: does the truth filter make the trained model better?

Two homes on the default base (SmolLM2-135M-Instruct) and the real ICEBURG surveyor data: 26 hand-written
records plus the 150 template-generated ones the old pipeline trained on. Arm "unfiltered": `[quality] mode =
"off"` (everything accepted, reason filter_off). Arm "filtered": the truth filter on. Same base, steps, seed
and settings; each arm goes through the daemon's own chain (`train --foreground`: train, evaluate, gate).
Both are scored, with the base, on the same 20 hand-written science Q/As neither ever saw
(benchmarks/data/heldout_science.jsonl, as the role's suite: reference loss, checks, generated answers).
Printed per arm: reference loss, suite pass rate, distinct-2, template echo (against the filtered arm's
rejected templates, for both), the gate's decision against the base, and the two candidates compared item by
item. Whatever happens is reported.

Usage: python benchmarks/flywheel.py [--steps 30] [--max-length 512] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

from iceburg_daemon.config import load_config  # noqa: E402
from iceburg_daemon.config_release import GateConfig  # noqa: E402
from iceburg_daemon.evaluate.degeneration import degeneration  # noqa: E402
from iceburg_daemon.evaluate.gate import paired_loss_test  # noqa: E402
from iceburg_daemon.quality.text import answer as answer_of  # noqa: E402
from iceburg_daemon.quality.text import prompt as prompt_of  # noqa: E402
from iceburg_daemon.store import Store  # noqa: E402
from iceburg_daemon.testing import iceburgd, write_config  # noqa: E402

DATA = ROOT / "tests" / "fixtures" / "iceburg" / "data" / "fine_tuning" / "agent_data"
FILES = [DATA / "surveyor_training_data.jsonl", DATA / "large_corpus" / "surveyor_training_data.jsonl"]
SUITE = ROOT / "benchmarks" / "data" / "heldout_science.jsonl"


def arm(root: Path, name: str, mode: str, args: argparse.Namespace, base_dir: Path | None) -> dict:
    home = root / name
    train = (f"[surveyor.train]\nmax_steps = {args.steps}\nmax_length = {args.max_length}\nmicro_batch = 1\n"
             "grad_accum = 1\nseed = 42\n")
    cfg_path = write_config(home, f'[quality]\nmode = "{mode}"\n[training]\ndevice = "cpu"\n'
                                  f"[eval]\nmax_new_tokens = {args.max_new_tokens}\nbatch_size = 4\n{train}")
    base = home / "models" / "base" / "smollm2-135m-instruct"
    if base_dir is not None and not base.exists():
        shutil.copytree(base_dir, base)
    if not base.exists():
        assert iceburgd("base", "import-gguf", "--default", config=cfg_path, timeout=900).returncode == 0
    done = iceburgd("ingest", *map(str, FILES), "--json", config=cfg_path)
    assert done.returncode == 0, done.stderr
    verdicts = json.loads(done.stdout)["verdicts"]
    evals = home / "data" / "evals"
    evals.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SUITE, evals / "surveyor.jsonl")
    started = time.perf_counter()
    done = iceburgd("train", "--role", "surveyor", "--foreground", "--json", config=cfg_path, timeout=24 * 3600)
    run = json.loads(done.stdout)
    report = json.loads((Path(run["run_dir"]) / "eval.json").read_text())
    print(f"[{name}] filter {mode}: verdicts {verdicts}; trained on {run['train_count']} records,"
          f" {run['eval_count']} held out; {time.perf_counter() - started:.0f} s; status {run['status']}", flush=True)
    return {"home": home, "cfg": load_config(cfg_path, env={}), "run": run, "report": report, "base": base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--home", type=Path)
    args = ap.parse_args()
    root = args.home or Path(tempfile.mkdtemp(prefix="flywheel-"))
    filtered = arm(root, "filtered", "on", args, None)
    unfiltered = arm(root, "unfiltered", "off", args, filtered["base"])
    store = Store.open_readonly(filtered["cfg"].db_path)
    templates = [(prompt_of(r), answer_of(r)) for r in
                 (json.loads(row["canonical"]) for row in store.rejected_templates("surveyor"))]
    store.close()
    suite = [json.loads(line) for line in SUITE.read_text().splitlines()]
    prompts = {i["id"]: i["messages"][-1]["content"] for i in suite}
    refs = {}
    print(f"\n{'model':<22} {'ref loss':>9} {'suite pass':>10} {'distinct-2':>10} {'template echo':>13}  gate vs base")
    for name, a in (("base", filtered), ("filtered", filtered), ("unfiltered", unfiltered)):
        key = "base" if name == "base" else "candidate"
        per = a["report"]["per_item"][key]
        ref = {h: v for h, v in per["losses"].items() if h.startswith("ref:")}
        refs[name] = ref
        outputs = [{"prompt": prompts[i], "answer": v["answer"], "finished": v["finished"]}
                   for i, v in per["answers"].items()]
        d = degeneration(outputs, templates, filtered["cfg"].quality.template_threshold)
        passed = sum(not v["failed"] for v in per["answers"].values()) / max(1, len(per["answers"]))
        decision = a["report"]["decision"]
        verdict = "promote" if decision["passed"] else "reject: " + ", ".join(decision["reasons"])
        gate = "-" if name == "base" else verdict
        print(f"{name:<22} {np.mean(list(ref.values())):>9.4f} {passed:>10.2f} {d.get('distinct_2', 0):>10.3f}"
              f" {d.get('template_echo', 0):>13.2f}  {gate}")
    keys = sorted(refs["filtered"].keys() & refs["unfiltered"].keys())
    f, u = (np.array([refs[n][k] for k in keys]) for n in ("filtered", "unfiltered"))
    p, how = paired_loss_test(u, f, GateConfig())
    print(f"\nfiltered vs unfiltered on the {len(keys)} hand-written references: lower loss on {int(np.sum(f < u))}"
          f" of {len(keys)}; mean {f.mean():.4f} vs {u.mean():.4f}; {how} p = {p:.3g}")
    b = np.array([refs["base"][k] for k in keys])
    print(f"unfiltered vs base: lower on {int(np.sum(u < b))} of {len(keys)}, mean {u.mean():.4f} vs {b.mean():.4f}")
    print(f"homes kept in {root}")


if __name__ == "__main__":
    main()
