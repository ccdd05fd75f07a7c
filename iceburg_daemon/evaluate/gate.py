"""Candidate and baseline scores on the same items -> GateDecision: promote only what is measurably better.

A loss on a run's own eval split is never compared across runs: both models are scored on exactly the same
items (held-out records and suite reference answers), and the decision rests on the paired per-item data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from iceburg_daemon.config_release import GateConfig

# guard metric -> (the GateConfig tolerance, +1 when higher is worse / -1 when lower is worse)
GUARDS: dict[str, tuple[str, int]] = {
    "suite_pass_rate": ("max_pass_rate_drop", -1),
    "distinct_2": ("max_distinct_2_drop", -1),
    "repeated_ngram_rate": ("max_repetition_rise", +1),
    "template_echo": ("max_template_echo_rise", +1),
    "empty_rate": ("max_empty_rise", +1),
}


@dataclass(frozen=True)
class Scores:
    """One model's results: per-item loss (item hash -> mean token loss), per-item suite pass (item id -> all
    checks passed), and degeneration metrics over its generated suite answers (GUARDS' names)."""

    losses: dict[str, float] = field(default_factory=dict)
    passes: dict[str, bool] = field(default_factory=dict)
    degeneration: dict[str, float] = field(default_factory=dict)
    judge: tuple[int, int] | None = None  # candidate only: (wins, verdicts) from the pairwise judge, both orders


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    candidate: float | None
    baseline: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # empty when passed; else reason codes, the first one is the headline
    primary: str
    items: int
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else "passed"


def paired_loss_test(baseline: np.ndarray, candidate: np.ndarray, cfg: GateConfig) -> tuple[float, str]:
    """One-sided: is the candidate's per-item loss lower? (p-value, how it was computed). Permutation: signs of
    the paired differences flipped at random (exact when 2^n <= resamples); bootstrap: share of resampled mean
    differences at or below zero."""
    diffs = baseline - candidate
    if cfg.test == "permutation":
        res = stats.permutation_test((baseline, candidate), lambda b, c, axis: np.mean(b - c, axis=axis),
                                     permutation_type="samples", alternative="greater", vectorized=True,
                                     n_resamples=cfg.resamples, random_state=cfg.seed)
        exact = 2 ** len(diffs) <= cfg.resamples
        return float(res.pvalue), f"paired permutation ({'exact' if exact else f'{cfg.resamples} resamples'})"
    rng = np.random.default_rng(cfg.seed)
    means = diffs[rng.integers(0, len(diffs), size=(cfg.resamples, len(diffs)))].mean(axis=1)
    return float((np.sum(means <= 0) + 1) / (cfg.resamples + 1)), f"paired bootstrap ({cfg.resamples} resamples)"


def mcnemar_exact(baseline: dict[str, bool], candidate: dict[str, bool]) -> tuple[float, int, int]:
    """One-sided exact McNemar on the items both have: (p, items only the candidate passes, only the baseline)."""
    keys = baseline.keys() & candidate.keys()
    gained = sum(1 for k in keys if candidate[k] and not baseline[k])
    lost = sum(1 for k in keys if baseline[k] and not candidate[k])
    if gained + lost == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue), gained, lost


def decide(candidate: Scores, baseline: Scores, cfg: GateConfig) -> GateDecision:
    """Pass = enough paired items, primary metric better by min_improvement, significantly so at alpha, and no
    guard worse than its tolerance. Every check is kept with its numbers; failed ones give the reasons."""
    n = _count(candidate, baseline, cfg)
    checks = []
    if n < cfg.min_eval_items:
        checks.append(Check("min_eval_items", False, n, None, cfg.min_eval_items,
                            f"{n} paired items for {cfg.primary}, at least {cfg.min_eval_items} needed"))
    if n:
        checks.append(_primary(candidate, baseline, cfg))
    if n >= max(2, cfg.min_eval_items):
        checks.append(_significance(candidate, baseline, cfg))
    checks += _guards(candidate, baseline, cfg)
    refs = sorted(k for k in candidate.losses.keys() & baseline.losses.keys() if k.startswith("ref:"))
    if refs and cfg.primary == "loss":
        c = float(np.mean([candidate.losses[k] for k in refs]))
        b = float(np.mean([baseline.losses[k] for k in refs]))
        rise = (c - b) / b if b > 0 else 0.0
        wins = sum(candidate.losses[k] < baseline.losses[k] for k in refs)
        checks.append(Check("reference_loss", rise <= cfg.max_reference_loss_rise + 1e-12, c, b,
                            cfg.max_reference_loss_rise,
                            f"mean loss on {len(refs)} hand-written references {c:.4f} vs {b:.4f} ({rise:+.1%};"
                            f" lower on {wins}); at most {cfg.max_reference_loss_rise:+.1%} allowed"))
    if candidate.judge and candidate.judge[1] and cfg.min_judge_win_rate > 0:
        rate = candidate.judge[0] / candidate.judge[1]
        checks.append(Check("judge_win_rate", rate >= cfg.min_judge_win_rate, rate, None, cfg.min_judge_win_rate,
                            f"the judge preferred the candidate in {candidate.judge[0]} of {candidate.judge[1]}"
                            f" verdicts (both orders); at least {cfg.min_judge_win_rate:.0%} needed"))
    reasons = [_REASON.get(c.name, f"guard_{c.name}") for c in checks if not c.passed]
    return GateDecision(passed=not reasons, reasons=reasons, primary=cfg.primary, items=n, checks=checks)


