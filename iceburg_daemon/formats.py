"""One parsed JSON object (any of ICEBURG's shapes) -> a canonical record dict, or a Reject with a reason code.

Canonical record keys: kind (sft | preference | signal), role, format, messages (sft), prompt/chosen/rejected
(preference), signal (signal payload), signals (quality_score, emergence_score, success, error; None = unknown),
meta (the source's own metadata). Identity is the hash of the content only, never of metadata or timestamps.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from iceburg_daemon import ROLES

TASK_TYPES = {"survey": "surveyor", "contradiction": "dissident", "synthesis": "synthesist", "decision": "oracle"}
# Tag stems, so that "Truth_Synthesis" or "Oracle:retry:2" still name their agent.
ROLE_STEMS = (("surveyor", "surveyor"), ("dissident", "dissident"), ("synthes", "synthesist"), ("oracle", "oracle"))
SYSTEM_PROMPT_ROLE = re.compile(r"\byou are iceburg (\w+)", re.IGNORECASE)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool", "function": "tool"}
CHAT_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Reject:
    reason: str  # stable reason code, e.g. unknown_format, missing_turns
    detail: str


# One encoder built once: json.dumps with options builds a new JSONEncoder per call (~15 % of a short dump).
# No cycle check: what is encoded was decoded from JSON or built from it, so it holds no cycles (a cycle would
# end in RecursionError instead of ValueError); the check's bookkeeping cost ~10 % of a dump.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), check_circular=False)


def canonical_json(obj: Any) -> str:
    return _CANONICAL.encode(obj)


CONTENT_KEYS = {"sft": ("messages",), "preference": ("chosen", "prompt", "rejected"), "signal": ("signal",)}


def encode_record(record: dict[str, Any]) -> tuple[str, str]:
    """(content hash, stored JSON) with the content serialised once, since that is most of the bytes.

    Identity is the content only (kind + messages, or the preference triple, or the signal payload), never
    metadata or timestamps. The stored JSON is the content object followed by the remaining keys, sorted.
    """
    keys = CONTENT_KEYS[record["kind"]]
    content = canonical_json({"kind": record["kind"], **{k: record[k] for k in keys}})
    rest = canonical_json({k: v for k, v in record.items() if k != "kind" and k not in keys})
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return digest, content if rest == "{}" else content[:-1] + "," + rest[1:]


def content_hash(record: dict[str, Any]) -> str:
    return encode_record(record)[0]


# ---- role resolution -------------------------------------------------------------------------------------------
def role_from_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().lower()
    if text in ROLES:
        return text
    if text in TASK_TYPES:
        return TASK_TYPES[text]
    head = re.split(r"[:_\s-]", text, maxsplit=1)[0]
    if head in ROLES:
        return head
    return next((role for stem, role in ROLE_STEMS if stem in text), None)


def resolve_role(obj: dict[str, Any], messages: list[dict[str, str]] | None, context_tag: Any = None) -> str:
    """metadata.agent_type / agent / task_type, then the context tag, then the system prompt, else general."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for value in (meta.get("agent_type"), meta.get("agent"), obj.get("agent_type"), obj.get("agent")):
        role = role_from_name(value)
        if role:
            return role
    task = obj.get("task_type", meta.get("task_type"))
    if isinstance(task, str) and task.lower() in TASK_TYPES:
        return TASK_TYPES[task.lower()]
    for tag in (context_tag, meta.get("context_tag"), obj.get("context")):
        role = role_from_name(tag)
        if role:
            return role
    for m in messages or []:
        if m["role"] == "system":
            found = SYSTEM_PROMPT_ROLE.search(m["content"])
            if found and role_from_name(found.group(1)):
                return role_from_name(found.group(1)) or "general"
    return "general"


