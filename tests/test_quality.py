"""Each filter rejects what it should and leaves alone what it should not touch."""

import dataclasses
import json
import random
import time
from collections import Counter

import pytest

from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.heuristics import ngram_shares
from iceburg_daemon.quality.vocab import encode
from iceburg_daemon.store import Store
from iceburg_daemon.testing import write_jsonl

PROSE = ("Photosynthesis converts light energy into chemical energy. In the light reactions, chlorophyll absorbs "
         "photons and splits water, releasing oxygen; the Calvin cycle then fixes carbon dioxide into sugars. "
         "The efficiency of this process is limited by photorespiration, which is why C4 plants evolved a "
         "separate compartment to concentrate carbon dioxide around the enzyme RuBisCO.")
CODE_ANSWER = ("Here is a retry helper with exponential backoff, and why each line matters:\n\n```python\n"
               "import time\n\ndef retry(fn, attempts=5):\n    for i in range(attempts):\n        try:\n"
               "            return fn()\n        except OSError:\n            time.sleep(2 ** i)\n        except OSError:\n"
               "            time.sleep(2 ** i)\n    raise RuntimeError('gave up')\n```\n\nThe delay doubles after each "
               "failure, so a flaky network gets time to recover while a dead one fails after about a minute. "
               "Catch only the errors you expect: a bug in fn should surface at once instead of being retried.")
LIST_ANSWER = ("Three things decide whether a battery lasts:\n\n- Depth of discharge: shallow cycles wear the cathode "
               "far less than full ones.\n- Temperature: above 35 °C side reactions in the electrolyte speed up.\n"
               "- Charge rate: fast charging plates lithium on the anode, which is lost capacity.\n\nKeeping a "
               "phone between 20 and 80 percent avoids the worst of all three.")
FRENCH = ("La photosynthèse transforme l'énergie lumineuse en énergie chimique. Dans les réactions claires, la "
          "chlorophylle absorbe les photons et décompose l'eau, ce qui libère de l'oxygène ; le cycle de Calvin "
          "fixe ensuite le dioxyde de carbone sous forme de sucres.")
CHINESE = ("光合作用把光能转化为化学能。在光反应中，叶绿素吸收光子并分解水，释放氧气；随后卡尔文循环把二氧化碳固定为糖。"
           "这个过程的效率受到光呼吸的限制，因此C4植物进化出了单独的结构来浓缩二氧化碳。")


def chat(question, answer, role="surveyor", **meta):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "metadata": {"agent_type": role, **meta}}


def judge(cfg, tmp_path, records, name="batch.jsonl"):
    """Ingest records through the real path, run the chain, return each record's current verdict in order."""
    store = Store.open(cfg.db_path)
    path = write_jsonl(tmp_path / name, records)
    ingest_paths(cfg, store, [path])
    FilterChain(cfg, store, clock=time.time).run()
    rows = store.conn.execute(
        "SELECT r.source_ref, v.* FROM records r JOIN verdicts v ON v.record_id = r.id AND v.current = 1"
        " WHERE r.source_ref LIKE ? ORDER BY r.id", (f"{name}:%",)).fetchall()
    store.close()
    return [dict(r) for r in rows]


def reasons(verdicts):
    return [v["reason"] for v in verdicts]


GOOD = [PROSE, CODE_ANSWER, LIST_ANSWER, FRENCH, CHINESE]


def test_good_answers_of_every_shape_are_accepted(cfg, tmp_path):
    records = [chat(f"Question {i} about topic {i}?", a) for i, a in enumerate(GOOD)]
    assert reasons(judge(cfg, tmp_path, records)) == [None] * len(GOOD)


