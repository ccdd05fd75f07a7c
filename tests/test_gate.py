"""The gate on crafted per-item results: better-and-significant passes, noise does not, guards veto."""

from __future__ import annotations

import numpy as np
import pytest

from iceburg_daemon.config_release import GateConfig
from iceburg_daemon.evaluate.gate import Scores, decide, mcnemar_exact, paired_loss_test

CFG = GateConfig()
GOOD_DEGEN = {"distinct_2": 0.8, "repeated_ngram_rate": 0.02, "template_echo": 0.0, "empty_rate": 0.0}


def scores(losses: np.ndarray, passes: list[bool] | None = None, **degen: float) -> Scores:
    passes = passes if passes is not None else [True] * 10
    return Scores(losses={f"item{i}": float(v) for i, v in enumerate(losses)},
                  passes={f"suite{i}": p for i, p in enumerate(passes)}, degeneration={**GOOD_DEGEN, **degen})


def base_losses(n: int = 40, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(2.0, 5.0, n)


def test_better_and_significant_passes() -> None:
    base = base_losses()
    cand = base - np.random.default_rng(2).uniform(0.05, 0.3, len(base))  # lower on every item
    d = decide(scores(cand), scores(base), CFG)
    assert d.passed, d.reasons
    assert d.items == 40 and d.reason == "passed"
    sig = next(c for c in d.checks if c.name == "significance")
    assert sig.candidate is not None and sig.candidate < 1e-3
    assert "lower on 40 of 40 items" in sig.detail


def test_better_on_average_but_noise_fails() -> None:
    base = base_losses()
    rng = np.random.default_rng(3)
    cand = base + rng.normal(0, 0.8, len(base))
    cand -= cand.mean() - (base.mean() * 0.97)  # exactly 3 % better on average, but by noise
    d = decide(scores(cand), scores(base), CFG)
    assert not d.passed
    assert d.reasons == ["not_significant"]
    improvement = next(c for c in d.checks if c.name == "improvement")
    assert improvement.passed


def test_worse_loss_fails_as_not_better() -> None:
    base = base_losses()
    d = decide(scores(base + 0.1), scores(base), CFG)
    assert d.reasons[0] == "not_better" and "not_significant" in d.reasons


def test_improvement_below_min_improvement_fails() -> None:
    base = base_losses()
    cand = base * 0.995  # 0.5 % better everywhere: significant but under the 1 % floor
    d = decide(scores(cand), scores(base), CFG)
    assert d.reasons == ["not_better"]


@pytest.mark.parametrize("metric,value,reason", [
    ("repeated_ngram_rate", 0.30, "guard_repeated_ngram_rate"),
    ("template_echo", 0.10, "guard_template_echo"),
    ("distinct_2", 0.50, "guard_distinct_2"),
    ("empty_rate", 0.20, "guard_empty_rate"),
])
def test_better_loss_with_a_worse_guard_fails(metric: str, value: float, reason: str) -> None:
    base = base_losses()
    d = decide(scores(base * 0.8, **{metric: value}), scores(base), CFG)
    assert d.reasons == [reason]
    check = next(c for c in d.checks if c.name == metric)
    assert check.candidate == value and check.baseline == GOOD_DEGEN[metric]


def test_suite_pass_rate_guard_and_tolerance() -> None:
    base = base_losses()
    ten_pass = [True] * 10
    one_lost = [True] * 9 + [False]  # 10 % drop: over the 5 % tolerance
    assert decide(scores(base * 0.8, one_lost), scores(base, ten_pass), CFG).reasons == ["guard_suite_pass_rate"]
    lenient = GateConfig(max_pass_rate_drop=0.1)
    assert decide(scores(base * 0.8, one_lost), scores(base, ten_pass), lenient).passed


def test_too_few_items_is_a_rejection_not_a_pass() -> None:
    base = base_losses(n=12)
    d = decide(scores(base * 0.5), scores(base), CFG)  # halved loss everywhere, but only 12 items
    assert not d.passed and d.reasons == ["too_few_items"]
    assert decide(scores(base * 0.5), scores(base), GateConfig(min_eval_items=10)).passed


def test_only_paired_items_count() -> None:
    """Items that only one side has (e.g. a held-out record added after the champion was scored and not yet
    cached) are left out of the comparison."""
    base = base_losses(n=30)
    cand = Scores(losses={**scores(base * 0.8).losses, "extra": 0.0}, passes={}, degeneration={})
    baseline = Scores(losses={k: v for k, v in scores(base).losses.items() if k != "item0"}, passes={},
                      degeneration={})
    d = decide(cand, baseline, CFG)
    assert d.items == 29 and d.passed
    assert [c.name for c in d.checks] == ["improvement", "significance"]  # no suite: guards do not apply


def test_first_model_against_the_base_uses_the_same_rule() -> None:
    """The base is just another Scores: a candidate that does not beat it is rejected like any other."""
    base = base_losses()
    assert not decide(scores(base), scores(base), CFG).passed
    assert decide(scores(base - 0.5), scores(base), CFG).passed


def test_permutation_is_exact_for_small_samples_and_bootstrap_agrees() -> None:
    base = np.array([3.0, 2.5, 4.0, 3.3, 2.9, 3.8, 4.1])
    cand = base - 0.2
    p, how = paired_loss_test(base, cand, CFG)
    assert p == pytest.approx(1 / 2**7) and "exact" in how
    p_boot, how = paired_loss_test(base, cand, GateConfig(test="bootstrap"))
    assert p_boot < 0.01 and "bootstrap" in how
    p_noise, _ = paired_loss_test(base, base + np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.0]), CFG)
    assert p_noise > 0.3


def test_mcnemar_counts_discordant_pairs_and_drives_a_suite_primary() -> None:
    base = {f"s{i}": i < 5 for i in range(30)}  # 5 of 30 pass
    cand = {f"s{i}": i < 20 for i in range(30)}  # 20 of 30: 15 gained, none lost
    p, gained, lost = mcnemar_exact(base, cand)
    assert (gained, lost) == (15, 0) and p == pytest.approx(0.5**15)
    cfg = GateConfig(primary="suite_pass_rate")
    d = decide(Scores(passes=cand), Scores(passes=base), cfg)
    assert d.passed and d.items == 30
    assert not decide(Scores(passes=base), Scores(passes=cand), cfg).passed


def test_hand_written_references_weigh_on_their_own():
    """A held-out split full of template junk can carry the pooled loss while every hand-written reference
    gets worse (what benchmarks/flywheel.py measured for the unfiltered run): that is a rejection."""
    junk = {f"junk{i}": 3.0 for i in range(30)}
    refs = {f"ref:{i}": 3.3 for i in range(20)}
    baseline = Scores(losses={**junk, **refs})
    candidate = Scores(losses={**{k: 1.5 for k in junk}, **{k: 3.35 for k in refs}})  # junk learnt, refs worse
    d = decide(candidate, baseline, CFG)
    assert d.reasons == ["guard_reference_loss"]
    check = next(c for c in d.checks if c.name == "reference_loss")
    assert check.candidate == pytest.approx(3.35) and "lower on 0" in check.detail
    better = Scores(losses={**{k: 1.5 for k in junk}, **{k: 3.1 for k in refs}})
    assert decide(better, baseline, CFG).passed
    assert decide(candidate, baseline, GateConfig(max_reference_loss_rise=0.05)).passed  # 1.5 % allowed
