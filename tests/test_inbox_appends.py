"""Issue 14, defect 10: a writer that appends in place to an inbox file loses nothing.

Before the fix a process appending one record every 3 s to data/inbox/usage.jsonl ended with 1 record stored
and the rest written into the archived file, silently lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.inbox import process_claimed
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.open_files import held_for_writing, parse_lsof
from iceburg_daemon.status import collect
from iceburg_daemon.testing import FACTS, fact_record, write_config

WRITER = """
import json, sys, time
records = json.loads(sys.argv[2])
with open(sys.argv[1], "a", encoding="utf-8") as fh:  # held open the whole time, as a logger does
    for record in records:
        line = json.dumps(record) + "\\n"
        fh.write(line[:20]); fh.flush(); time.sleep(0.15)  # a line is sometimes seen half written
        fh.write(line[20:]); fh.flush(); time.sleep(0.25)
"""


def _daemon(tmp_path: Path, extra: str = "") -> Daemon:
    cfg = load_config(write_config(tmp_path / "home", "[inbox]\nsettle_seconds = 0.1\n" + extra), env={})
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    return daemon


def _stored(daemon: Daemon) -> list[str]:
    assert daemon.store is not None
    return sorted(json.loads(r["canonical"])["messages"][1]["content"] for r in daemon.store.records())


def test_a_writer_appending_in_place_every_few_tenths_loses_nothing(tmp_path):
    daemon = _daemon(tmp_path)
    records = [fact_record(place, colour) for place, colour in FACTS[:8]]
    target = daemon.cfg.inbox_dir / "usage.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), json.dumps(records)])
    try:
        while writer.poll() is None:
            daemon.ingest_inbox()
            time.sleep(0.05)
        time.sleep(0.2)  # now settled and closed
        for _ in range(3):
            daemon.ingest_inbox()
        assert _stored(daemon) == sorted(r["messages"][1]["content"] for r in records)
        archived = list(daemon.cfg.archive_dir.rglob("*usage.jsonl"))
        assert len(archived) == 1 and len(archived[0].read_text().splitlines()) == 8
        assert daemon.store.quarantine_counts() == []  # no half-written line was ever judged
        assert not list(daemon.cfg.processing_dir.iterdir()) and not target.exists()
    finally:
        writer.kill()
        daemon.close()


def test_where_the_platform_cannot_tell_lines_appended_after_archiving_are_ingested_and_warned(tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(sys, "platform", "plan9")  # no /proc answer, no lsof: held_for_writing says None
    assert held_for_writing([tmp_path]) is None
    daemon = _daemon(tmp_path)
    target = daemon.cfg.inbox_dir / "usage.jsonl"
    with open(target, "a", encoding="utf-8") as fh:
        for place, colour in FACTS[:3]:
            fh.write(json.dumps(fact_record(place, colour)) + "\n")
        fh.flush()
        os.utime(target, (time.time() - 5, time.time() - 5))
        daemon.ingest_inbox()
        assert len(_stored(daemon)) == 3 and not target.exists()  # claimed and archived under the writer
        for place, colour in FACTS[3:5]:
            fh.write(json.dumps(fact_record(place, colour)) + "\n")
    daemon.ingest_inbox()
    assert len(_stored(daemon)) == 5
    events = [e for e in daemon.store.recent_events(20) if e["kind"] == "late_append"]
    assert [json.loads(e["data"])["lines"] for e in events] == [2]
    daemon.ingest_inbox()  # nothing new: no second event
    assert len([e for e in daemon.store.recent_events(20) if e["kind"] == "late_append"]) == 1
    daemon.close()
    warnings = collect(daemon.cfg, now=time.time())["warnings"]
    assert any("2 line(s) were appended to 1 inbox file(s) after they were archived" in w for w in warnings)


def test_a_file_that_grows_after_its_last_line_was_read_is_read_on_before_it_is_archived(tmp_path):
    daemon = _daemon(tmp_path)
    assert daemon.store is not None
    claimed = daemon.cfg.processing_dir / "00000000000000000001_usage.jsonl"
    claimed.write_text(json.dumps(fact_record(*FACTS[0])) + "\n")
    calls = []

    def clock() -> float:  # the final commit after the end of the file is where the writer strikes
        calls.append(1)
        if len(calls) == 2:
            with open(claimed, "a") as fh:
                fh.write(json.dumps(fact_record(*FACTS[1])) + "\n")
        return time.time()

    result = process_claimed(daemon.cfg, daemon.store, claimed, clock=clock, should_stop=lambda: False,
                             held=lambda paths: None)
    assert result is not None and result.complete and len(calls) > 2
    assert len(_stored(daemon)) == 2
    daemon.close()


def test_held_for_writing_sees_a_writer_but_not_a_reader(tmp_path):
    written, read = tmp_path / "w.jsonl", tmp_path / "r.jsonl"
    written.write_text("")
    read.write_text("")
    hold = ("import sys, time\nw = open(sys.argv[1], 'a'); r = open(sys.argv[2]); print('ready', flush=True);"
            " time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(written), str(read)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert held_for_writing([written, read]) == {written}
    finally:
        proc.kill()
        proc.wait()
    assert held_for_writing([written, read]) == set()


def test_lsof_field_output_is_read_by_access_mode():
    paths = [Path("/Users/u/data/inbox/a.jsonl"), Path("/Users/u/data/inbox/b.jsonl"), Path("/x/c.jsonl")]
    output = ("p501\nf3\nar\nn/Users/u/data/inbox/a.jsonl\nf4\naw\nn/Users/u/data/inbox/b.jsonl\n"
              "p777\nf5\nau\nn/x/c.jsonl\nf6\nar\nn/Users/u/data/inbox/a.jsonl\n")
    assert parse_lsof(output, paths) == {paths[1], paths[2]}