# ---- field helpers ---------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A quality score or similar: a finite number, or None (unknown). Never 0 for a missing value."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _text(value: Any) -> str | None:
    """Message content: a string, or OpenAI-style parts [{type: text, text}] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        parts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    return None


def _messages(items: Any, role_key: str, content_key: str, role_map: dict[str, str] | None = None
              ) -> list[dict[str, str]] | Reject:
    if not isinstance(items, list) or not items:
        return Reject("missing_turns", f"'{role_key}'/'{content_key}' turns: expected a non-empty list")
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return Reject("bad_messages", f"turn {i} is not an object")
        raw_role = item.get(role_key)
        role = (role_map or {}).get(str(raw_role).lower(), raw_role) if role_map else raw_role
        content = _text(item.get(content_key))
        if role not in CHAT_ROLES:
            return Reject("bad_messages", f"turn {i}: unknown role {str(raw_role)[:40]!r}")
        if content is None:
            return Reject("bad_messages", f"turn {i}: content is not text")
        out.append({"role": role, "content": content})
    return out


def _check_turns(messages: list[dict[str, str]]) -> Reject | None:
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        return Reject("missing_turns", "no non-empty user turn")
    if not any(m["role"] == "assistant" for m in messages):
        return Reject("missing_turns", "no assistant turn")
    return None


def _record_ts(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for value in (meta.get("timestamp"), obj.get("timestamp"), obj.get("ts_start")):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    return None


def _sft(fmt: str, obj: dict[str, Any], messages: list[dict[str, str]], context_tag: Any = None,
         **signals: Any) -> dict[str, Any] | Reject:
    problem = _check_turns(messages)
    if problem:
        return problem
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    base_signals = {"quality_score": _number(meta.get("quality_score", obj.get("quality_score"))),
                    "emergence_score": None, "success": None, "error": None}
    base_signals.update(signals)
    return {"kind": "sft", "format": fmt, "role": resolve_role(obj, messages, context_tag), "messages": messages,
            "signals": base_signals, "meta": meta}


def _signal(fmt: str, role: str, payload: dict[str, Any], meta: dict[str, Any], **signals: Any) -> dict[str, Any]:
    base = {"quality_score": None, "emergence_score": None, "success": None, "error": None}
    base.update(signals)
    return {"kind": "signal", "format": fmt, "role": role, "signal": payload, "signals": base, "meta": meta}


# ---- adapters, tried in order; the first whose keys match owns the object --------------------------------------
def _from_preference(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        prompt_msgs: list[dict[str, str]] | Reject = [{"role": "user", "content": prompt}]
    else:
        prompt_msgs = _messages(prompt, "role", "content")
    if isinstance(prompt_msgs, Reject):
        return prompt_msgs
    sides: dict[str, list[dict[str, str]]] = {}
    for side in ("chosen", "rejected"):
        value = obj[side]
        msgs = [{"role": "assistant", "content": value}] if isinstance(value, str) else _messages(value, "role", "content")
        if isinstance(msgs, Reject):
            return Reject(msgs.reason, f"{side}: {msgs.detail}")
        if not msgs or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            return Reject("missing_turns", f"{side}: no final assistant answer")
        sides[side] = msgs
    if not any(m["role"] == "user" for m in prompt_msgs):
        return Reject("missing_turns", "prompt has no user turn")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return {"kind": "preference", "format": "preference", "role": resolve_role(obj, prompt_msgs),
            "prompt": prompt_msgs, "chosen": sides["chosen"], "rejected": sides["rejected"],
            "signals": {"quality_score": _number(meta.get("quality_score")), "emergence_score": None,
                        "success": None, "error": None}, "meta": meta}


def _from_chat(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    msgs = _messages(obj["messages"], "role", "content")
    return msgs if isinstance(msgs, Reject) else _sft("chat", obj, msgs)


def _from_sharegpt(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    msgs = _messages(obj["conversations"], "from", "value", SHAREGPT_ROLES)
    return msgs if isinstance(msgs, Reject) else _sft("sharegpt", obj, msgs)


def _from_alpaca(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    instruction, extra, output = obj.get("instruction"), obj.get("input") or "", obj.get("output")
    if not isinstance(instruction, str) or not isinstance(extra, str) or not isinstance(output, str):
        return Reject("bad_messages", "alpaca fields instruction/input/output must be strings")
    user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        msgs.insert(0, {"role": "system", "content": obj["system"]})
    return _sft("alpaca", obj, msgs)


def _from_io_pair(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    if not isinstance(obj["input"], str) or not isinstance(obj["output"], str):
        return Reject("bad_messages", "input/output must be strings")
    return _sft("io_pair", obj, [{"role": "user", "content": obj["input"]}, {"role": "assistant", "content": obj["output"]}])


def _from_prompt_log(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    inp, out = obj["input"], obj["output"]
    system, prompt, text = inp.get("system"), inp.get("prompt"), out.get("text")
    if not isinstance(prompt, str) or not isinstance(text, str):
        return Reject("missing_turns", "prompt log without input.prompt / output.text strings")
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    if isinstance(system, str) and system.strip():
        msgs.insert(0, {"role": "system", "content": system})
    error = out.get("error") if isinstance(out.get("error"), str) else None
    return _sft("prompt_log", obj, msgs, context_tag=obj.get("context"), success=False if error else None, error=error)


def _from_telemetry(obj: dict[str, Any]) -> dict[str, Any]:
    success = obj.get("success") if isinstance(obj.get("success"), bool) else None
    error = obj.get("error_message") if isinstance(obj.get("error_message"), str) else None
    return _signal("telemetry", "general", {"type": "telemetry", **obj}, {}, success=success, error=error,
                   quality_score=_number(obj.get("quality_score")))


def _from_emergence(obj: dict[str, Any]) -> dict[str, Any]:
    # The payload keeps what the row says, not its ids/timestamps, so repeated insights are one record.
    payload = {"type": "emergence", "domain": obj.get("domain"), "intelligence_type": obj.get("intelligence_type"),
               "content": obj.get("content")}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return _signal("emergence", resolve_role(obj, None), payload, meta,
                   emergence_score=_number(obj.get("emergence_score")))


def _from_secretary(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    response, status = obj.get("response"), obj.get("status")
    if isinstance(response, str) and response.strip() and isinstance(obj.get("query"), str):
        msgs = [{"role": "user", "content": obj["query"]}, {"role": "assistant", "content": response}]
        meta = {k: obj[k] for k in ("status", "time", "length", "quality") if k in obj}
        return _sft("secretary", {"metadata": meta}, msgs, success=status == "success" if status else None)
    # An error row has no answer to learn from: it is kept as a failure signal.
    payload = {"type": "secretary_error", "query": obj.get("query"), "status": status, "error": obj.get("error")}
    return _signal("secretary", "general", payload, {}, success=False, error=str(obj.get("error") or status))


def chroma_item(collection: str, item_id: str, document: Any, metadata: Any, dimension: Any) -> dict[str, Any] | Reject:
    """A ChromaDB item (live store or a flat dump row) -> signal record. Never a training example by itself."""
    if not isinstance(document, str) or not document.strip():
        return Reject("missing_document", f"{collection}/{item_id}: no document text")
    meta = metadata if isinstance(metadata, dict) else {}
    namespace = collection.removeprefix("iceburg_") if collection != "iceburg" else "principles"
    if meta.get("type") == "principle":
        kind, role = "principle", "oracle"
    elif namespace == "hallucination_patterns":
        kind, role = "hallucination_pattern", resolve_role({"metadata": meta}, None)
    else:
        kind, role = namespace, resolve_role({"metadata": meta}, None)
    payload = {"type": kind, "namespace": namespace, "document": document}
    full_meta = {"collection": collection, "id": item_id, "dimension": dimension, "metadata": meta}
    return _signal("chroma", role, payload, full_meta, success=False if kind == "hallucination_pattern" else None)


def _from_chroma_dump(obj: dict[str, Any]) -> dict[str, Any] | Reject:
    return chroma_item(str(obj["collection"]), str(obj["id"]), obj.get("document"), obj.get("metadata"),
                       obj.get("collection_dimension"))


def _is_prompt_log(o: dict[str, Any]) -> bool:
    return isinstance(o.get("input"), dict) and isinstance(o.get("output"), dict)


ADAPTERS = (
    (lambda o: {"prompt", "chosen", "rejected"} <= o.keys(), _from_preference),
    (lambda o: "messages" in o, _from_chat),
    (lambda o: "conversations" in o, _from_sharegpt),
    (_is_prompt_log, _from_prompt_log),
    (lambda o: "instruction" in o and "output" in o, _from_alpaca),
    (lambda o: "input" in o and "output" in o, _from_io_pair),
    (lambda o: "prompt_id" in o and ("response_time" in o or "success" in o), _from_telemetry),
    (lambda o: "intelligence_id" in o and "content" in o, _from_emergence),
    (lambda o: "query" in o and ("response" in o or "status" in o), _from_secretary),
    (lambda o: {"collection", "id", "document"} <= o.keys(), _from_chroma_dump),
)


def parse_object(obj: Any) -> dict[str, Any] | Reject:
    """Detect the shape of one decoded JSON value and adapt it."""
    if not isinstance(obj, dict):
        return Reject("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    for matches, adapt in ADAPTERS:
        if matches(obj):
            result = adapt(obj)
            if not isinstance(result, Reject):
                result["record_ts"] = _record_ts(obj)
            return result
    keys = ", ".join(sorted(map(str, obj.keys()))[:8])
    return Reject("unknown_format", f"no adapter for keys: {keys}")