@pytest.mark.parametrize(("record", "reason"), [
    ({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "   "}]}, "missing_answer"),
    ({"messages": [{"role": "assistant", "content": "x" * 50}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": PROSE}]}, "bad_role_order"),
    (chat("q?", "Yes."), "too_short"),
    (chat("q?", PROSE * 200), "too_long"),
    (chat("Who are you?", "[SURVEYOR ERROR] I encountered an issue while generating the response: package not "
                          "installed."), "error_output"),
    (chat("Run it", "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad"), "error_output"),
    (chat("q?", "500 Server Error: Internal Server Error for url: http://localhost:8000/api/query"), "error_output"),
    (chat("q?", "I don't know the answer to that question, sorry about that."), "refusal"),
    (chat("q?", "As an AI language model, I cannot browse the internet to check that."), "refusal"),
])
def test_structure_rejects(cfg, tmp_path, record, reason):
    (verdict,) = judge(cfg, tmp_path, [record])
    assert (verdict["filter"], verdict["reason"]) == ("structure", reason)


def test_empty_template_pages_are_rejected(cfg, tmp_path, fixtures):
    pages = fixtures / "frontend/public/data/research_outputs"
    empty = (pages / "Unknown_Principle_20250905_044710/complete_knowledge_output.md").read_text()
    real = (pages / "Pancreatic_Function_Bioelectricity_Consciousness_20251105_225541.md").read_text()
    verdicts = judge(cfg, tmp_path, [chat("Write up the principle.", empty), chat("Report on bioelectricity.", real)])
    assert reasons(verdicts) == ["empty_template", None]


def test_quality_signals(cfg, tmp_path):
    telemetry = {"prompt_id": "p1", "prompt_text": "Explain the failure case in detail", "response_time": 9.1,
                 "token_count": 0, "model_used": "m", "success": False, "error_message": "timeout",
                 "quality_score": None, "timestamp": 1.0}
    pattern = {"collection": "iceburg_hallucination_patterns", "id": "h1", "document": "the moon is made of cheese",
               "metadata": {"agent": "surveyor"}, "collection_dimension": 384}
    records = [telemetry, pattern,
               chat("What is it?", PROSE, quality_score=0.2),
               chat("What is it really?", PROSE + " More.", quality_score=None),
               chat("Explain the failure case in detail", LIST_ANSWER),
               chat("Tell me about the moon", "Everyone agrees the Moon is made of cheese, as shown by many missions "
                                              "that returned samples of cheddar from the surface.")]
    verdicts = judge(cfg, tmp_path, records)
    assert reasons(verdicts) == ["low_quality_score", None, "failed_generation", "hallucination_pattern"]


def test_a_failure_signal_arriving_after_a_filter_pass_is_still_seen(cfg, tmp_path):
    store = Store.open(cfg.db_path)
    chain = FilterChain(cfg, store, clock=time.time)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "a.jsonl", [chat("What is it?", PROSE)])])
    chain.run()  # no signal yet: the pass looks at every record so far, and only once
    telemetry = {"prompt_id": "p2", "prompt_text": "Explain the failure case in detail", "response_time": 1.0,
                 "success": False, "error_message": "timeout", "timestamp": 2.0}
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "b.jsonl", [telemetry,
                                                                 chat("Explain the failure case in detail", LIST_ANSWER)])])
    chain.run()
    rows = store.conn.execute("SELECT v.reason FROM records r JOIN verdicts v ON v.record_id = r.id AND"
                              " v.current = 1 ORDER BY r.id").fetchall()
    store.close()
    assert [r["reason"] for r in rows] == [None, "failed_generation"]


def test_exact_and_near_duplicates_name_the_original(cfg, tmp_path):
    first = judge(cfg, tmp_path, [chat("What is photosynthesis?", PROSE)], "a.jsonl")[0]
    variant = chat("what is PHOTOSYNTHESIS", PROSE.upper().replace(".", "!"))
    near = chat("Explain photosynthesis.", PROSE.replace("RuBisCO", "the carboxylase enzyme"))
    other = chat("How do batteries age?", LIST_ANSWER)
    later = judge(cfg, tmp_path, [variant, near, other], "b.jsonl")
    assert [(v["reason"], v["duplicate_of"]) for v in later] == [
        ("exact_duplicate", first["record_id"]), ("near_duplicate", first["record_id"]), (None, None)]
    assert later[1]["score"] >= 0.8


def _template_corpus(n, rng):
    """A template nobody showed the filter: one skeleton, topic words slotted in."""
    topics = ["soil microbiomes", "tidal energy", "urban heat islands", "protein folding", "supply chains",
              "coral bleaching", "battery recycling", "river deltas", "sleep regulation", "glacier retreat"]
    out = []
    for i in range(n):
        t = rng.choice(topics) + f" in region {i}"
        out.append(chat(f"Give an overview of {t}.",
                        f"Overview of {t}: the evidence base on {t} has grown steadily. Three observations stand "
                        f"out. First, {t} depends on local conditions that studies rarely record. Second, models of "
                        f"{t} disagree about feedback strength. Third, long-term monitoring of {t} is underfunded. "
                        f"Recommendation: treat claims about {t} with caution until replicated.", role="synthesist"))
    return out


