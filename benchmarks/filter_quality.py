"""The truth filter on ICEBURG's real data (and on a template it has never seen): one table.

Files are ingested through the real path in the order below, the filter knows nothing about which file a record
came from. Usage: python benchmarks/filter_quality.py [FIXTURES_DIR]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.store import Store
from iceburg_daemon.testing import chat_record, write_config, write_jsonl

from corpus import TEMPLATES

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "iceburg"


def run(cfg, store, chain, label, paths):
    before = store.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
    reports = ingest_paths(cfg, store, paths)
    chain.run()
    rows = store.conn.execute(
        "SELECT r.kind, v.verdict, v.reason FROM records r LEFT JOIN verdicts v ON v.record_id = r.id AND"
        " v.current = 1 WHERE r.id > ?", (before,)).fetchall()
    lines = sum(sum(r["stored"].values()) + r["duplicates"] + sum(r["quarantined"].values()) for r in reports)
    kinds = Counter(r["kind"] for r in rows)
    verdicts = Counter(r["verdict"] for r in rows if r["verdict"])
    reasons = Counter(r["reason"] for r in rows if r["reason"])
    return label, lines, len(rows), kinds, verdicts, reasons


def main() -> None:
    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FIXTURES
    data = fixtures / "data"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config(write_config(root / "home"), env={})
        store = Store.open(cfg.db_path)
        chain = FilterChain(cfg, store, clock=time.time)
        agent = data / "fine_tuning" / "agent_data"
        groups = [
            ("large_corpus (template junk)", sorted((agent / "large_corpus").glob("*.jsonl"))),
            ("hand-written agent data", sorted(agent.glob("*_training_data.jsonl"))),
            ("data/training pairs", sorted((data / "training").glob("*.jsonl"))),
            ("emergence log", [data / "emergent_intelligence" / "intelligence.jsonl"]),
            ("telemetry", [data / "telemetry" / "prompt_metrics.jsonl"]),
            ("secretary transcripts", sorted((fixtures / "tests" / "archive").glob("*.json"))),
        ]
        results = [run(cfg, store, chain, label, paths) for label, paths in groups]
        unseen = []  # per template nobody showed the filter: (name, truth per line, reason per line)
        for n, (name, make) in enumerate(TEMPLATES.items()):
            rng = random.Random(7 + n)
            mixed = [("template", make(i, rng)) for i in range(300)]
            mixed += [("varied", chat_record(i, answer_bytes=rng.randint(300, 1500), seed=77 + n)) for i in range(300)]
            rng.shuffle(mixed)
            path = write_jsonl(root / f"synthetic{n}.jsonl", [json.dumps(r) for _, r in mixed])
            first = store.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
            results.append(run(cfg, store, chain, f"synthetic {n + 1}: new template + varied", [path]))
            reasons = {int(r["source_ref"].rsplit(":", 1)[1]): r["reason"] for r in store.conn.execute(
                "SELECT r.source_ref, v.reason FROM records r JOIN verdicts v ON v.record_id = r.id AND v.current = 1"
                " WHERE r.id > ?", (first,))}
            unseen.append((name, [kind == "template" for kind, _ in mixed],
                           [reasons.get(line) for line in range(1, len(mixed) + 1)]))
        store.close()
    print(f"{'group':34} {'lines':>6} {'records':>8} {'kinds':>22} {'accepted':>9} {'rejected':>9}  rejected by reason")
    for label, lines, n, kinds, verdicts, reasons in results:
        kind_text = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        rej = verdicts.get("reject", 0)
        judged = rej + verdicts.get("accept", 0)
        share = f"{rej / judged:.1%}" if judged else "-"
        print(f"{label:34} {lines:6} {n:8} {kind_text:>22} {verdicts.get('accept', 0):9} {rej:6} ({share})  "
              + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    # Two readings: rejected at all (the outcome that matters), and rejected *as* a template or near duplicate.
    # A template slot counts only an accepted record, so members that are also repetitive are rejected by the
    # repetition filter (the slot holder falls to it and gives the slot back) rather than labelled template.
    print(f"unseen templates (300 members each among 300 varied records; template_keep = {cfg.quality.template_keep}"
          " member(s) of each skeleton kept by design):")
    for n, (name, truth, reasons_by_line) in enumerate(unseen):
        for label, hit in (("rejected for any reason", lambda r: r is not None),
                           ("as template or near_duplicate", lambda r: r in ("template", "near_duplicate"))):
            flagged = [hit(r) for r in reasons_by_line]
            tp = sum(t and f for t, f in zip(truth, flagged))
            fp = sum(f and not t for t, f in zip(truth, flagged))
            fn = sum(t and not f for t, f in zip(truth, flagged))
            print(f"  {n + 1}. {name:52} {label:30} precision {tp / max(tp + fp, 1):.3f}, recall"
                  f" {tp / max(tp + fn, 1):.3f} (tp {tp}, fp {fp}, fn {fn})")


if __name__ == "__main__":
    main()
