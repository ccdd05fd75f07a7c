"""The Ollama client (iceburg_daemon/ollama.py) over real HTTP against tests/fake_ollama.py: blobs with digest
checks, create streamed as NDJSON with errors before and after streaming, copy/tags/show/delete, chat that loads
the uploaded safetensors, a server that is down; and the host resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_ollama import FakeOllama

from iceburg_daemon.chat_formats import CHATML, architecture, chat_format
from iceburg_daemon.errors import PublishError
from iceburg_daemon.ollama import DEFAULT_HOST, OllamaClient, file_digest, resolve_host


@pytest.fixture
def fake():
    server = FakeOllama()
    yield server
    server.close()


def _upload(client: OllamaClient, folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest = file_digest(path)
        assert not client.has_blob(digest)
        client.push_blob(path, digest)
        assert client.has_blob(digest)
        files[path.name] = digest
    return files


def test_blobs_create_copy_show_delete_and_chat(fake, tiny_base):
    client = OllamaClient(fake.url, timeout=30)
    files = _upload(client, tiny_base)
    with pytest.raises(PublishError, match="HTTP 400: digest mismatch") as err:
        client.push_blob(tiny_base / "config.json", "sha256:" + "0" * 64)
    assert err.value.retry is False
    lines = list(client.create({"model": "iceburg-oracle:v1", "files": files, "template": CHATML.template,
                                "parameters": {"stop": list(CHATML.stop)}}))
    assert [line["status"] for line in lines] == ["converting model", "using provided template", "writing manifest",
                                                  "success"]
    client.copy("iceburg-oracle:v1", "iceburg-oracle:latest")
    assert client.tags() == ["iceburg-oracle:latest", "iceburg-oracle:v1"]
    assert client.show("iceburg-oracle:latest")["parameters"] == {"stop": ["<|im_start|>", "<|im_end|>"]}
    answer = client.chat("iceburg-oracle:latest", [{"role": "user", "content": "Which colour marks the reef archive?"}],
                         {"num_predict": 8})
    assert answer.strip()  # the uploaded safetensors really answered
    assert client.delete("iceburg-oracle:v1") is True and client.delete("iceburg-oracle:v1") is False
    with pytest.raises(PublishError, match="HTTP 404") as err:
        client.copy("iceburg-oracle:v9", "iceburg-oracle:latest")
    assert err.value.retry is False


def test_errors_before_and_after_streaming_and_a_server_that_is_down(fake, tiny_base):
    client = OllamaClient(fake.url, timeout=30)
    files = _upload(client, tiny_base)
    with pytest.raises(PublishError, match="HTTP 400: missing blob"):
        list(client.create({"model": "m:v1", "files": {**files, "extra.bin": "sha256:" + "1" * 64}}))
    fake.faults["create"] = "before"
    with pytest.raises(PublishError, match="HTTP 500") as err:
        list(client.create({"model": "m:v1", "files": files}))
    assert err.value.retry is True
    fake.faults["create"] = "midstream"
    seen = []
    with pytest.raises(PublishError, match="no space left on device") as err:
        for line in client.create({"model": "m:v1", "files": files}):
            seen.append(line["status"])
    assert seen == ["converting model"] and err.value.retry is True  # the stream had started
    assert "m:v1" not in fake.models
    fake.stop()
    with pytest.raises(PublishError, match="unreachable") as err:
        client.tags()
    assert err.value.retry is True


def test_host_resolution_and_chat_formats(tiny_base, tmp_path):
    assert resolve_host("", env={}) == DEFAULT_HOST
    assert resolve_host("", env={"OLLAMA_HOST": "10.0.0.5:11434"}) == "http://10.0.0.5:11434"
    assert resolve_host("https://ollama.lan/", env={"OLLAMA_HOST": "x"}) == "https://ollama.lan"
    assert chat_format(tiny_base) is CHATML and architecture(tiny_base) == "LlamaForCausalLM"
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}')
    with pytest.raises(PublishError, match="cannot import architecture Qwen3ForCausalLM") as err:
        architecture(tmp_path)
    assert err.value.retry is False
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ bos_token }}[INST] x [/INST]"}')
    with pytest.raises(PublishError, match="unknown chat template family"):
        chat_format(tmp_path)