def test_templates_nobody_showed_us_are_clustered_and_capped(cfg, tmp_path):
    rng = random.Random(1)
    corpus = _template_corpus(40, rng)
    verdicts = judge(cfg, tmp_path, corpus + [chat(f"Q{i}?", a, role="synthesist") for i, a in enumerate(GOOD)])
    template, good = verdicts[:40], verdicts[40:]
    assert sum(v["verdict"] == "reject" for v in template) >= 39
    # Each member repeats its topic: the one holding the cluster's slot falls to the repetition filter and gives
    # the slot back (slots count accepted records only); the members are rejected either way, as one cluster.
    assert {v["reason"] for v in template} <= {"template", "near_duplicate", "repeated_ngrams"}
    store = Store.open_readonly(cfg.db_path)
    sizes = [r["size"] for r in store.conn.execute("SELECT size FROM template_clusters WHERE size > 1")]
    store.close()
    assert len(sizes) == 1 and sizes[0] >= 39
    assert reasons(good) == [None] * len(GOOD)


@pytest.mark.parametrize(("answer", "reason"), [
    ("The market went up today.\n" * 12, "repeated_lines"),
    ("We should act now. " + "the plan is good and the plan is good " * 20, "repeated_ngrams"),
    ("Encoded payload follows: " + "QUJDRA==/+9876543210" * 30, "non_text"),
    (" ".join("".join(random.Random(i).choices("bcdfgklmnprstvz", k=6)) for i in range(60)), "no_stop_words"),
])
def test_repetition_and_junk(cfg, tmp_path, answer, reason):
    (verdict,) = judge(cfg, tmp_path, [chat("Report please?", answer)])
    assert (verdict["filter"], verdict["reason"]) == ("repetition", reason)


def test_oracle_json_check_when_required(cfg, tmp_path):
    oracle_cfg = dataclasses.replace(cfg, oracle=dataclasses.replace(cfg.oracle, require_json=True))
    principle = {k: "x" for k in ("principle_name", "one_sentence_summary", "derivation_logic", "framing",
                                  "domains", "evidence_pairs", "predictions", "study_design", "implications",
                                  "prior_principles")}
    principle["one_sentence_summary"] = PROSE
    partial = {"principle_name": "Feedback", "one_sentence_summary": LIST_ANSWER}
    verdicts = judge(oracle_cfg, tmp_path, [chat("Distill a principle about energy.", "```json\n" + json.dumps(
        principle) + "\n```", role="oracle"), chat("Distill one about feedback.", json.dumps(partial), role="oracle"),
        chat("Distill anything.", FRENCH, role="oracle")])
    assert reasons(verdicts) == [None, "missing_keys", "not_json"]


def test_vectorised_ngram_shares_match_the_definition():
    def naive(tokens):
        chars = sum(map(len, tokens))
        top, dup = {}, {}
        for n in (2, 3, 4):
            grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
            top[n] = max(sum(map(len, g)) * c if c > 1 else 0 for g, c in grams.items()) / chars
        for n in range(5, 11):
            covered, seen = [False] * len(tokens), set()
            for i in range(len(tokens) - n + 1):
                if tuple(tokens[i:i + n]) in seen:
                    covered[i:i + n] = [True] * n
                seen.add(tuple(tokens[i:i + n]))
            dup[n] = sum(len(t) for t, c in zip(tokens, covered) if c) / chars
        return top, dup

    rng = random.Random(3)
    texts = []
    for _ in range(100):
        vocab = [f"w{i}" * (i % 3 + 1) for i in range(rng.choice([5, 20, 200]))]
        texts.append([rng.choice(vocab) for _ in range(rng.randint(12, 300))])
    batched = ngram_shares(encode(texts))  # one call for all: n-grams must never span two texts
    picked = ngram_shares(encode(texts[::-1] + texts).select(list(range(100, 200))))  # from a larger batch
    for tokens, together, chosen in zip(texts, batched, picked, strict=True):
        alone, slow = ngram_shares(encode([tokens]))[0], naive(tokens)
        for part in (0, 1):
            assert together[part] == alone[part] == chosen[part] == pytest.approx(slow[part])


