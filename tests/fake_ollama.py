"""An Ollama server for the tests, on loopback, implementing the endpoints the daemon uses as Ollama v0.33 does
(../shared/docs/ollama.md): blobs with digest checks, create streamed as NDJSON, errors before streaming (HTTP
4xx/5xx with {"error"}) and after it ({"error"} line), copy/tags/show/delete, and chat that really loads the
uploaded safetensors and tokenizer with transformers and answers greedily. Faults are injected per test."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM",
                 "Gemma3ForCausalLM", "Phi3ForCausalLM"}
QUANTIZE = {"q8_0", "q4_K_S", "q4_K_M"}


def _name(model: str) -> str:
    return model if ":" in model else model + ":latest"


class FakeOllama:
    def __init__(self, port: int = 0):
        self.blobs_dir = Path(tempfile.mkdtemp(prefix="fake-ollama-"))
        self.blobs: dict[str, Path] = {}
        self.models: dict[str, dict[str, Any]] = {}  # name -> {files, template, system, parameters, digest}
        self.requests: list[tuple[str, str]] = []  # (method, path) in order
        self.bodies: list[bytes] = []  # request bodies in order
        # one-shot faults: {"create": "before"} (HTTP 500) | {"create": "midstream"} (an error line after streaming
        # began) | {"chat": "empty"} (an answer with no text); lasting: {"create_delay": "3"} (seconds per create)
        self.faults: dict[str, str] = {}
        self.scripted: dict[str, str] = {}  # model name -> the fixed chat answer of a model nobody uploaded
        self.lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port after stop(): Ollama coming back)."""
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Ollama down: connections are refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.blobs_dir, ignore_errors=True)

    def target(self, name: str) -> str | None:
        """The digest a model name points at (an alias made by copy shares it)."""
        m = self.models.get(_name(name))
        return m["digest"] if m else None

    # ---- endpoint logic (called with the lock held) ---------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(float(self.faults.get("create_delay", 0)))  # a big model converting: the client waits
        model = body.get("model")
        if not model:
            return 400, {"error": "model is required"}
        if body.get("quantize") and body["quantize"] not in QUANTIZE:
            return 400, {"error": f"unsupported quantization type {body['quantize']}"}
        files = body.get("files") or {}
        missing = [f for f, d in files.items() if d not in self.blobs]
        if not files or missing:
            return 400, {"error": f"missing blob for {missing or 'files'}"}
        fault = self.faults.pop("create", None)
        if fault == "before":
            return 500, {"error": "injected failure before streaming"}
        lines = [{"status": "converting model"}]
        config = json.loads(self.blobs[files["config.json"]].read_text()) if "config.json" in files else {}
        arch = (config.get("architectures") or ["?"])[0]
        if arch not in ARCHITECTURES:
            return 200, lines + [{"error": f"unsupported architecture {arch!r}"}]
        if fault == "midstream":
            return 200, lines + [{"error": "injected failure mid-stream: no space left on device"}]
        lines.append({"status": "using provided template" if body.get("template") else "using autodetected template"})
        if body.get("quantize"):
            lines.append({"status": f"quantizing F16 model to {body['quantize'].upper()}", "total": 2, "completed": 2})
        digest = "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        self.models[_name(model)] = {"files": files, "template": body.get("template", ""),
                                     "system": body.get("system", ""), "parameters": body.get("parameters", {}),
                                     "digest": digest}
        return 200, lines + [{"status": "writing manifest"}, {"status": "success"}]

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        if _name(body.get("model", "")) in self.scripted:  # e.g. a judge that always answers "A"
            text = self.scripted[_name(body["model"])]
            return 200, {"model": body["model"], "message": {"role": "assistant", "content": text}, "done": True}
        model = self.models.get(_name(body.get("model", "")))
        if model is None:
            return 404, {"error": f"model '{body.get('model')}' not found"}
        if self.faults.pop("chat", None) == "empty":
            text = ""
        else:
            text = self._generate(model, body.get("messages", []), int(body.get("options", {}).get("num_predict", 16)))
        return 200, {"model": body["model"], "message": {"role": "assistant", "content": text}, "done": True}

    def _generate(self, model: dict[str, Any], messages: list[dict[str, str]], max_new: int) -> str:
        """Load the uploaded files as a model folder and answer greedily (what Ollama's runner would serve)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model["digest"] not in self._loaded:
            folder = self.blobs_dir / model["digest"].replace(":", "-")
            folder.mkdir(exist_ok=True)
            for name, digest in model["files"].items():
                shutil.copyfile(self.blobs[digest], folder / name)
            self._loaded[model["digest"]] = (AutoModelForCausalLM.from_pretrained(folder),
                                             AutoTokenizer.from_pretrained(folder))
        net, tok = self._loaded[model["digest"]]
        if model["system"]:
            messages = [{"role": "system", "content": model["system"]}, *messages]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = net.generate(**ids, max_new_tokens=max(1, min(max_new, 32)), do_sample=False,
                           pad_token_id=tok.pad_token_id)
        return str(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)) or "(no text)"


def _handler(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> bytes:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake.lock:
                fake.bodies.append(data)  # every byte a client sent, for the canary test
            return data

        def _json(self) -> dict[str, Any]:
            try:
                return dict(json.loads(self._body() or b"{}"))
            except ValueError:
                return {}

        def do_HEAD(self) -> None:
            fake.requests.append(("HEAD", self.path))
            digest = self.path.removeprefix("/api/blobs/")
            self._send(200 if self.path.startswith("/api/blobs/") and digest in fake.blobs else 404)

        def do_GET(self) -> None:
            fake.requests.append(("GET", self.path))
            if self.path != "/api/tags":
                return self._send(404, {"error": "not found"})
            with fake.lock:
                self._send(200, {"models": [{"name": n, "model": n, "digest": m["digest"], "size": 1}
                                            for n, m in sorted(fake.models.items())]})

        def do_DELETE(self) -> None:
            fake.requests.append(("DELETE", self.path))
            name = _name(self._json().get("model", ""))
            with fake.lock:
                if fake.models.pop(name, None) is None:
                    return self._send(404, {"error": f"model '{name}' not found"})
            self._send(200)

        def do_POST(self) -> None:
            fake.requests.append(("POST", self.path))
            if self.path.startswith("/api/blobs/"):
                data, digest = self._body(), self.path.removeprefix("/api/blobs/")
                if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                    return self._send(400, {"error": "digest mismatch"})
                path = fake.blobs_dir / digest.replace(":", "-")
                path.write_bytes(data)
                with fake.lock:
                    fake.blobs[digest] = path
                return self._send(201)
            body = self._json()
            with fake.lock:
                if self.path == "/api/create":
                    code, reply = fake.create(body)
                    if code != 200:
                        return self._send(code, reply)
                    return self._stream(reply)
                if self.path == "/api/copy":
                    source = fake.models.get(_name(body.get("source", "")))
                    if source is None:
                        return self._send(404, {"error": f"model '{body.get('source')}' not found"})
                    fake.models[_name(body["destination"])] = dict(source)
                    return self._send(200)
                if self.path == "/api/show":
                    m = fake.models.get(_name(body.get("model", "")))
                    if m is None:
                        return self._send(404, {"error": f"model '{body.get('model')}' not found"})
                    return self._send(200, {"template": m["template"], "system": m["system"],
                                            "parameters": m["parameters"], "details": {"format": "safetensors"}})
                if self.path == "/api/chat":
                    return self._send(*fake.chat(body))
            self._send(404, {"error": "not found"})

        def _stream(self, lines: list[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                data = (json.dumps(line) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    return Handler
