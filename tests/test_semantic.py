"""Filter 8: semantic duplicates through the daemon's own vector index, with the hash, Ollama and onnx embedders."""

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.daemon import Daemon
from iceburg_daemon.quality.embed import HashEmbedder
from iceburg_daemon.store import Store
from iceburg_daemon.vector_index import VectorIndex
from iceburg_daemon.testing import chat_record, iceburgd, write_config, write_jsonl


def _paraphrase(record, seed):
    """Every tenth word swapped for a filler: most 5-gram shingles break, the bag of words barely moves
    (measured on chat_record answers: 5-gram Jaccard ~0.34, hash-embedding cosine ~0.9)."""
    rng = random.Random(seed)
    words = record["messages"][2]["content"].split()
    for i in range(0, len(words), 10):
        words[i] = rng.choice(["indeed", "notably", "clearly"])
    out = json.loads(json.dumps(record))
    out["messages"][1]["content"] += " Please rephrase."
    out["messages"][2]["content"] = " ".join(words)
    return out


def _verdicts(cfg):
    store = Store.open_readonly(cfg.db_path)
    rows = {(r["source_ref"].split("_", 1)[-1].rsplit(":", 1)[0], int(r["source_ref"].rsplit(":", 1)[1])): dict(r)
            for r in store.conn.execute(
        "SELECT r.source_ref, v.reason, v.duplicate_of, v.record_id, v.scores FROM records r JOIN verdicts v"
        " ON v.record_id = r.id AND v.current = 1")}
    store.close()
    return [rows[k] for k in sorted(rows)]  # by file name, then line


def _drop_and_run(cfg, name, records):
    """Drop records into the inbox and let the daemon work until idle."""
    cfg.inbox_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(cfg.inbox_dir / name, records)
    Daemon(cfg).run(once=True)


def _home(tmp_path, provider="hash", extra=""):
    # Templates off: a light paraphrase also shares its skeleton, and this file is about filter 8 alone.
    path = write_config(tmp_path / "home", f"[embedding]\nprovider = '{provider}'\n"
                                           f"[quality]\nsemantic_threshold = 0.8\ntemplate = false\n{extra}")
    return path, load_config(path, env={})


def test_paraphrases_are_semantic_duplicates_within_and_across_batches(tmp_path):
    path, cfg = _home(tmp_path)
    originals = [chat_record(i, seed=3) for i in range(4)]
    _drop_and_run(cfg, "a.jsonl", originals + [_paraphrase(originals[0], 1)])
    first = _verdicts(cfg)
    assert [v["reason"] for v in first] == [None, None, None, None, "semantic_duplicate"]
    assert first[4]["duplicate_of"] == first[0]["record_id"]  # caught inside one batch
    _drop_and_run(cfg, "b.jsonl", [_paraphrase(originals[1], 2)])
    later = _verdicts(cfg)[-1]
    assert later["reason"] == "semantic_duplicate" and later["duplicate_of"] == first[1]["record_id"]
    assert json.loads(later["scores"])["near_similarity"] < 0.8  # the near-duplicate filter alone missed it


def test_a_corrupted_index_is_rebuilt_from_the_store(tmp_path):
    path, cfg = _home(tmp_path)
    originals = [chat_record(i, seed=4) for i in range(6)]
    _drop_and_run(cfg, "a.jsonl", originals)
    for f in cfg.index_dir.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage" * 10)
    _drop_and_run(cfg, "b.jsonl", [_paraphrase(originals[5], 3)])
    verdicts = _verdicts(cfg)
    assert [v["reason"] for v in verdicts[:6]] == [None] * 6  # no verdict was lost or changed
    assert verdicts[6]["reason"] == "semantic_duplicate"
    res = iceburgd("index", "rebuild", "--json", config=path)
    assert res.returncode == 0 and json.loads(res.stdout) == {"indexed": 6}


def test_each_model_and_dimension_has_its_own_folder(tmp_path):
    index = VectorIndex(tmp_path / "idx", "nomic-embed-text:latest", 768)
    assert index.folder == tmp_path / "idx" / "nomic-embed-text-latest-768"
    vectors = HashEmbedder(384).embed(["one answer", "another answer"])
    assert vectors.shape == (2, 384)
    assert VectorIndex(tmp_path / "idx", "hash-384", 384).folder != index.folder


