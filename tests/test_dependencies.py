"""Issue 14: dependencies down, slow, or answering garbage. Ollama (publishing and embeddings) served by a
misbehaving HTTP server: every failure is a retryable PublishError / EmbeddingError, never another exception;
the filter judges on without the semantic filter and backs off instead of waiting on every batch. ChromaDB that
cannot be opened, is corrupted, crashes or hangs its reader is covered in tests/test_chroma_source.py."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.errors import PublishError
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.ollama import OllamaClient
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.store import Store
from iceburg_daemon.testing import FACTS, fact_record, write_config, write_jsonl

ANSWERS = {  # mode -> (status, body)
    "html": (200, b"<html><body>502 Bad Gateway (proxy)</body></html>"),
    "list": (200, b"[1, 2, 3]"),
    "wrong_types": (200, b'{"models": "none", "message": 7, "embeddings": {"a": 1}, "status": 5}'),
    "truncated": (200, b'{"models": [{"name": "x"'),
    "error_500": (500, b'{"error": "out of memory"}'),
    "empty": (200, b""),
}


class _Misbehaving(BaseHTTPRequestHandler):
    mode = "html"
    calls = 0

    def _answer(self) -> None:
        type(self).calls += 1
        if self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "slow":
            time.sleep(3)
            status, body = 200, b"{}"
        elif self.mode == "slow_body":  # headers at once, then a body that never comes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"mod')
            self.wfile.flush()
            time.sleep(3)
            return
        else:
            status, body = ANSWERS[self.mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *_):
        pass


@pytest.fixture
def bad_ollama():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


CALLS = {
    "tags": lambda c: c.tags(),
    "show": lambda c: c.show("m"),
    "chat": lambda c: c.chat("m", [{"role": "user", "content": "hi"}]),
    "embed": lambda c: c.embed("m", ["hi"]),
    "create": lambda c: list(c.create({"model": "m", "files": {}})),
    "copy": lambda c: c.copy("a", "b"),
    "has_blob": lambda c: c.has_blob("sha256:00"),
}


@pytest.mark.parametrize("mode", [*ANSWERS, "slow", "slow_body"])
def test_every_ollama_call_fails_only_with_a_retryable_publish_error(bad_ollama, mode):
    _Misbehaving.mode = mode
    client = OllamaClient(bad_ollama, timeout=0.5)
    outcomes = {}
    for name, call in CALLS.items():
        started = time.monotonic()
        try:
            outcomes[name] = ("ok", call(client))
        except PublishError as exc:
            outcomes[name] = ("PublishError", exc.retry)
        assert time.monotonic() - started < 5, f"{name} waited past its timeout"
    # a 200 with nothing usable may look like success only where the call returns nothing (copy) or only asks
    # whether something exists (has_blob), or hands the object on as sent (show); everything else fails as a
    # retryable PublishError
    for name, (outcome, value) in outcomes.items():
        if outcome == "ok":
            assert name in ("copy", "has_blob", "create", "show") or value in ([], {}), (name, value)
        else:
            assert value is True, (name, mode)


@pytest.mark.parametrize("mode", ["html", "wrong_types", "truncated", "error_500", "slow"])
def test_a_broken_embedder_leaves_the_filter_judging_and_backing_off(tmp_path, bad_ollama, mode):
    _Misbehaving.mode, _Misbehaving.calls = mode, 0
    cfg = load_config(write_config(tmp_path / "home", f"[embedding]\nprovider = 'ollama'\nurl = '{bad_ollama}'\n"
                                                      "timeout_seconds = 0.5\n[quality]\nbatch_size = 2\n"), env={})
    store = Store.open(cfg.db_path)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / "r.jsonl", [fact_record(p, c) for p, c in FACTS[:10]])])
    started = time.monotonic()
    FilterChain(cfg, store, clock=time.time).run()
    took = time.monotonic() - started
    rows = store.conn.execute("SELECT verdict, scores FROM verdicts WHERE current = 1").fetchall()
    store.close()
    assert len(rows) == 10 and all(r["verdict"] == "accept" and '"semantic": "unavailable"' in r["scores"]
                                   for r in rows)
    assert _Misbehaving.calls == 1  # 5 batches, one call: the others waited out the back-off
    assert took < 10
