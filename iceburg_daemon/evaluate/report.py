"""Cached per-item results of an EvalPlan -> each model's Scores, the gate's decision, eval.json and eval.md."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from iceburg_daemon.config import Config
from iceburg_daemon.evaluate.degeneration import degeneration
from iceburg_daemon.evaluate.gate import GateDecision, Scores, decide
from iceburg_daemon.evaluate.judge import judge_key
from iceburg_daemon.evaluate.plan import EvalPlan, ModelRef
from iceburg_daemon.evaluate.suites import failed_checks
from iceburg_daemon.quality.text import answer as answer_of
from iceburg_daemon.quality.text import prompt as prompt_of
from iceburg_daemon.store import Store


def model_results(cfg: Config, plan: EvalPlan, store: Store, model: ModelRef,
                  templates: list[tuple[str, str]]) -> tuple[Scores, dict[str, Any]]:
    """(Scores for the gate, per-item detail for the report) of one model, from the cache."""
    losses = {h: v["loss"] for h, v in store.cached_results(model.weights, "loss").items()
              if h in plan.loss_items and v.get("loss") is not None}
    gens = store.cached_results(model.weights, "gen")
    passes, answers, outputs = {}, {}, []
    for item in plan.suite:
        g = gens.get(plan.gen_keys[item.id])
        if g is None:
            continue
        failed = failed_checks(item, g["answer"])
        passes[item.id] = not failed
        answers[item.id] = {"answer": g["answer"], "failed": failed, "finished": g.get("finished", True)}
        outputs.append({"prompt": item.prompt, "answer": g["answer"], "finished": g.get("finished", True)})
    degen = degeneration(outputs, templates, cfg.quality.template_threshold)
    judge = None
    if model.name == plan.candidate.name and cfg.eval.judge_model:
        verdicts = store.cached_results(model.weights, "judge")
        mine = [verdicts[k] for k in (judge_key(plan.gen_keys[i.id], plan.baseline.weights) for i in plan.suite)
                if k in verdicts]
        judge = (sum(v["wins"] for v in mine), 2 * len(mine))
    return Scores(losses, passes, degen, judge), {"losses": losses, "answers": answers}


def evaluate_plan(cfg: Config, plan: EvalPlan, store: Store) -> tuple[GateDecision, dict[str, Any]]:
    """The gate's decision and the whole report (also written as eval.json and eval.md in the run folder)."""
    templates = [(prompt_of(r), answer_of(r)) for r in
                 (json.loads(row["canonical"]) for row in store.rejected_templates(plan.role))]
    results = {m.name: model_results(cfg, plan, store, m, templates) for m in plan.models}
    candidate, baseline = results[plan.candidate.name][0], results[plan.baseline.name][0]
    decision = decide(candidate, baseline, cfg.gate)
    report = {
        "run_id": plan.run_id, "role": plan.role, "baseline": plan.baseline.name,
        "models": {m.name: {"weights": m.weights, "version": m.version, **summary(plan, results[m.name][0])}
                   for m in plan.models},
        "decision": decision.to_dict(),
        "items": {"held_out": len(plan.held_out), "references": len(plan.loss_items) - len(plan.held_out),
                  "suite": len(plan.suite)},
        "regressions": regressions(plan, results[plan.candidate.name][1], results[plan.baseline.name][1]),
        "per_item": {name: detail for name, (_, detail) in results.items()},
    }
    _write(plan.eval_dir.parent / "eval.json", json.dumps(report, indent=1))
    _write(plan.eval_dir.parent / "eval.md", markdown(report))
    return decision, report


def summary(plan: EvalPlan, s: Scores) -> dict[str, Any]:
    held = [s.losses[h] for h in plan.held_out if h in s.losses]
    refs = [v for h, v in s.losses.items() if h.startswith("ref:")]
    judged = {"judge_win_rate": s.judge[0] / s.judge[1] if s.judge[1] else None, "judge_verdicts": s.judge[1]} \
        if s.judge is not None else {}
    return {"held_out_loss": _mean(held), "reference_loss": _mean(refs), "loss": _mean(list(s.losses.values())),
            "loss_items": len(s.losses), **judged,
            "suite_pass_rate": _mean([float(p) for p in s.passes.values()]), **s.degeneration}


def regressions(plan: EvalPlan, cand: dict[str, Any], base: dict[str, Any], n: int = 5) -> dict[str, Any]:
    """The items where the candidate did worst against the baseline, with their prompts."""
    worse = sorted(((cand["losses"][h] - base["losses"][h], h) for h in cand["losses"].keys() & base["losses"].keys()),
                   reverse=True)[:n]
    prompts = {h: next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
               for h, msgs in plan.loss_items.items()}
    lost = [{"id": i.id, "prompt": i.prompt[:300], "failed": cand["answers"][i.id]["failed"],
             "answer": cand["answers"][i.id]["answer"][:300]}
            for i in plan.suite if i.id in cand["answers"] and i.id in base["answers"]
            and cand["answers"][i.id]["failed"] and not base["answers"][i.id]["failed"]]
    return {"loss": [{"item": h[:16], "delta": round(d, 4), "prompt": prompts[h][:300]} for d, h in worse if d > 0],
            "suite_lost": lost[:n]}


def markdown(report: dict[str, Any]) -> str:
    d = report["decision"]
    verdict = "PROMOTE" if d["passed"] else "REJECT (" + ", ".join(d["reasons"]) + ")"
    lines = [f"# Evaluation of {report['run_id']} ({report['role']})", "",
             f"**Decision: {verdict}** against the {report['baseline']}, primary metric {d['primary']} on"
             f" {d['items']} paired items.", "",
             f"Items: {report['items']['held_out']} held-out records, {report['items']['references']} suite"
             f" references, {report['items']['suite']} suite prompts.", "",
             "| model | loss | held-out loss | reference loss | suite pass | distinct-2 | repeated 3-grams |"
             " template echo | empty | unterminated |", "|" + "---|" * 10]
    for name, m in report["models"].items():
        cells = [_fmt(m.get(k)) for k in ("loss", "held_out_loss", "reference_loss", "suite_pass_rate", "distinct_2",
                                          "repeated_ngram_rate", "template_echo", "empty_rate", "unterminated_rate")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    judged = report["models"][next(iter(report["models"]))]
    if "judge_verdicts" in judged:
        lines += ["", f"Judge: the candidate won {_fmt(judged['judge_win_rate'])} of {judged['judge_verdicts']}"
                      " pairwise verdicts (each pair judged in both orders)."]
    lines += ["", "## Checks", ""]
    lines += [f"- {'pass' if c['passed'] else 'FAIL'} **{c['name']}**: {c['detail']}" for c in d["checks"]]
    reg = report["regressions"]
    if reg["loss"] or reg["suite_lost"]:
        lines += ["", "## Worst regressions", ""]
        lines += [f"- loss +{r['delta']}: {r['prompt']!r}" for r in reg["loss"]]
        lines += [f"- suite item {r['id']} now fails ({'; '.join(r['failed'])}): {r['prompt']!r}"
                  for r in reg["suite_lost"]]
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
