"""The release part of the typed config: [eval] (how candidates are scored), [gate] (when one is promoted),
[registry] (what is kept) and [publish] (where Ollama is)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 256  # per suite answer, unless the suite item sets its own
    batch_size: int = 8  # prompts generated (left-padded) or scored at once
    max_items: int = 2000  # held-out records scored per evaluation (newest first beyond this)
    timeout_minutes: float = 120.0  # the evaluation child is stopped after this long; the run stays `trained`
    seed: int = 0  # generation seed (greedy decoding is deterministic anyway)
    # Optional pairwise judge: an Ollama model name ("" = off) compares the candidate's and the baseline's suite
    # answers, in both orders; its win rate is reported (and gated by [gate] min_judge_win_rate when set)
    judge_model: str = ""


@dataclass(frozen=True)
class GateConfig:
    # loss: mean per-item answer loss on held-out records and suite reference answers (lower is better);
    # suite_pass_rate: share of suite items whose checks all pass (higher is better)
    primary: Literal["loss", "suite_pass_rate"] = "loss"
    min_improvement: float = 0.01  # relative: 0.01 = the primary metric at least 1 % better than the baseline
    alpha: float = 0.05  # one-sided significance level of the paired test
    test: Literal["permutation", "bootstrap"] = "permutation"  # on per-item loss differences
    resamples: int = 10_000  # permutations or bootstrap draws (exact below 16 items)
    min_eval_items: int = 20  # fewer paired items than this is a rejection (too_few_items), never a pass
    # Hand-written reference answers weigh on their own: the candidate's mean loss on them may be at most this
    # much (relative) above the baseline's, whatever the pooled loss says. A held-out split full of template
    # junk improved the pooled loss of a model that got worse on every hand-written item (benchmarks/flywheel.py)
    max_reference_loss_rise: float = 0.0
    # guards: the candidate may be worse than the baseline by at most this much (absolute, on a 0-1 scale)
    max_pass_rate_drop: float = 0.05
    max_distinct_2_drop: float = 0.05  # share of distinct word pairs in suite answers
    max_repetition_rise: float = 0.05  # repeated 3-gram rate
    max_template_echo_rise: float = 0.0  # answers matching the role's rejected template skeletons
    max_empty_rise: float = 0.05  # empty answers
    min_judge_win_rate: float = 0.0  # with [eval] judge_model: the candidate must win at least this share
    seed: int = 0  # of the permutation test / bootstrap


@dataclass(frozen=True)
class RegistryConfig:
    keep_candidates: int = 3  # rejected or superseded versions kept beside the champion and its predecessor


@dataclass(frozen=True)
class PublishConfig:
    enabled: bool = True  # false: champions are not pushed to Ollama
    ollama_host: str = ""  # "" = $OLLAMA_HOST, else http://127.0.0.1:11434
    quantize: Literal["", "q8_0", "q4_K_S", "q4_K_M"] = ""  # "" = publish the merged weights as they are
    timeout_seconds: float = 600.0  # one HTTP request (an upload or the create stream)
    retry_base_minutes: float = 1.0  # publish_pending retries, doubling
    retry_max_minutes: float = 60.0
    smoke_prompt: str = "Say hello in one short sentence."  # asked of a new version before the alias moves


def validate_release(ev: EvalConfig, gate: GateConfig, reg: RegistryConfig, pub: PublishConfig,
                     problems: list[str]) -> None:
    if ev.max_new_tokens < 1 or ev.batch_size < 1 or ev.max_items < 1 or ev.timeout_minutes <= 0:
        problems.append("eval: max_new_tokens, batch_size and max_items must be >= 1, timeout_minutes > 0")
    if not 0 < gate.alpha < 1:
        problems.append(f"gate.alpha: must be between 0 and 1, got {gate.alpha}")
    if gate.min_improvement < 0 or gate.min_eval_items < 1 or gate.resamples < 100:
        problems.append("gate: min_improvement must be >= 0, min_eval_items >= 1, resamples >= 100")
    for name in ("max_pass_rate_drop", "max_distinct_2_drop", "max_repetition_rise", "max_template_echo_rise",
                 "max_empty_rise", "min_judge_win_rate", "max_reference_loss_rise"):
        if not 0 <= getattr(gate, name) <= 1:
            problems.append(f"gate.{name}: must be between 0 and 1, got {getattr(gate, name)}")
    if reg.keep_candidates < 0:
        problems.append(f"registry.keep_candidates: must be >= 0, got {reg.keep_candidates}")
    if pub.ollama_host and not pub.ollama_host.startswith(("http://", "https://")):
        problems.append(f"publish.ollama_host: must start with http:// or https://, got {pub.ollama_host!r}")
    if pub.timeout_seconds <= 0 or pub.retry_base_minutes <= 0 or pub.retry_max_minutes < pub.retry_base_minutes:
        problems.append("publish: timeout_seconds and retry_base_minutes must be > 0, retry_max >= retry_base")