class _FakeOllama(BaseHTTPRequestHandler):
    """/api/embed as Ollama answers it: {"model", "embeddings": [[...], ...]}."""

    calls = 0

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/api/embed" or body.get("model") != "nomic-embed-text":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(json.dumps({"error": "model not found"}).encode())
            return
        type(self).calls += 1
        vectors = HashEmbedder(768).embed(body["input"]).tolist()
        data = json.dumps({"model": body["model"], "embeddings": vectors}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.fixture
def ollama():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_ollama_embeddings_over_http(tmp_path, ollama):
    path, _ = _home(tmp_path, "ollama")
    cfg = load_config(path, env={"ICEBURGD_EMBEDDING_URL": json.dumps(ollama)})
    originals = [chat_record(i, seed=5) for i in range(3)]
    _drop_and_run(cfg, "a.jsonl", originals + [_paraphrase(originals[2], 1)])
    assert [v["reason"] for v in _verdicts(cfg)] == [None, None, None, "semantic_duplicate"]
    assert _FakeOllama.calls >= 1
    assert (cfg.index_dir / "nomic-embed-text-768" / "manifest.json").is_file()


def test_ollama_down_does_not_stall_the_filter(tmp_path):
    path, cfg = _home(tmp_path, "ollama")
    cfg = load_config(path, env={"ICEBURGD_EMBEDDING_URL": '"http://127.0.0.1:9"'})  # nothing listens there
    started = time.monotonic()
    _drop_and_run(cfg, "a.jsonl", [chat_record(i, seed=6) for i in range(3)])
    verdicts = _verdicts(cfg)
    assert [v["reason"] for v in verdicts] == [None] * 3
    assert all(json.loads(v["scores"])["semantic"] == "unavailable" for v in verdicts)
    assert time.monotonic() - started < 30


def test_refilter_starts_the_vector_index_afresh(tmp_path):
    path, cfg = _home(tmp_path)
    originals = [chat_record(i, seed=8) for i in range(3)]
    _drop_and_run(cfg, "a.jsonl", originals + [_paraphrase(originals[1], 4)])
    res = iceburgd("data", "refilter", "--json", config=path)
    assert res.returncode == 0 and json.loads(res.stdout)["accepted"] == 3
    # The old vectors went with the old generation and the accepted answers were indexed again.
    assert [v["reason"] for v in _verdicts(cfg)] == [None, None, None, "semantic_duplicate"]
    index = VectorIndex(cfg.index_dir, "hash-384", 384)
    index.load()
    assert sum(index.count(role) for role in ("surveyor", "dissident", "synthesist", "oracle")) == 3


def test_onnx_minilm_embeds_offline_and_catches_a_real_paraphrase(tmp_path):
    from iceburg_daemon.quality.embed import OnnxEmbedder

    vectors = OnnxEmbedder().embed(["The cat sat on the mat.", "A cat was sitting on the mat.",
                                    "Quarterly revenue fell by ten percent."])
    sims = vectors @ vectors.T
    assert vectors.shape == (3, 384) and sims[0, 1] > 0.85 and abs(sims[0, 2]) < 0.3
    path, cfg = _home(tmp_path, "onnx")
    a = {"messages": [{"role": "user", "content": "Why do leaves change colour in autumn?"}, {"role": "assistant",
         "content": "As days shorten, trees stop producing chlorophyll, so the green fades and the yellow and "
                    "orange carotenoids that were there all along become visible; some species also make red "
                    "anthocyanins from sugars trapped in the leaf."}], "metadata": {"agent_type": "surveyor"}}
    b = {"messages": [{"role": "user", "content": "What makes autumn foliage turn colours?"}, {"role": "assistant",
         "content": "Shorter days make trees halt chlorophyll production. Once the green pigment breaks down, "
                    "carotenoids (yellows and oranges) that were always present show through, and certain trees "
                    "produce red anthocyanins from sugar caught in their leaves."}], "metadata": {"agent_type":
                                                                                                  "surveyor"}}
    _drop_and_run(cfg, "a.jsonl", [a, b])
    verdicts = _verdicts(cfg)
    assert [v["reason"] for v in verdicts] == [None, "semantic_duplicate"]
    assert json.loads(verdicts[1]["scores"])["near_similarity"] < 0.2  # different words, same meaning
