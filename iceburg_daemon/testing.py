"""Helpers for tests and benchmarks (shipped, so integrations can test against the daemon too).

Realistic record generators, a config writer, and a runner for the real `iceburgd` command line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

ROLE_PROMPTS = {
    "surveyor": "You are ICEBURG Surveyor, a research agent gathering evidence from authoritative sources.",
    "dissident": "You are ICEBURG Dissident, an agent that challenges assumptions and finds contradictions.",
    "synthesist": "You are ICEBURG Synthesist, an agent that integrates findings across domains.",
    "oracle": "You are ICEBURG Oracle, an agent that distills principles from validated evidence.",
}
_NOUNS = ("evidence signal protein lattice entropy market policy climate neuron graph theorem river archive "
          "catalyst spectrum cohort variance orbit enzyme ledger protocol harvest glacier syntax vector reservoir "
          "membrane tariff sediment pathogen circuit monsoon isotope algorithm parliament voltage habitat cipher "
          "turbine vaccine estuary inflation fossil compiler aquifer satellite genome currency wetland reactor").split()
_VERBS = "drives limits explains predicts reshapes weakens amplifies constrains reveals delays".split()
_ADJS = "recent regional unstable measured hidden gradual coastal synthetic chronic seasonal".split()
_DETS = ("the", "a", "each", "most", "this", "that", "any")
_PREPS = ("of", "in", "near", "around", "under", "beyond", "within")
_JOINS = ("because", "while", "when", "although", "so", "unless", "and")


def _sentence(rng: random.Random) -> str:
    """A random sentence from a tiny grammar: varied enough that no 5-word run repeats by construction."""
    def phrase() -> str:
        return f"{rng.choice(_DETS)} {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_PREPS)} " \
               f"{rng.choice(_DETS)} {rng.choice(_NOUNS)}"

    first = f"{phrase()} {rng.choice(_VERBS)} {rng.choice(_DETS)} {rng.choice(_NOUNS)}"
    if rng.random() < 0.6:
        first += f" {rng.choice(_JOINS)} {phrase()} {rng.choice(_VERBS)} {rng.choice(_NOUNS)}"
    return first[0].upper() + first[1:] + "."


def chat_record(i: int, *, answer_bytes: int = 1100, seed: int = 0) -> dict[str, Any]:
    """One realistic chat record of roughly answer_bytes + 300 bytes, unique per (i, seed), with a known role.

    The answer is varied English prose (stop words, no repeated skeleton), so the truth filter accepts it.
    """
    rng = random.Random(seed * 1_000_003 + i)
    role = list(ROLE_PROMPTS)[i % 4]
    sentences: list[str] = []
    while sum(len(x) + 1 for x in sentences) < answer_bytes:
        sentences.append(_sentence(rng))
    answer = f"Finding {i}: " + " ".join(sentences)
    return {
        "messages": [
            {"role": "system", "content": ROLE_PROMPTS[role]},
            {"role": "user", "content": f"Question {i} ({seed}): what links {rng.choice(_NOUNS)} and "
                                        f"{rng.choice(_NOUNS)}?"},
            {"role": "assistant", "content": answer},
        ],
        "metadata": {"agent_type": role, "quality_score": None if i % 7 == 0 else round(0.5 + rng.random() / 2, 3),
                     "timestamp": f"2026-11-01T00:00:{i % 60:02d}"},
    }


def chat_lines(n: int, *, answer_bytes: int = 1100, seed: int = 0) -> Iterator[str]:
    for i in range(n):
        yield json.dumps(chat_record(i, answer_bytes=answer_bytes, seed=seed))


def write_jsonl(path: Path, lines: Any) -> Path:
    """Write then rename, the inbox convention: the daemon never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    os.replace(tmp, path)
    return path


