"""Data and measurements the benchmarks share: ICEBURG-like records (templates written three ways, a realistic
mix of varied answers, near duplicates, templates and long answers) and the RSS of a process tree."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from iceburg_daemon.testing import chat_record

TOPICS = ["soil microbiomes", "tidal energy", "urban heat islands", "protein folding", "supply chains",
          "coral bleaching", "battery recycling", "river deltas", "sleep regulation", "glacier retreat",
          "antibiotic resistance", "monetary policy", "quantum sensing", "wildfire smoke", "crop rotation"]
FRAMES = ["Give an overview of {t}.", "What should a newcomer know about {t}?", "Summarise the state of {t}."]


def synthetic_template(i: int, rng: random.Random) -> dict:
    """A template none of the filters were shown: one skeleton, topic slotted in, light wording jitter."""
    t = f"{rng.choice(TOPICS)} ({rng.choice(['coastal', 'northern', 'urban', 'rural', 'tropical'])} case {i})"
    opener = rng.choice(["In short", "Briefly", "To summarise"])
    return {"messages": [{"role": "user", "content": rng.choice(FRAMES).format(t=t)}, {"role": "assistant", "content": (
        f"{opener}: research on {t} has matured over the last decade. Three points matter. First, outcomes in {t} "
        f"depend on local conditions that most studies fail to record. Second, the leading models of {t} disagree "
        f"about how strong the feedbacks are. Third, long-term monitoring of {t} remains underfunded, so trends "
        f"are uncertain. Recommendation: treat bold claims about {t} with caution until they are replicated.")}],
        "metadata": {"agent_type": "synthesist"}}


def casual_template(i: int, rng: random.Random) -> dict:
    """Another register: chatty, first person, the topic named once, a few interchangeable words."""
    t = rng.choice(TOPICS)
    feel = rng.choice(["Honestly", "Okay so", "Right"])
    return {"messages": [{"role": "user", "content": f"quick q about {t}, case {i}?"}, {"role": "assistant", "content": (
        f"{feel}, {t} is one of those areas where everybody sounds sure and nobody really is. I'd start with what "
        f"the field actually measured rather than what the press release claimed. Look at who funded the work, "
        f"check whether anyone tried to repeat it, and don't trust a single dramatic number. If you only have "
        f"{rng.choice(['an hour', 'a weekend', 'ten minutes'])}, read one good review and skip the hot takes.")}],
        "metadata": {"agent_type": "surveyor"}}


def list_template(i: int, rng: random.Random) -> dict:
    """Another structure: a labelled list whose labels and order never change, short free slots."""
    t = f"{rng.choice(TOPICS)} in region {i}"
    return {"messages": [{"role": "user", "content": f"Assess {t}."}, {"role": "assistant", "content": (
        f"Assessment: {t}\n- Scope: {rng.choice(['narrow', 'broad', 'regional'])}\n- Evidence quality:"
        f" {rng.choice(['low', 'moderate', 'mixed'])}\n- Main uncertainty: measurement gaps\n- Competing views:"
        f" {rng.randint(2, 5)} schools of thought\n- Confidence: {rng.choice(['low', 'medium'])}\n- Next step:"
        " collect longitudinal data before drawing conclusions")}],
        "metadata": {"agent_type": "dissident"}}


TEMPLATES = {"paraphrased skeleton (the one thresholds were built near)": synthetic_template,
             "casual register": casual_template, "labelled list": list_template}


def realistic_lines(n: int, seed: int = 0) -> Iterator[str]:
    """The mix described above, deterministic per seed; near duplicates copy an answer seen before."""
    rng = random.Random(seed)
    makers = list(TEMPLATES.values())
    recent: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.10 and recent:
            record = json.loads(json.dumps(rng.choice(recent)))
            words = record["messages"][-1]["content"].split()
            for _ in range(rng.randint(1, 4)):
                words[rng.randrange(len(words))] = rng.choice(["indeed", "notably", "perhaps", "largely"])
            record["messages"][-1]["content"] = " ".join(words)
        elif roll < 0.25:
            record = rng.choice(makers)(i, rng)
        else:
            record = chat_record(i, answer_bytes=rng.randint(6000, 12000) if roll > 0.95 else 1100, seed=seed)
            recent = (recent + [record])[-1000:]
        yield json.dumps(record)


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(entry.name)] = next((int(line.split()[1]) for line in status.splitlines()
                                     if line.startswith("VmRSS:")), 0)
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier += children
    return sum(rss.get(p, 0) for p in tree) / 1024
