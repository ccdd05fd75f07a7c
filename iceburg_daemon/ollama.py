"""The only module that talks to Ollama: its HTTP API (blobs, create, copy, tags, show, delete, chat, embed)
over the standard library. Every failure is a PublishError saying whether a later retry may help."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from iceburg_daemon.errors import PublishError

DEFAULT_HOST = "http://127.0.0.1:11434"


def resolve_host(configured: str, env: Mapping[str, str] | None = None) -> str:
    """[publish] ollama_host, else $OLLAMA_HOST (which Ollama itself accepts without a scheme), else the default."""
    env = os.environ if env is None else env
    host = configured or env.get("OLLAMA_HOST", "") or DEFAULT_HOST
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    return host.rstrip("/")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class OllamaClient:
    def __init__(self, host: str, timeout: float = 600.0):
        self.host, self.timeout = host.rstrip("/"), timeout

    # ---- blobs --------------------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        try:
            with self._open("HEAD", f"/api/blobs/{digest}"):
                return True
        except PublishError as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise

    def push_blob(self, path: Path, digest: str) -> None:
        with open(path, "rb") as f:
            with self._open("POST", f"/api/blobs/{digest}", data=f, length=path.stat().st_size,
                            content_type="application/octet-stream"):
                pass

    # ---- models -------------------------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /api/create, streamed: yields each status line; an `error` line raises (the stream had started)."""
        with self._open("POST", "/api/create", body={**body, "stream": True}) as response:
            for raw in _lines(response, "create"):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError as exc:
                    raise PublishError(f"ollama create: unreadable status line {raw[:200]!r}", retry=True) from exc
                if not isinstance(line, dict):
                    raise PublishError(f"ollama create: unreadable status line {raw[:200]!r}", retry=True)
                if "error" in line:
                    raise PublishError(f"ollama create {body.get('model')}: {line['error']}", retry=True)
                yield line

    def copy(self, source: str, destination: str) -> None:
        with self._open("POST", "/api/copy", body={"source": source, "destination": destination}):
            pass

    def delete(self, model: str) -> bool:
        """True when deleted, False when it was not there."""
        try:
            with self._open("DELETE", "/api/delete", body={"model": model}):
                return True
        except PublishError as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise

    def tags(self) -> list[str]:
        with self._open("GET", "/api/tags") as response:
            models = _object(response, "tags").get("models") or []
        if not isinstance(models, list):
            raise PublishError("ollama tags: `models` is not a list", retry=True)
        return [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    def show(self, model: str) -> dict[str, Any]:
        with self._open("POST", "/api/show", body={"model": model}) as response:
            return _object(response, "show")

    def chat(self, model: str, messages: list[dict[str, str]], options: dict[str, Any] | None = None) -> str:
        body = {"model": model, "messages": messages, "stream": False, "options": options or {}}
        with self._open("POST", "/api/chat", body=body) as response:
            message = _object(response, "chat").get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
            raise PublishError("ollama chat: the answer has no message content", retry=True)
        return str(message.get("content", ""))

    def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        with self._open("POST", "/api/embed", body={"model": model, "input": texts}) as response:
            embeddings = _object(response, "embed").get("embeddings") or []
        if not isinstance(embeddings, list):
            raise PublishError("ollama embed: `embeddings` is not a list", retry=True)
        return embeddings

    # ---- transport ----------------------------------------------------------------------------------------------
    def _open(self, method: str, path: str, *, body: dict[str, Any] | None = None, data: Any = None,
              length: int | None = None, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type}
        if body is not None:
            data = json.dumps(body).encode()
        if length is not None:
            headers["Content-Length"] = str(length)
        request = urllib.request.Request(self.host + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            err = PublishError(f"ollama {method} {path}: HTTP {exc.code}: {detail}", retry=exc.code >= 500)
            err.status = exc.code  # type: ignore[attr-defined]
            raise err from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PublishError(f"ollama at {self.host} unreachable ({method} {path}): {reason}", retry=True) from None


def _object(response: Any, what: str) -> dict[str, Any]:
    """The answer's JSON object; a body cut short, a timeout while reading it, or anything that is not a JSON
    object (a proxy's HTML page, say) is a retryable PublishError, never another exception."""
    try:
        value = json.load(response)
    except (ValueError, OSError, http.client.HTTPException) as exc:
        raise PublishError(f"ollama {what}: unreadable answer ({type(exc).__name__}: {str(exc)[:100]})",
                           retry=True) from None
    if not isinstance(value, dict):
        raise PublishError(f"ollama {what}: expected a JSON object, got {type(value).__name__}", retry=True)
    return value


def _lines(response: Any, what: str) -> Iterator[bytes]:
    """A streamed answer's lines; a timeout or a dropped connection mid-stream is a retryable PublishError."""
    try:
        yield from response
    except (OSError, http.client.HTTPException) as exc:
        raise PublishError(f"ollama {what}: the stream broke ({type(exc).__name__}: {str(exc)[:100]})",
                           retry=True) from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        return str(json.loads(text).get("error", text))[:500]
    except ValueError:
        return text[:500]