@pytest.mark.parametrize("high", [2, 300, 10**6, 2**40, 2**62])  # the last two overflow the packing: np.unique
def test_grouping_ngram_keys_matches_numpy_unique(high):
    import numpy as np

    from iceburg_daemon.quality.heuristics import _group

    rng = np.random.default_rng(high % 1000)
    for size in (1, 2, 17, 5000):
        keys = rng.integers(0, high, size, dtype=np.int64)
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        got = _group(keys)
        assert [a.tolist() for a in got] == [first.tolist(), inverse.tolist(), counts.tolist()]


def test_repetition_reuses_the_encoded_words_with_the_same_results(cfg):
    """The features pass the words they encoded for MinHash; answers with code blocks are encoded again."""
    from iceburg_daemon.quality.heuristics import check_repetition_batch
    from iceburg_daemon.quality.text import words

    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(40)] + ["the", "of", "and"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 200))) for _ in range(60)]
    texts[7] = "intro the and of " * 20 + "```\ncode code code\n```"  # prose differs from the text
    texts[9] = "the of and " + "same words again " * 30
    tokens = [words(t) for t in texts]
    plain = check_repetition_batch(texts, cfg.quality)
    assert check_repetition_batch(texts, cfg.quality, tokens, encode(tokens)) == plain
    clean = texts[:7] + texts[8:]
    assert check_repetition_batch(clean, cfg.quality, tokens[:7] + tokens[8:], encode(tokens[:7] + tokens[8:])) \
        == check_repetition_batch(clean, cfg.quality)
    assert plain[9][0] is not None and plain[9][0].reason == "repeated_ngrams"


@pytest.mark.parametrize(("text", "kind"), [
    ("key sk-proj-" + "a1B2" * 8, "openai_key"),
    ("key sk-ant-api03-" + "x" * 40, "anthropic_key"),
    ("AKIAIOSFODNN7EXAMPLE in the config", "aws_access_key"),
    ("token ghp_" + "a" * 36, "github_token"),
    ("token github_pat_" + "B" * 30, "github_token"),
    ("slack xoxb-1234567890-abcdefghij", "slack_token"),
    ("google AIza" + "C" * 35, "google_api_key"),
    ("Authorization: Bearer " + "t0k3n" * 6, "bearer_token"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3ZhbHVl", "jwt"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private_key"),
    ("db postgres://admin:hunter2@db.internal/prod", "url_password"),
    ("mail jane.doe@example.org please", "email"),
    ("call +1 415-555-0132 or (415) 555-0199", "phone"),
])
def test_every_secret_kind_is_redacted(text, kind):
    from iceburg_daemon.quality.secrets import may_hold_secrets, redact

    assert may_hold_secrets(json.dumps(text))
    redacted, found = redact(text)
    assert found[kind] >= 1 and f"[REDACTED:{kind}]" in redacted


def test_ordinary_numbers_and_words_are_not_secrets():
    from iceburg_daemon.quality.secrets import redact

    text = "In 2024, 1,000 people (ages 18-65) saw v3.11.7; 24.6 deaths per TWh; the task-force met at 10:30."
    assert redact(text) == (text, Counter())


def test_filter_off_accepts_everything_with_a_reason_and_status_warns(tmp_path):
    """[quality] mode = "off" (the flywheel benchmark's unfiltered arm): template junk is accepted, labelled
    filter_off, and so trainable; status says the filter is off. The old `enabled` key names its replacement."""
    from iceburg_daemon.config import load_config
    from iceburg_daemon.errors import ConfigError
    from iceburg_daemon.status import collect
    from iceburg_daemon.testing import write_config

    cfg = load_config(write_config(tmp_path / "home", '[quality]\nmode = "off"\n'), env={})
    corpus = _template_corpus(40, random.Random(1)) + [chat("Q?", "As an AI " * 30)]
    verdicts = judge(cfg, tmp_path, corpus)
    assert len(verdicts) == 41
    assert {(v["verdict"], v["filter"], v["reason"]) for v in verdicts} == {("accept", "off", "filter_off")}
    store = Store.open(cfg.db_path)
    assert len(store.accepted_training_records("synthesist").fetchall()) == 40
    store.close()
    assert any("filter is off" in w for w in collect(cfg, now=time.time())["warnings"])
    with pytest.raises(ConfigError, match="quality.enabled: replaced by quality.mode"):
        load_config(write_config(tmp_path / "old", "[quality]\nenabled = false\n"), env={})
