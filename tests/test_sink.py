"""iceburg_daemon.sink.InboxWriter, ICEBURG's side of the inbox: stdlib only, whole files by rename, several
writer processes at once, a bounded wait on a slow disk; everything written is ingested exactly once."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.sink import InboxWriter
from iceburg_daemon.store import Store
from iceburg_daemon.testing import spawn_daemon, store_count, wait_for, write_config

WRITER = """
import json, sys
from iceburg_daemon.sink import InboxWriter
tag, n = sys.argv[2], int(sys.argv[3])
with InboxWriter(sys.argv[1], max_records=40, max_seconds=0.2) as inbox:
    for i in range(n):
        q = f"Which colour marks the {tag}-{i} archive?"
        a = f"The {tag}-{i} archive is marked teal, as the survey notes."
        assert inbox.write({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                            "metadata": {"agent_type": "surveyor"}})
"""


def _stored(db: Path) -> int:
    return store_count(db, "SELECT COUNT(*) FROM records")


def test_two_writer_processes_feed_a_running_daemon_exactly_once(tmp_path):
    cfg_path = write_config(tmp_path / "home", "[quality]\nmode = 'paused'\n")
    cfg = load_config(cfg_path, env={})
    daemon = spawn_daemon(cfg_path)
    try:
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(cfg.inbox_dir), tag, "300"])
                   for tag in ("alpha", "beta")]
        assert [w.wait(60) for w in writers] == [0, 0]
        wait_for(lambda: _stored(cfg.db_path) == 600, 60, "600 records stored")
        wait_for(lambda: not list(cfg.inbox_dir.glob("*.jsonl")) and not list(cfg.processing_dir.iterdir()), 30,
                 "the inbox to drain")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    store = Store.open_readonly(cfg.db_path)
    files = store.conn.execute("SELECT name, state, stored, duplicates FROM files").fetchall()
    store.close()
    assert len(files) >= 16 and {f["state"] for f in files} == {"done"}  # rolled every 40 records (or 0.2 s)
    assert sum(f["stored"] for f in files) == 600 and sum(f["duplicates"] for f in files) == 0
    assert len({f["name"] for f in files}) == len(files)  # no two processes chose the same name


def test_a_slow_disk_never_blocks_the_caller_longer_than_the_bound(tmp_path, monkeypatch):
    real = InboxWriter._roll
    monkeypatch.setattr(InboxWriter, "_roll", lambda self, lines: (time.sleep(1.0), real(self, lines)))
    inbox = InboxWriter(tmp_path / "inbox", max_records=2, max_seconds=0.05, max_block_seconds=0.05, max_pending=4)
    started = time.monotonic()
    accepted = sum(inbox.write({"n": i}) for i in range(60))
    took = time.monotonic() - started
    inbox.close()
    assert took < 60 * 0.05 + 1.0 and inbox.dropped == 60 - accepted > 0
    written = [json.loads(line)["n"] for p in sorted((tmp_path / "inbox").glob("*.jsonl"))
               for line in p.read_text().splitlines()]
    assert sorted(written) == sorted(set(written)) and len(written) == accepted  # what was accepted, once
    assert not list((tmp_path / "inbox").glob(".*"))  # no temporary file left


def test_the_sink_imports_only_the_standard_library():
    tree = ast.parse((Path(__file__).resolve().parents[1] / "iceburg_daemon" / "sink.py").read_text())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
