"""A trained run -> what its evaluation scores (models x items), what the cache already holds, and the child's
request. Every model is scored on exactly the same items; results are cached per (weights hash, item hash)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_daemon.config import Config
from iceburg_daemon.errors import EvaluationError
from iceburg_daemon.evaluate.suites import SuiteItem, load_suite
from iceburg_daemon.store import Store


@dataclass(frozen=True)
class ModelRef:
    name: str  # candidate | champion | base | v<N> (eval --against)
    path: str  # a merged model folder or the base's folder
    weights: str  # SHA-256 of its weight files: the cache key
    version: int | None = None


@dataclass
class EvalPlan:
    run_id: str
    role: str
    eval_dir: Path
    candidate: ModelRef
    baseline: ModelRef  # what the gate compares with: the champion, else the base (or --against)
    models: list[ModelRef]
    loss_items: dict[str, list[dict[str, str]]]  # item hash -> whole conversation
    held_out: list[str]  # the loss items that are held-out records (the rest are suite references)
    suite: list[SuiteItem]
    gen_keys: dict[str, str] = field(default_factory=dict)  # suite item id -> generation cache key


def gen_key(item: SuiteItem, max_new_tokens: int, seed: int) -> str:
    """Generation cache key: what is asked and how (a changed item or setting is generated again)."""
    return hashlib.sha256(f"{item.item_hash()}:{max_new_tokens}:{seed}".encode()).hexdigest()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{run_dir}: no readable manifest.json ({exc})") from exc
    if "merged" not in manifest or not (run_dir / "merged" / "config.json").is_file():
        raise EvaluationError(f"{run_dir}: no merged model (trained before evaluation existed: retrain it)")
    return dict(manifest)


def make_plan(cfg: Config, store: Store, run: Any, *, against: ModelRef | None = None) -> EvalPlan:
    run_dir = Path(run["run_dir"])
    manifest = read_manifest(run_dir)
    role = run["role"]
    candidate = ModelRef("candidate", str(run_dir / "merged"), manifest["merged"]["weights_sha256"])
    base = ModelRef("base", manifest["base_model"]["path"], manifest["base_model"]["weights_sha256"])
    champion = champion_ref(store, role)
    if champion is not None and champion.weights == candidate.weights:
        champion = None  # re-evaluating the champion itself: compare with the base
    baseline = against or champion or base
    models = [candidate] + [m for m in (against, champion, base) if m is not None]
    models = list({m.weights: m for m in reversed(models)}.values())[::-1]  # one entry per weights
    loss_items: dict[str, list[dict[str, str]]] = {}
    held_out = []
    for row in store.held_out_records(role, cfg.eval.max_items):
        loss_items[row["content_hash"]] = json.loads(row["canonical"])["messages"]
        held_out.append(row["content_hash"])
    suite = load_suite(cfg.evals_dir / f"{role}.jsonl")
    for item in suite:
        if item.reference:
            loss_items["ref:" + item.item_hash()] = [*item.messages, {"role": "assistant", "content": item.reference}]
    plan = EvalPlan(run["id"], role, run_dir / "eval", candidate, baseline, models, loss_items, held_out, suite)
    plan.gen_keys = {i.id: gen_key(i, i.max_new_tokens or cfg.eval.max_new_tokens, cfg.eval.seed) for i in suite}
    return plan


def champion_ref(store: Store, role: str) -> ModelRef | None:
    champ = store.champion(role)
    if champ is None:
        return None
    return version_ref(store, role, champ["version"], name="champion")


def version_ref(store: Store, role: str, version: int, *, name: str | None = None) -> ModelRef:
    row = store.version(role, version)
    if row is None:
        raise EvaluationError(f"{role} has no version v{version} (see `iceburgd models list`)")
    if row["pruned_at"] is not None:
        raise EvaluationError(f"{role} v{version} was pruned by retention: its files are gone")
    return ModelRef(name or f"v{version}", str(Path(row["path"]) / "merged"), row["weights"], version)


def harvest(plan: EvalPlan, store: Store, now: float) -> int:
    """Move what a (possibly killed) child wrote into the cache; returns the lines taken."""
    path = plan.eval_dir / "results.jsonl"
    if not path.exists():
        return 0
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # the last line of a killed child may be cut short: it is computed again
        value = {k: v for k, v in r.items() if k not in ("model", "weights", "kind", "item")}
        rows.append((r["weights"], r["item"], r["kind"], value))
    with store.transaction():
        store.cache_results(rows, now)
    return len(rows)


def todo(plan: EvalPlan, store: Store) -> dict[str, dict[str, list[str]]]:
    """Per model, the loss and generation items the cache does not hold yet."""
    out = {}
    for m in plan.models:
        have_loss = store.cached_results(m.weights, "loss")
        have_gen = store.cached_results(m.weights, "gen")
        out[m.name] = {"loss": [h for h in plan.loss_items if h not in have_loss],
                       "gen": [k for k in dict.fromkeys(plan.gen_keys.values()) if k not in have_gen]}
    return out


def write_request(cfg: Config, plan: EvalPlan, store: Store) -> int:
    """request.json for the child; returns how many results it has to compute (0: all cached)."""
    plan.eval_dir.mkdir(parents=True, exist_ok=True)
    work = todo(plan, store)
    by_key = {plan.gen_keys[i.id]: i for i in plan.suite}
    judging = judge_todo(cfg, plan, store)
    request = {
        "judge": judging,
        "models": [{"name": m.name, "path": m.path, "weights": m.weights} for m in plan.models],
        "loss_items": [{"hash": h, "messages": msgs} for h, msgs in plan.loss_items.items()],
        "gen_items": [{"hash": k, "messages": i.messages, "max_new_tokens": i.max_new_tokens or cfg.eval.max_new_tokens}
                      for k, i in by_key.items()],
        "todo": work, "max_length": cfg.role(plan.role).train.max_length, "batch_size": cfg.eval.batch_size,
        "seed": cfg.eval.seed, "device": cfg.training.device,
    }
    tmp = plan.eval_dir / ".request.json.tmp"
    tmp.write_text(json.dumps(request))
    os.replace(tmp, plan.eval_dir / "request.json")
    return sum(len(w["loss"]) + len(w["gen"]) for w in work.values()) + (len(judging["todo"]) if judging else 0)


def judge_todo(cfg: Config, plan: EvalPlan, store: Store) -> dict[str, Any] | None:
    """The judge's part of the request: its model and host, which candidate-vs-baseline pairs it still has to
    judge, and the answers the cache already holds (the child generates the rest first)."""
    if not cfg.eval.judge_model:
        return None
    from iceburg_daemon.evaluate.judge import judge_key
    from iceburg_daemon.ollama import resolve_host

    done = store.cached_results(plan.candidate.weights, "judge")
    keys = [k for k in dict.fromkeys(plan.gen_keys.values())
            if judge_key(k, plan.baseline.weights) not in done]
    answers = {m.name: {k: v["answer"] for k, v in store.cached_results(m.weights, "gen").items() if k in keys}
               for m in (plan.candidate, plan.baseline)}
    return {"model": cfg.eval.judge_model, "host": resolve_host(cfg.publish.ollama_host), "todo": keys,
            "candidate": plan.candidate.name, "baseline": plan.baseline.name,
            "baseline_weights": plan.baseline.weights, "answers": answers}
