"""The inbox through the real daemon pass (Daemon.run(once=True)): claim, parse, quarantine, archive, resume."""

import dataclasses
import gzip
import json
import os

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.inbox import claim, process_claimed
from iceburg_daemon.store import FileState, Store
from iceburg_daemon.testing import chat_lines, chat_record, write_config, write_jsonl


def run_once(cfg) -> Store:
    Daemon(cfg).run(once=True)
    return Store.open_readonly(cfg.db_path)


def _count(store, where="1=1"):
    return store.conn.execute(f"SELECT COUNT(*) FROM records WHERE {where}").fetchone()[0]


def test_jsonl_gz_and_json_array_are_ingested_and_archived(cfg):
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "a.jsonl", chat_lines(30))
    with gzip.open(cfg.inbox_dir / "b.jsonl.gz", "wt") as fh:
        fh.writelines(line + "\n" for line in chat_lines(20, seed=1))
    (cfg.inbox_dir / "c.json").write_text(json.dumps([chat_record(i, seed=2) for i in range(10)], indent=2))
    store = run_once(cfg)
    assert _count(store) == 60
    assert sorted(os.listdir(cfg.inbox_dir)) == [".processing"]
    assert os.listdir(cfg.processing_dir) == []
    archived = sorted(p.name.split("_", 1)[1] for p in cfg.archive_dir.rglob("*") if p.is_file())
    assert archived == ["a.jsonl", "b.jsonl.gz", "c.json"]
    assert store.file_state_counts() == {"done": 3}
    roles = {r["role"]: r["n"] for r in store.record_counts()}
    assert roles == {"surveyor": 16, "dissident": 16, "synthesist": 14, "oracle": 14}  # i % 4 over 30, 20, 10


def test_unfinished_hidden_and_unsettled_files_are_left_alone(tmp_path):
    cfg = load_config(write_config(tmp_path, "[inbox]\nsettle_seconds = 3600.0\n"), env={})
    cfg.inbox_dir.mkdir(parents=True)
    for name in (".hidden.jsonl", "x.jsonl.tmp", "y.jsonl.part", "fresh.jsonl"):
        write_jsonl(cfg.inbox_dir / name, chat_lines(2))
    store = run_once(cfg)
    assert _count(store) == 0
    assert sorted(os.listdir(cfg.inbox_dir)) == [".hidden.jsonl", ".processing", "fresh.jsonl", "x.jsonl.tmp",
                                                 "y.jsonl.part"]


def test_links_fifos_and_folders_are_skipped_with_a_reason(cfg, tmp_path):
    cfg.inbox_dir.mkdir(parents=True)
    outside = write_jsonl(tmp_path / "outside.jsonl", chat_lines(3))
    os.symlink(outside, cfg.inbox_dir / "link.jsonl")
    os.mkfifo(cfg.inbox_dir / "pipe.jsonl")
    (cfg.inbox_dir / "folder.jsonl").mkdir()
    store = run_once(cfg)
    assert _count(store) == 0
    assert outside.exists() and (cfg.inbox_dir / "link.jsonl").is_symlink()
    events = {(e["subject"], json.loads(e["data"])["reason"]) for e in store.recent_events(20)
              if e["kind"] == "inbox_entry_skipped"}
    assert events == {("link.jsonl", "symlink"), ("pipe.jsonl", "fifo"), ("folder.jsonl", "directory")}


def test_bad_lines_are_quarantined_with_line_and_reason(cfg):
    cfg = dataclasses.replace(cfg, inbox=dataclasses.replace(cfg.inbox, max_record_bytes=4096))
    cfg.inbox_dir.mkdir(parents=True)
    good = list(chat_lines(3, answer_bytes=200))
    lines = [good[0].encode(), b"{not json", b"[1, 2]", b'{"foo": 1}', b'{"messages": []}',
             b'{"text": "\xff\xfe"}', json.dumps(chat_record(9, answer_bytes=9000)).encode(), b"",
             b'{"value": NaN}', good[1].encode(), good[2].encode()]
    (cfg.inbox_dir / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    store = run_once(cfg)
    assert _count(store) == 3
    rejects_file = next(cfg.quarantine_dir.glob("*mixed.jsonl.rejects.jsonl"))
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "invalid_json"), (3, "not_an_object"), (4, "unknown_format"), (5, "missing_turns"),
        (6, "bad_encoding"), (7, "too_large"), (9, "invalid_json")]
    assert all(r["file"] == "mixed.jsonl" and r["detail"] for r in rejects)
    assert {r["reason"]: r["n"] for r in store.quarantine_counts()}["invalid_json"] == 2
    assert next(cfg.archive_dir.rglob("*mixed.jsonl")).exists()


