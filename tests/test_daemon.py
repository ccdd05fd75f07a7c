"""The real `iceburgd` process: lock, signals, status exit codes, logs, metrics, and no torch in the daemon."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.store import Store
from iceburg_daemon import testing
from iceburg_daemon.testing import chat_lines, chat_record, iceburgd, spawn_daemon, write_config, write_jsonl


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def heartbeat_state(cfg):
    return testing.heartbeat_state(cfg.db_path)


def stop_cleanly(proc, *, within: float) -> None:
    """One SIGTERM: the daemon must exit 0 within `within` seconds."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < within


def stop_once_ready(proc, ready, *, settle: float, within: float) -> None:
    """Wait until `ready()`, let the daemon work `settle` seconds, then require a clean SIGTERM stop."""
    try:
        wait_for(ready, what="the daemon to be busy")
        time.sleep(settle)
        stop_cleanly(proc, within=within)
    finally:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon_home(tmp_path):
    port = free_port()
    path = write_config(tmp_path / "home", f"[metrics]\nenabled = true\nport = {port}\n")
    return path, load_config(path, env={}), port


def test_status_exit_codes_fresh_running_stopped_dead(daemon_home):
    path, cfg, _ = daemon_home
    fresh = iceburgd("status", "--json", config=path)
    assert fresh.returncode == 2 and json.loads(fresh.stdout)["state"] == "not_initialised"
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: heartbeat_state(cfg) == "running", what="heartbeat")
        running = iceburgd("status", "--json", config=path)
        assert running.returncode == 0, running.stdout
        snap = json.loads(running.stdout)
        assert snap["state"] == "running" and snap["pid"] == proc.pid and snap["heartbeat_age_s"] < 5
        table = iceburgd("status", config=path)
        assert table.returncode == 0 and "running" in table.stdout and "records" in table.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        stopped = iceburgd("status", "--json", config=path)
        assert stopped.returncode == 1 and json.loads(stopped.stdout)["state"] == "stopped"
        proc = spawn_daemon(path)
        wait_for(lambda: heartbeat_state(cfg) == "running", what="second heartbeat")
        time.sleep(0.3)
        proc.kill()
        proc.wait(timeout=10)
        dead = iceburgd("status", "--json", config=path)
        assert dead.returncode == 1 and json.loads(dead.stdout)["state"] in ("dead", "stale")
    finally:
        proc.kill()
        proc.wait()


def test_second_daemon_and_ingest_refuse_while_one_runs(daemon_home, tmp_path):
    path, cfg, _ = daemon_home
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: heartbeat_state(cfg) == "running", what="heartbeat")
        second = iceburgd("run", "--once", config=path)
        assert second.returncode == 3
        assert f"another iceburgd (pid {proc.pid})" in second.stderr
        f = write_jsonl(tmp_path / "x.jsonl", chat_lines(2))
        ingest = iceburgd("ingest", str(f), config=path)
        assert ingest.returncode == 3
        status = iceburgd("status", config=path)  # reads work while the daemon writes
        assert status.returncode == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_drop_is_ingested_live_and_metrics_and_logs_show_it(daemon_home):
    path, cfg, port = daemon_home
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: heartbeat_state(cfg) == "running", what="heartbeat")
        secret_words = "zebra-quokka-unlogged-content"
        rec = chat_record(1)
        rec["messages"][2]["content"] += " " + secret_words
        write_jsonl(cfg.inbox_dir / "live.jsonl", [rec, *chat_lines(9, seed=5), "{broken"])
        wait_for(lambda: any(cfg.archive_dir.rglob("*live.jsonl")), what="archive")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'iceburg_records_ingested_total{kind="sft",role="dissident"} 3.0' in body
        assert 'iceburg_records_quarantined_total{reason="invalid_json"} 1.0' in body
        assert "iceburg_inbox_backlog_files 0.0" in body
        assert "iceburg_daemon_heartbeat_timestamp_seconds" in body
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    log_lines = (cfg.logs_dir / "iceburgd.log").read_text().splitlines()
    events = [json.loads(line) for line in log_lines]
    ingested = [e for e in events if e["event"] == "file_ingested"]
    assert ingested and ingested[0]["stored"] == 10 and ingested[0]["quarantined"] == 1
    assert {"daemon_started", "daemon_stopped", "shutdown_requested"} <= {e["event"] for e in events}
    assert secret_words not in "\n".join(log_lines)  # record contents are never logged


