"""Suite files (the shipped starters included) and their checks; degeneration metrics on generated answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iceburg_daemon.errors import EvaluationError
from iceburg_daemon.evaluate.degeneration import degeneration, distinct_n, repeated_ngram_rate, template_echo
from iceburg_daemon.evaluate.suites import STARTER_ROLES, SuiteItem, failed_checks, install_starters, load_suite
from iceburg_daemon.quality.text import answer as answer_of
from iceburg_daemon.quality.text import prompt as prompt_of


def test_starters_install_once_and_load(tmp_path: Path) -> None:
    written = install_starters(tmp_path / "evals")
    assert sorted(p.stem for p in written) == sorted(STARTER_ROLES)
    (tmp_path / "evals" / "surveyor.jsonl").write_text("")  # the user's edits are never overwritten
    assert install_starters(tmp_path / "evals") == []
    assert load_suite(tmp_path / "evals" / "surveyor.jsonl") == []
    for role in ("dissident", "synthesist", "oracle"):
        items = load_suite(tmp_path / "evals" / f"{role}.jsonl")
        assert len(items) >= 6 and all(i.messages[0]["content"].startswith("You are ICEBURG") for i in items)
        assert any(i.reference for i in items), role
    oracle = load_suite(tmp_path / "evals" / "oracle.jsonl")
    assert all("json_schema" in i.checks for i in oracle)
    references = [i for i in oracle if i.reference]
    assert references and all(failed_checks(i, i.reference) == [] for i in references)  # the schema fits
    assert load_suite(tmp_path / "evals" / "missing.jsonl") == []


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "hi"}]}
    path.write_text("\n".join([
        json.dumps(good),
        "not json",
        json.dumps({"id": "b", "messages": [{"role": "assistant", "content": "x"}]}),  # no user turn at the end
        json.dumps({**good, "checks": {"must_contain": ["x"]}}),  # unknown check
        json.dumps({**good, "id": "c", "checks": {"regex": ["("]}}),
        json.dumps(good),  # duplicate id
    ]))
    with pytest.raises(EvaluationError) as err:
        load_suite(path)
    message = str(err.value)
    for line in (2, 3, 4, 5, 6):
        assert f"s.jsonl:{line}:" in message
    assert "s.jsonl:1:" not in message and "must_contain" in message and "duplicate id 'a'" in message


def test_checks_say_what_failed() -> None:
    item = SuiteItem("x", [{"role": "user", "content": "q"}], {
        "must_include": ["Evidence"], "must_not_include": ["as an ai"], "regex": [r"\d{4}"],
        "max_chars": 80, "min_chars": 15})
    assert failed_checks(item, "The evidence from 2008 is clear.") == []
    failed = failed_checks(item, "As an AI I cannot say." + " x" * 40)
    assert [f.split(":")[0] for f in failed] == ["must_include", "must_not_include", "regex", "max_chars"]
    assert failed_checks(item, "evidence 1999")[0].startswith("min_chars")


def test_json_schema_check_strips_fences_and_validates() -> None:
    schema = {"type": "object", "required": ["principle_name"], "properties": {"principle_name": {"type": "string"}}}
    item = SuiteItem("o", [{"role": "user", "content": "q"}], {"json_schema": schema})
    assert failed_checks(item, '```json\n{"principle_name": "P"}\n```') == []
    assert failed_checks(item, "Principle: P") == ["json_schema: not JSON"]
    assert failed_checks(item, '{"principle_name": 3}')[0].startswith("json_schema: 3 is not of type")


def test_item_hash_changes_with_what_is_scored() -> None:
    a = SuiteItem("a", [{"role": "user", "content": "q"}], reference="r")
    assert a.item_hash() == SuiteItem("renamed", a.messages, {"min_chars": 3}, "r").item_hash()
    assert a.item_hash() != SuiteItem("a", a.messages, reference="r2").item_hash()


def test_distinct_and_repetition() -> None:
    assert distinct_n([["a", "b", "c"], ["a", "b", "d"]], 2) == pytest.approx(3 / 4)
    assert distinct_n([[]], 2) is None
    assert repeated_ngram_rate("the cat sat the cat sat the cat sat".split()) == pytest.approx(4 / 7)
    assert repeated_ngram_rate("one two three four".split()) == 0.0


def _corpus(fixtures: Path, name: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (fixtures / "data/fine_tuning/agent_data" / name).read_text().splitlines()]
    return [(prompt_of({"kind": "sft", **r}), answer_of({"kind": "sft", **r})) for r in rows]


def test_template_echo_on_the_real_template_corpus(fixtures: Path) -> None:
    """Answers shaped like ICEBURG's template-generated corpus echo it; the hand-written answers do not."""
    junk = _corpus(fixtures, "large_corpus/surveyor_training_data.jsonl")
    hand = _corpus(fixtures, "surveyor_training_data.jsonl")
    rejected, held_back = junk[:100], junk[100:120]  # the model "learned" the template: new topics, same skeleton
    assert template_echo(held_back, rejected, 0.5) >= 0.9
    assert template_echo(hand, rejected, 0.5) <= 0.1
    assert template_echo(hand, [], 0.5) == 0.0


def test_degeneration_summary() -> None:
    outputs = [{"prompt": "p", "answer": "loop loop loop loop loop", "finished": False},
               {"prompt": "p", "answer": "  ", "finished": True},
               {"prompt": "p", "answer": "A varied and finished answer.", "finished": True}]
    d = degeneration(outputs, [], 0.5)
    assert d["empty_rate"] == pytest.approx(1 / 3) and d["unterminated_rate"] == pytest.approx(1 / 3)
    assert d["repeated_ngram_rate"] > 0.2 and d["template_echo"] == 0.0
    assert degeneration([], [], 0.5) == {}
