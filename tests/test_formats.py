import pytest

from iceburg_daemon.formats import Reject, content_hash, parse_object, resolve_role, role_from_name

USER = {"role": "user", "content": "What is entropy?"}
ANSWER = {"role": "assistant", "content": "A measure of disorder."}


def test_chat_record_keeps_null_quality_as_unknown():
    rec = parse_object({"messages": [USER, ANSWER], "metadata": {"context_tag": "Oracle:retry:2",
                                                                  "quality_score": None}})
    assert rec["kind"] == "sft" and rec["role"] == "oracle" and rec["format"] == "chat"
    assert rec["signals"]["quality_score"] is None
    assert parse_object({"messages": [USER, ANSWER], "metadata": {"quality_score": "0.7"}})["signals"][
        "quality_score"] == 0.7


@pytest.mark.parametrize(
    ("meta", "role"),
    [
        ({"agent_type": "Surveyor"}, "surveyor"),
        ({"agent": "dissident"}, "dissident"),
        ({"context_tag": "Surveyor:SourceCritique"}, "surveyor"),
        ({"context_tag": "Dissident_Escalated"}, "dissident"),
        ({"context_tag": "Truth_Synthesis"}, "synthesist"),
        ({"context_tag": "Oracle:critique"}, "oracle"),
        ({"context_tag": "Secretary"}, "general"),
        ({}, "general"),
    ],
)
def test_role_from_metadata_and_tags(meta, role):
    assert resolve_role({"metadata": meta}, [USER, ANSWER]) == role


def test_role_from_system_prompt_and_task_type():
    system = {"role": "system", "content": "You are ICEBURG Synthesist, an integrator."}
    assert parse_object({"messages": [system, USER, ANSWER]})["role"] == "synthesist"
    for task, role in [("survey", "surveyor"), ("contradiction", "dissident"), ("synthesis", "synthesist"),
                       ("decision", "oracle"), ("other", "general")]:
        rec = parse_object({"input": "q?", "output": "a.", "task_type": task})
        assert (rec["format"], rec["role"]) == ("io_pair", role)
    assert role_from_name("") is None


def test_alpaca_sharegpt_prompt_log_shapes():
    alpaca = parse_object({"instruction": "Summarise", "input": "the text", "output": "Summary."})
    assert alpaca["messages"] == [{"role": "user", "content": "Summarise\n\nthe text"},
                                  {"role": "assistant", "content": "Summary."}]
    share = parse_object({"conversations": [{"from": "human", "value": "hi?"}, {"from": "gpt", "value": "hello"}]})
    assert share["format"] == "sharegpt" and share["messages"][1]["role"] == "assistant"
    log = parse_object({"ts_start": 1.0, "ts_end": 2.0, "duration_ms": 1000, "model": "qwen2.5:7b",
                        "context": "Dissident_Audit", "options": {}, "input": {"system": "sys", "prompt": "p?"},
                        "output": {"text": "answer"}})
    assert (log["format"], log["role"], len(log["messages"])) == ("prompt_log", "dissident", 3)
    assert log["record_ts"] == "1.0"


def test_preference_pairs_text_and_messages():
    text = parse_object({"prompt": "Which?", "chosen": "A, because...", "rejected": "B"})
    assert text["kind"] == "preference" and text["chosen"] == [{"role": "assistant", "content": "A, because..."}]
    msgs = parse_object({"prompt": [USER], "chosen": [ANSWER], "rejected": [{"role": "assistant", "content": "?"}]})
    assert msgs["kind"] == "preference"
    empty = parse_object({"prompt": "Which?", "chosen": "  ", "rejected": "B"})
    assert isinstance(empty, Reject) and empty.reason == "missing_turns"


def test_signals_are_never_sft():
    tele = parse_object({"prompt_id": "x", "prompt_text": "q", "response_time": 1.2, "token_count": 5,
                         "model_used": "m", "success": False, "error_message": "boom", "quality_score": None,
                         "timestamp": 1.0})
    assert tele["kind"] == "signal" and tele["signals"]["success"] is False and tele["signals"]["error"] == "boom"
    a = parse_object({"intelligence_id": "1", "timestamp": "t1", "content": "Same", "domain": "d",
                      "intelligence_type": "insight", "emergence_score": 0.4})
    b = parse_object({"intelligence_id": "2", "timestamp": "t2", "content": "Same", "domain": "d",
                      "intelligence_type": "insight", "emergence_score": 0.9})
    assert a["kind"] == "signal" and a["signals"]["emergence_score"] == 0.4
    assert content_hash(a) == content_hash(b)  # ids and timestamps are not content


def test_secretary_rows():
    ok = parse_object({"query": "Who?", "response": "[SURVEYOR ERROR] x", "status": "partial"})
    assert ok["kind"] == "sft" and ok["signals"]["success"] is False
    err = parse_object({"query": "Who?", "status": "error", "error": "500 Server Error"})
    assert err["kind"] == "signal" and err["signal"]["type"] == "secretary_error"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "not_an_object"),
        ("text", "not_an_object"),
        ({"foo": 1}, "unknown_format"),
        ({"messages": []}, "missing_turns"),
        ({"messages": [ANSWER]}, "missing_turns"),
        ({"messages": [USER]}, "missing_turns"),
        ({"messages": [USER, {"role": "wizard", "content": "x"}]}, "bad_messages"),
        ({"messages": [USER, {"role": "assistant", "content": 5}]}, "bad_messages"),
        ({"messages": ["hi"]}, "bad_messages"),
        ({"input": 1, "output": "x"}, "bad_messages"),
    ],
)
def test_rejects_carry_reason_codes(obj, reason):
    result = parse_object(obj)
    assert isinstance(result, Reject) and result.reason == reason


def test_identity_ignores_metadata_but_not_content():
    a = parse_object({"messages": [USER, ANSWER], "metadata": {"timestamp": "1"}})
    b = parse_object({"messages": [USER, ANSWER], "metadata": {"timestamp": "2", "quality_score": 0.1}})
    c = parse_object({"messages": [USER, {"role": "assistant", "content": "Other."}]})
    assert content_hash(a) == content_hash(b) != content_hash(c)