def test_unreadable_and_unsupported_files_are_quarantined_whole(cfg):
    cfg.inbox_dir.mkdir(parents=True)
    (cfg.inbox_dir / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    (cfg.inbox_dir / "notes.txt").write_text("hello")
    (cfg.inbox_dir / "bad.json").write_bytes(b'[{"input": "q", "output": "a"}, \xff\xff]')
    store = run_once(cfg)
    names = sorted(p.name.split("_", 1)[1] for p in cfg.quarantine_dir.iterdir() if ".rejects." not in p.name)
    assert names == ["bad.json", "broken.jsonl.gz", "notes.txt"]
    reasons = {r["reason"] for r in store.quarantined()}
    assert reasons == {"unreadable", "unsupported_type", "bad_encoding"}
    assert store.file_state_counts() == {"quarantined": 3}
    assert os.listdir(cfg.processing_dir) == []


def test_json_array_syntax_error_keeps_items_before_it(cfg):
    cfg.inbox_dir.mkdir(parents=True)
    items = ",".join(json.dumps(chat_record(i)) for i in range(5))
    (cfg.inbox_dir / "cut.json").write_text(f"[{items}, {{\"broken\": ")
    store = run_once(cfg)
    assert _count(store) == 5
    assert [(r["line_no"], r["reason"]) for r in store.quarantined()] == [(6, "invalid_json")]


def test_a_duplicate_drop_adds_nothing(cfg):
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "same.jsonl", chat_lines(25))
    run_once(cfg).close()
    write_jsonl(cfg.inbox_dir / "same.jsonl", chat_lines(25))
    store = run_once(cfg)
    assert _count(store) == 25
    rows = store.conn.execute("SELECT stored, duplicates FROM files ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(25, 0), (0, 25)]


def test_delete_after_ingest(tmp_path):
    cfg = load_config(write_config(tmp_path, "[inbox]\nsettle_seconds = 0.0\nafter_ingest = 'delete'\n"), env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "gone.jsonl", chat_lines(4))
    store = run_once(cfg)
    assert _count(store) == 4
    assert not any(p.is_file() for p in cfg.data_dir.rglob("gone.jsonl"))
    assert store.conn.execute("SELECT final_path FROM files").fetchone()[0] is None


def test_a_file_stopped_midway_resumes_from_its_checkpoint(cfg):
    cfg = dataclasses.replace(cfg, inbox=dataclasses.replace(cfg.inbox, batch_size=10))
    cfg.processing_dir.mkdir(parents=True)
    src = write_jsonl(cfg.data_dir / "big.jsonl", chat_lines(95))
    claimed = claim(src, cfg.processing_dir, 1000.0)
    store = Store.open(cfg.db_path)
    calls = iter([False, True])  # stop after the second batch
    first = process_claimed(cfg, store, claimed, clock=lambda: 1000.0, should_stop=lambda: next(calls, True))
    assert not first.complete and first.counts.total_stored == 20
    row = store.file_by_path(claimed)
    assert row["state"] == FileState.INGESTING.value and row["line_no"] == 20
    store.close()
    store = run_once(cfg)  # a fresh daemon picks the file up from .processing/
    assert _count(store) == 95
    assert store.conn.execute("SELECT stored, duplicates, state FROM files").fetchone()[:] == (95, 0, "done")


def test_a_file_leaves_processing_only_once_its_state_is_in_the_database_file(cfg, tmp_path):
    """What a power cut keeps is the database file as last synced: copied alone (no WAL) right after the file was
    archived or quarantined, it must already say so, with the records (commits sync only at checkpoints)."""
    cfg.processing_dir.mkdir(parents=True)
    store = Store.open(cfg.db_path)
    good = claim(write_jsonl(cfg.data_dir / "good.jsonl", chat_lines(40)), cfg.processing_dir, 1000.0)
    process_claimed(cfg, store, good, clock=lambda: 1000.0, should_stop=lambda: False)
    bad = cfg.data_dir / "notes.txt"
    bad.write_text("hello")
    process_claimed(cfg, store, claim(bad, cfg.processing_dir, 1001.0), clock=lambda: 1001.0,
                    should_stop=lambda: False)
    assert os.listdir(cfg.processing_dir) == []
    copy = tmp_path / "as-synced.db"
    copy.write_bytes(cfg.db_path.read_bytes())  # while the daemon's connection is open: its WAL stays apart
    synced = Store.open_readonly(copy)
    assert _count(synced) == 40
    assert synced.file_state_counts() == {"done": 1, "quarantined": 1}
    synced.close()
    store.close()


def test_drop_copies_into_the_inbox_safely_and_never_replaces_a_file(tmp_path):
    from iceburg_daemon.testing import iceburgd, write_config

    cfg_path = write_config(tmp_path / "home")
    source = tmp_path / "usage.jsonl"
    source.write_text('{"a": 1}\n')
    first = iceburgd("drop", str(source), "--json", config=cfg_path)
    second = iceburgd("drop", str(source), str(tmp_path / "missing.jsonl"), config=cfg_path)
    assert first.returncode == 0 and second.returncode == 1 and "missing.jsonl" in second.stderr
    inbox = tmp_path / "home" / "data" / "inbox"
    assert json.loads(first.stdout) == [{"path": str(source), "dropped": str(inbox / "usage.jsonl")}]
    assert sorted(p.name for p in inbox.iterdir()) == ["usage-1.jsonl", "usage.jsonl"]  # no temporary left
    assert (inbox / "usage-1.jsonl").read_text() == source.read_text() and source.exists()