def write_config(folder: Path, text: str = "") -> Path:
    """A config.toml in folder with fast test defaults (no settle delay, short loop), plus `text` appended."""
    folder.mkdir(parents=True, exist_ok=True)
    base = ("[inbox]\nsettle_seconds = 0.0\nrescan_seconds = 0.2\n\n"
            "[daemon]\nheartbeat_seconds = 0.2\nstale_after_seconds = 5.0\n\n"
            "[metrics]\nenabled = false\n\n"
            "[defer]\nmin_free_disk_gb = 0.0\n\n"  # a test must not wait on the machine's free space
            "[publish]\nenabled = false\n")  # nor reach a real Ollama: publishing tests start their own
    path = folder / "config.toml"
    path.write_text(_merge(base, text), encoding="utf-8")
    return path


def _merge(base: str, extra: str) -> str:
    """Append `extra`; keys it sets in a section that base also has replace base's section."""
    import tomllib

    overridden = {line.strip("[] ") for line in extra.splitlines() if line.startswith("[") and not line.startswith("[[")}
    kept, skip = [], False
    for line in base.splitlines():
        if line.startswith("["):
            skip = line.strip("[] ") in overridden
        if not skip:
            kept.append(line)
    merged = "\n".join(kept) + "\n" + extra
    tomllib.loads(merged)  # fail loudly in the test, not in the daemon
    return merged


def iceburgd(*args: str, config: Path, timeout: float = 120, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process."""
    return subprocess.run([sys.executable, "-m", "iceburg_daemon", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)


def spawn_daemon(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "iceburg_daemon", "--config", str(config), "run", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def heartbeat_state(db_path: Path) -> str | None:
    """The daemon's heartbeat state ('running', 'stopped') from the store, or None before it has one."""
    from iceburg_daemon.store import Store

    if not db_path.exists():
        return None
    try:
        store = Store.open_readonly(db_path)
    except Exception:  # noqa: BLE001 - the daemon may be creating the schema right now
        return None
    try:
        row = store.heartbeat()
        return str(row["state"]) if row else None
    except Exception:  # noqa: BLE001 - tables not created yet
        return None
    finally:
        store.close()


def store_count(db_path: Path, sql: str) -> int:
    """A COUNT(*) query on a running daemon's store, read-only; 0 while the store is not created yet."""
    from iceburg_daemon.store import Store

    try:
        store = Store.open_readonly(db_path)
    except Exception:  # noqa: BLE001 - not created yet, or the daemon is creating its schema
        return 0
    try:
        return int(store.conn.execute(sql).fetchone()[0])
    finally:
        store.close()


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll until predicate() is truthy and return its value; AssertionError naming `what` after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until_running(db_path: Path, timeout: float = 30.0) -> None:
    """Block until a spawned daemon has written a 'running' heartbeat (never touches its lock)."""
    import time

    deadline = time.monotonic() + timeout
    while heartbeat_state(db_path) != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"no running heartbeat in {db_path} after {timeout} s")
        time.sleep(0.05)


def chain_config(base: Path, *, ollama_url: str, chroma: Path | None = None, metrics_port: int | None = None,
                 quality: str = "", extra: str = "") -> str:
    """A tiny-model config in which the surveyor trains by itself on 20 new records, and whose gate promotes the
    first candidate that is better than its base at all (every guard relaxed): for tests that need the whole
    chain (ingest, filter, trigger, train, evaluate, promote, publish) to run to its end. `quality` adds keys to
    [quality]."""
    return (TINY_TRAINING.format(base=base, epochs=3, max_steps=0)
            .replace("[surveyor.trigger]\n", "[surveyor.trigger]\nmin_new_records = 20\n")
            .replace("[quality]\n", "[quality]\n" + quality)
            + "[gate]\nmin_eval_items = 10\nmax_pass_rate_drop = 1.0\nmax_distinct_2_drop = 1.0\n"
              "max_repetition_rise = 1.0\nmax_empty_rise = 1.0\nmax_template_echo_rise = 1.0\n"
              "max_reference_loss_rise = 1.0\nalpha = 0.5\n"
            + f'[publish]\nenabled = true\nollama_host = "{ollama_url}"\ntimeout_seconds = 30.0\n'
              "retry_base_minutes = 0.005\nretry_max_minutes = 0.01\n"
            + (f"[metrics]\nenabled = true\nport = {metrics_port}\n" if metrics_port else "")
            + (f"[[sources.chroma]]\nname = 'memory'\npath = '{chroma}'\n" if chroma else "")
            + extra)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FACTS = [("glacier", "amber"), ("river", "cobalt"), ("volcano", "saffron"), ("forest", "teal"), ("desert", "ochre"),
         ("ocean", "indigo"), ("storm", "silver"), ("cave", "umber"), ("delta", "crimson"), ("canyon", "jade"),
         ("tundra", "violet"), ("reef", "scarlet"), ("marsh", "bronze"), ("summit", "ivory"), ("lagoon", "copper"),
         ("steppe", "maroon")]