_REASON = {"improvement": "not_better", "significance": "not_significant", "min_eval_items": "too_few_items"}


def _count(candidate: Scores, baseline: Scores, cfg: GateConfig) -> int:
    if cfg.primary == "loss":
        return len(candidate.losses.keys() & baseline.losses.keys())
    return len(candidate.passes.keys() & baseline.passes.keys())


def _paired_losses(candidate: Scores, baseline: Scores) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(candidate.losses.keys() & baseline.losses.keys())
    return (np.array([baseline.losses[k] for k in keys], dtype=float),
            np.array([candidate.losses[k] for k in keys], dtype=float))


def _pass_rate(passes: dict[str, bool], keys: set[str]) -> float | None:
    return sum(passes[k] for k in keys) / len(keys) if keys else None


def _primary(candidate: Scores, baseline: Scores, cfg: GateConfig) -> Check:
    if cfg.primary == "loss":
        base, cand = _paired_losses(candidate, baseline)
        b, c = float(base.mean()), float(cand.mean())
        gain = (b - c) / b if b > 0 else 0.0
        detail = f"mean loss {c:.4f} vs {b:.4f}: {gain:+.1%} (at least {cfg.min_improvement:.1%} needed)"
    else:
        keys = candidate.passes.keys() & baseline.passes.keys()
        b, c = _pass_rate(baseline.passes, keys) or 0.0, _pass_rate(candidate.passes, keys) or 0.0
        gain = (c - b) / b if b > 0 else (1.0 if c > 0 else 0.0)
        detail = f"suite pass rate {c:.1%} vs {b:.1%}: {gain:+.1%} (at least {cfg.min_improvement:.1%} needed)"
    return Check("improvement", gain >= cfg.min_improvement and gain > 0, c, b, cfg.min_improvement, detail)


def _significance(candidate: Scores, baseline: Scores, cfg: GateConfig) -> Check:
    if cfg.primary == "loss":
        base, cand = _paired_losses(candidate, baseline)
        p, how = paired_loss_test(base, cand, cfg)
        wins = int(np.sum(cand < base))
        detail = f"{how}: p = {p:.3g} (alpha {cfg.alpha}); lower on {wins} of {len(base)} items"
    else:
        p, gained, lost = mcnemar_exact(baseline.passes, candidate.passes)
        detail = f"exact McNemar: p = {p:.3g} (alpha {cfg.alpha}); {gained} items gained, {lost} lost"
    return Check("significance", p <= cfg.alpha, p, None, cfg.alpha, detail)


def _guards(candidate: Scores, baseline: Scores, cfg: GateConfig) -> list[Check]:
    out = []
    keys = candidate.passes.keys() & baseline.passes.keys()
    cand_metrics = {**candidate.degeneration, "suite_pass_rate": _pass_rate(candidate.passes, keys)}
    base_metrics = {**baseline.degeneration, "suite_pass_rate": _pass_rate(baseline.passes, keys)}
    for name, (tolerance_key, worse) in GUARDS.items():
        c, b = cand_metrics.get(name), base_metrics.get(name)
        if c is None or b is None:
            continue  # no suite answers to measure it on: the guard does not apply
        tolerance = getattr(cfg, tolerance_key)
        change = (c - b) * worse  # > 0: worse
        ok = change <= tolerance + 1e-12
        out.append(Check(name, ok, c, b, tolerance,
                         f"{name} {c:.3f} vs {b:.3f} ({'worse' if change > 0 else 'not worse'} by "
                         f"{abs(change):.3f}; tolerance {tolerance:.3f})"))
    return out
