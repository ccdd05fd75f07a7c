"""`iceburgd logs`: the structured log read as a person would, filtered, and followed across a rotation."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from iceburg_daemon.testing import iceburgd, write_config

LINES = [
    {"event": "daemon_started", "level": "info", "timestamp": "2026-12-02T10:00:00.1Z", "pid": 7},
    {"event": "file_ingested", "level": "info", "timestamp": "2026-12-02T10:00:01.1Z", "file": "a.jsonl", "stored": 3},
    {"event": "file_quarantined", "level": "warning", "timestamp": "2026-12-02T10:00:02.1Z", "file": "b.jsonl",
     "reason": "gzip_bomb", "detail": "255 compressed bytes"},
    {"event": "stage_failed", "level": "error", "timestamp": "2026-12-02T10:00:03.1Z", "stage": "filter",
     "exception": "Traceback (most recent call last):\n  ValueError: boom"},
]


def _home(tmp_path):
    cfg_path = write_config(tmp_path / "home")
    logs = tmp_path / "home" / "data" / "logs"
    logs.mkdir(parents=True)
    (logs / "iceburgd.log").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return cfg_path, logs / "iceburgd.log"


def test_logs_are_filtered_by_level_and_event_and_printed_for_people(tmp_path):
    cfg_path, _ = _home(tmp_path)
    warn = iceburgd("logs", "--level", "warning", config=cfg_path)
    assert warn.returncode == 0 and warn.stdout.splitlines() == [
        '2026-12-02 10:00:02 warning  file_quarantined file=b.jsonl reason=gzip_bomb detail="255 compressed bytes"',
        "2026-12-02 10:00:03 error    stage_failed stage=filter", "Traceback (most recent call last):",
        "  ValueError: boom"]
    files = iceburgd("logs", "--event", "file_*", "--json", config=cfg_path)
    assert [json.loads(x)["event"] for x in files.stdout.splitlines()] == ["file_ingested", "file_quarantined"]
    assert iceburgd("logs", "--lines", "1", config=cfg_path).stdout.startswith("2026-12-02 10:00:03 error")
    empty = write_config(tmp_path / "other")
    missing = iceburgd("logs", config=empty)
    assert missing.returncode == 1 and "no log yet" in missing.stderr


def test_logs_follow_prints_new_lines_across_a_rotation(tmp_path):
    cfg_path, log = _home(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "iceburg_daemon", "--config", str(cfg_path), "logs", "-f",
                             "--lines", "1", "--event", "stage_*"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("2026-12-02 10:00:03 error    stage_failed")  # the past, read
        proc.stdout.readline(), proc.stdout.readline()  # its traceback
        with open(log, "a") as fh:
            fh.write(json.dumps({"event": "other", "level": "info", "timestamp": "2026-12-02T11:00:00Z"}) + "\n")
            fh.write('{"event": "stage_late", "level": "warning", "timestamp": "2026-12-02T11:00:01Z", ')
            fh.flush()
            time.sleep(1.0)  # half a line is not printed
            fh.write('"lines": 2}\n')
        log.rename(log.with_name("iceburgd.log.1"))  # what RotatingFileHandler does
        log.write_text(json.dumps({"event": "stage_late", "level": "warning", "timestamp": "2026-12-02T11:00:02Z",
                                   "lines": 5}) + "\n")
        first, second = proc.stdout.readline(), proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert first == "2026-12-02 11:00:01 warning  stage_late lines=2\n"
    assert second == "2026-12-02 11:00:02 warning  stage_late lines=5\n"