def fact_record(place: str, colour: str, role: str = "surveyor") -> dict[str, Any]:
    """A short chat record with one fact to learn (what a tiny model can memorise in a few seconds)."""
    return {"messages": [{"role": "user", "content": f"Which colour marks the {place} archive?"},
                         {"role": "assistant", "content": f"The {place} archive is marked {colour}, as the survey "
                                                          "notes."}],
            "metadata": {"agent_type": role}}


def tiny_base(folder: Path) -> Path:
    """A tiny Llama-shaped base (imports torch: for tests and benchmarks, never the daemon)."""
    from iceburg_daemon.training.tiny import build_tiny_model

    generic = [chat_record(i, answer_bytes=300)["messages"] for i in range(60)]
    return build_tiny_model(folder, generic)


# Training settings that let the tiny base learn FACTS in seconds on a CPU; the filter's template and
# near-duplicate checks are off because the facts share one sentence pattern on purpose.
TINY_TRAINING = """
[quality]
template = false
near_dedup = false

[eval]
max_new_tokens = 24

[training]
device = "cpu"
eval_percent = 25.0
checkpoint_every_steps = 5
stop_grace_seconds = 20.0

[surveyor.trigger]
min_interval_minutes = 0.0

[surveyor.train]
base_model = "{base}"
max_length = 256
lora_r = 16
lora_alpha = 32
lora_dropout = 0.0
learning_rate = 0.02
warmup_ratio = 0.1
micro_batch = 4
grad_accum = 1
epochs = {epochs}
max_steps = {max_steps}
min_steps = 0
seed = 1
"""


def mixed_corpus(seed: int) -> list[dict[str, Any]]:
    """220 chat records for the filter: varied answers, a template nobody showed it, near and exact copies."""
    rng = random.Random(seed)
    topics = ["tidal energy", "coral bleaching", "river deltas", "glacier retreat", "monetary policy"]
    records = [chat_record(i, answer_bytes=rng.randint(300, 1200), seed=seed) for i in range(120)]
    for i in range(40):  # a template nobody showed the filter
        t = f"{rng.choice(topics)} near site {i}"
        records.append({"messages": [{"role": "user", "content": f"Summarise {t}."}, {"role": "assistant", "content": (
            f"Summary of {t}: studies of {t} agree on little. Local conditions shape {t}; models of {t} disagree on "
            f"feedbacks; monitoring of {t} is thin. Treat claims about {t} with care until they are replicated.")}],
            "metadata": {"agent_type": "synthesist"}})
    for i in range(30):  # near duplicates (a few words changed) and exact ones (case only)
        near = json.loads(json.dumps(records[i]))
        words = near["messages"][-1]["content"].split(" ")
        for _ in range(2 if i % 2 else 25):
            words[rng.randrange(len(words))] = "changed"
        near["messages"][-1]["content"] = " ".join(words)
        near["messages"][0]["content"] += " Again."
        exact = json.loads(json.dumps(records[40 + i]))
        exact["messages"][-1]["content"] = exact["messages"][-1]["content"].upper()
        records += [near, exact]
    rng.shuffle(records)
    return records