def test_sigterm_mid_file_checkpoints_and_the_next_start_finishes(tmp_path):
    # The filter is off: this is about the ingest checkpoint, and 60,000 verdicts would only add time.
    path = write_config(tmp_path / "home", "[inbox]\nsettle_seconds = 0.0\nbatch_size = 100\n"
                                           "[quality]\nmode = \"paused\"\n")
    cfg = load_config(path, env={})
    cfg.inbox_dir.mkdir(parents=True)
    write_jsonl(cfg.inbox_dir / "big.jsonl", chat_lines(60_000, answer_bytes=300))
    stop_once_ready(spawn_daemon(path), lambda: any(cfg.processing_dir.glob("*big.jsonl")), settle=0.5, within=5)
    store = Store.open_readonly(cfg.db_path)
    row = store.conn.execute("SELECT state, line_no FROM files").fetchone()
    store.close()
    assert row["state"] == "ingesting" and 0 < row["line_no"] < 60_000  # stopped at a batch boundary
    done = iceburgd("run", "--once", config=path)
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store.open_readonly(cfg.db_path)
    assert store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 60_000
    assert store.integrity_ok()
    store.close()


def test_daemon_process_never_imports_torch_or_chromadb(cfg_path, fixtures):
    """Not even with the semantic filter on: its vector index is faiss in the daemon, chromadb runs in a child."""
    cfg_path.write_text(cfg_path.read_text() + f'\n[[sources.chroma]]\nname = "p"\npath = "{fixtures}/data/chroma"\n'
                        '\n[embedding]\nprovider = "hash"\n')
    code = (
        "import sys\n"
        "from iceburg_daemon.cli import main\n"
        f"rc = main(['--config', {str(cfg_path)!r}, 'run', '--once'])\n"
        f"main(['--config', {str(cfg_path)!r}, 'status', '--json'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'chromadb') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'RC', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] RC 0" in out.stdout, out.stdout + out.stderr
    store = Store.open_readonly(load_config(cfg_path, env={}).db_path)
    assert store.source("chroma:p")["health"] == "healthy"  # the chromadb child did run
    store.close()


def test_cli_ingest_reports_counts_and_never_moves_files(cfg_path, tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [*chat_lines(8), "[]"])
    res = iceburgd("ingest", "--json", str(f), config=cfg_path)
    assert res.returncode == 0, res.stderr
    (report,) = json.loads(res.stdout)["files"]
    assert report["stored"] == {"dissident/sft": 2, "oracle/sft": 2, "surveyor/sft": 2, "synthesist/sft": 2}
    assert report["quarantined"] == {"not_an_object": 1} and report["outcome"] == "ingested"
    assert f.exists()
    text = iceburgd("ingest", str(f), config=cfg_path)
    assert "already_ingested" in text.stdout
    assert Path(load_config(cfg_path, env={}).quarantine_dir / "in.jsonl.rejects.jsonl").exists()
    os.chmod(f, 0o644)


def _daemon_with_slow_reader(path: Path) -> subprocess.Popen[str]:
    """A real daemon whose ChromaDB reader child hangs, to catch it in the middle of a sync."""
    code = (
        "import sys\n"
        "from iceburg_daemon.config import load_config\n"
        "from iceburg_daemon.daemon import Daemon\n"
        f"cfg = load_config({str(path)!r})\n"
        "slow = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "sys.exit(Daemon(cfg, source_command=slow).run())\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigterm_during_a_source_sync_kills_the_reader_and_exits_cleanly(tmp_path, fixtures):
    path = write_config(tmp_path / "home", f'[[sources.chroma]]\nname = "p"\npath = "{fixtures}/data/chroma"\n')
    cfg = load_config(path, env={})
    stop_once_ready(_daemon_with_slow_reader(path), lambda: (cfg.snapshots_dir / "p").is_dir(), settle=0.3, within=3)
    store = Store.open_readonly(cfg.db_path)
    assert store.source("chroma:p")["health"] == "unknown"  # a shutdown is not the store's fault
    assert store.heartbeat()["state"] == "stopped"
    store.close()


def test_a_second_signal_exits_at_once(cfg_path):
    code = (
        "import os, signal, sys, time\n"
        "from iceburg_daemon.config import load_config\n"
        "from iceburg_daemon.daemon import Daemon\n"
        f"d = Daemon(load_config({str(cfg_path)!r}))\n"
        "d._install_signals()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert d.stopping.is_set() and d.wake.is_set()\n"
        "print('first signal: stopping', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(10)\n"
        "sys.exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "first signal: stopping" in out.stdout
    assert out.returncode == 128 + signal.SIGINT
