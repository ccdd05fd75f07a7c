"""Issue 14: property-based tests (hypothesis). Whatever the input, the readers agree with json.loads, every
format adapter gives a record or a reason, redaction is idempotent and leaves no secret, and the filter chain
gives every record exactly one verdict without an escaping exception."""

from __future__ import annotations

import json
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceburg_daemon.config import load_config
from iceburg_daemon.formats import Reject, encode_record, parse_object
from iceburg_daemon.ingest import to_new_record
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.secrets import redact, redact_value
from iceburg_daemon.readers import iter_items
from iceburg_daemon.store import Store
from iceburg_daemon.testing import write_config

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text())
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
KEYS = ["messages", "role", "content", "metadata", "agent_type", "conversations", "from", "value", "instruction",
        "input", "output", "prompt", "chosen", "rejected", "task_type", "prompt_id", "response_time", "success",
        "intelligence_id", "query", "response", "status", "collection", "id", "document", "system", "text",
        "context", "quality_score"]
# Objects shaped like the known formats, with values of any type: what reaches the adapters' edge cases.
shaped = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=25)
chats = st.builds(lambda q, a, role: {"messages": [{"role": "user", "content": q},
                                                   {"role": "assistant", "content": a}],
                                      "metadata": {"agent_type": role}},
                  st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=600),
                  st.sampled_from(["surveyor", "dissident", "synthesist", "oracle", "general", "nobody"]))

CANARIES = ["sk-ant-api03-CANARYzzzzzzzzzzzzzzzzzzzzzzzz", "AKIACANARY0123456789", "canary.person@example.org",
            "ghp_CANARYaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "xoxb-CANARY-1234567890",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5"]


@FAST
@given(st.lists(json_values, max_size=8), st.booleans())
def test_the_jsonl_reader_agrees_with_json_loads(tmp_path_factory, values, crlf):
    path = tmp_path_factory.mktemp("r") / "x.jsonl"
    lines = [json.dumps(v, ensure_ascii=False) for v in values]
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8") + b"\n")
    got = [value for _, _, value in iter_items(path, start_offset=0, start_line=0, max_bytes=1 << 20)]
    assert got == [json.loads(line) for line in lines]


@FAST
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_the_jsonl_reader_gives_a_value_or_a_reason_for_any_bytes(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("b") / "x.jsonl"
    raw = b"\n".join(chunks)
    path.write_bytes(raw)
    items = list(iter_items(path, start_offset=0, start_line=0, max_bytes=1 << 20))
    assert len(items) == sum(1 for line in raw.split(b"\n") if line.strip())
    for _, _, value in items:
        if isinstance(value, Reject):
            assert value.reason in {"invalid_json", "bad_encoding", "too_deep"}


@FAST
@given(st.one_of(json_values, shaped))
def test_every_format_adapter_gives_a_record_or_a_reason(value):
    parsed = parse_object(value)
    if isinstance(parsed, Reject):
        assert parsed.reason and isinstance(parsed.detail, str)
        return
    assert parsed["kind"] in {"sft", "preference", "signal"} and isinstance(parsed["role"], str)
    record = to_new_record(parsed, source="test", source_ref="x:1")
    assert len(record.content_hash) == 64 and json.loads(record.canonical)


@FAST
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from(CANARIES)), min_size=1, max_size=8),
       st.sampled_from([" ", "\n", "", ": ", "(", "\"", "/"]))
def test_redaction_is_idempotent_and_no_canary_survives(parts, sep):
    text = sep.join(parts)
    once, _ = redact(text)
    twice, again = redact(once)
    assert twice == once and not again  # nothing left to find the second time
    for canary in CANARIES:
        if canary in parts:
            assert canary not in once


@FAST
@given(shaped)
def test_redacting_a_whole_record_reaches_every_string(value):
    wrapped = {"payload": value, "secret": CANARIES[0], "nested": [{"k": CANARIES[2]}]}
    found: Counter[str] = Counter()
    out = redact_value(wrapped, found)
    assert CANARIES[0] not in json.dumps(out) and CANARIES[2] not in json.dumps(out)
    assert redact_value(out, Counter()) == out


@SLOW
@given(st.lists(chats, min_size=1, max_size=25))
def test_the_filter_chain_gives_every_record_one_verdict(tmp_path_factory, records):
    home = tmp_path_factory.mktemp("f")
    cfg = load_config(write_config(home, "[embedding]\nprovider = 'hash'\n"), env={})
    store = Store.open(cfg.db_path)
    try:
        news = []
        for i, record in enumerate(records):
            parsed = parse_object(record)
            if not isinstance(parsed, Reject):
                news.append(to_new_record(parsed, source="test", source_ref=f"p:{i}"))
        with store.transaction():
            store.insert_records(news, time.time())
        FilterChain(cfg, store, clock=time.time).run()
        rows = store.conn.execute("SELECT r.id, COUNT(v.id) AS n, MAX(v.reason) AS reason FROM records r LEFT JOIN"
                                  " verdicts v ON v.record_id = r.id AND v.current = 1 WHERE r.kind != 'signal'"
                                  " GROUP BY r.id").fetchall()
    finally:
        store.close()
    assert all(r["n"] == 1 for r in rows)
    assert not [r for r in rows if r["reason"] == "filter_error"]  # no filter raised on any record
    assert encode_record  # the canonical encoding above is the one the store keys on


@FAST
@given(st.text(), st.text(alphabet=st.characters(max_codepoint=127)) | st.text())
def test_the_exact_key_from_known_words_equals_the_one_from_the_text(prompt, answer):
    """The features pass the answer's words to exact_key (ASCII: their join is the normalised answer), so an
    exact duplicate gets the same key whichever way it is computed."""
    from iceburg_daemon.quality.dedup import exact_key
    from iceburg_daemon.quality.text import words

    assert exact_key(prompt, answer, words(answer)) == exact_key(prompt, answer)
