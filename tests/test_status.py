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


STATUS_KEYS = {"initialised", "running", "state", "pid", "uptime_s", "activity", "heartbeat_age_s", "version",
               "data_dir", "warnings", "needs_you", "models", "inbox", "files", "records", "quarantined", "verdicts",
               "sources", "roles", "runs", "events"}
ROLE_KEYS = {"role", "enabled", "new_records", "min_new_records", "min_new_fraction", "last_train_size", "schedule",
             "next_fire", "next_fire_text", "cooldown_left_s", "backoff_left_s", "failures", "needs_attention",
             "last_success", "run", "decision", "champion", "last_run"}


def test_the_json_schema_is_pinned_and_the_screen_says_what_needs_you(tmp_path):
    """The documented `status --json` keys (docs/operations.md), and one screen with the "needs you" list."""
    from rich.console import Console

    from iceburg_daemon.status import render

    cfg = load_config(write_config(tmp_path / "home"), env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "a.jsonl", [json.dumps(fact_record(p, c)) for p, c in FACTS[:2]])
    (cfg.inbox_dir / "b.txt").write_text("not ours")
    assert Daemon(cfg, metrics=Metrics()).run(once=True, serve_metrics=False) == 0
    snap = collect(cfg, now=time.time())
    assert set(snap) == STATUS_KEYS and snap["state"] == "stopped" and snap["activity"] is None
    assert all(set(role) == ROLE_KEYS for role in snap["roles"]) and len(snap["roles"]) == 4
    assert snap["roles"][0]["champion"] is None and snap["roles"][0]["last_run"] is None
    assert snap["needs_you"][0].startswith("the daemon is stopped: start it")
    assert any("quarantined whole in the last 24 h" in n for n in snap["needs_you"])  # b.txt: unsupported_type
    console = Console(record=True, width=160, color_system=None)
    console.print(render(snap, time.time()))
    screen = console.export_text()
    assert "needs you: the daemon is stopped" in screen and "roles" in screen and "0 / 200" in screen
