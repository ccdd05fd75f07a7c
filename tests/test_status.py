"""`iceburgd status`: the JSON it prints, field by field."""

from __future__ import annotations

import json
import time

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.status import collect
from iceburg_daemon.testing import FACTS, fact_record, write_config, write_jsonl


def test_each_kind_row_counts_its_own_verdicts(tmp_path):
    """Before: every kind's row of a role showed the role's accepted/rejected totals (3 accepted of 1 record)."""
    cfg = load_config(write_config(tmp_path / "home"), env={})
    preference = {"prompt": "Which colour marks the quarry archive?", "chosen": "The quarry archive is marked"
                  " slate, as the survey notes.", "rejected": "No idea.", "metadata": {"agent_type": "surveyor"}}
    signal = {"prompt_id": "p1", "response_time": 1.5, "success": True, "metadata": {"agent_type": "surveyor"}}
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "mixed.jsonl", [json.dumps(fact_record(p, c)) for p, c in FACTS[:3]]
                + [json.dumps(preference), json.dumps(signal)])
    assert Daemon(cfg, metrics=Metrics()).run(once=True, serve_metrics=False) == 0
    rows = {(r["role"], r["kind"]): (r["count"], r["accepted"], r["rejected"])
            for r in collect(cfg, now=time.time())["records"]}
    assert rows[("surveyor", "sft")] == (3, 3, 0)
    assert rows[("surveyor", "preference")] == (1, 1, 0)
    assert [v for k, v in rows.items() if k[1] == "signal"] == [(1, None, None)]
