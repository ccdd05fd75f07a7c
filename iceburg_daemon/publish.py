"""The champion -> Ollama: `iceburg-<role>:v<N>` created from the merged weights, smoke-tested, then the alias
(`publish_name`, default `iceburg-<role>:latest`) copied onto it. Reconciles the store's champion pointer with
the alias as last confirmed, so a promotion and a rollback take the same path, and a failure is retried with
back-off (`publish_pending`) until they agree again.

The HTTP work runs on one worker thread (ingest and filtering go on); the loop thread records the outcome.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from iceburg_daemon.chat_formats import architecture, chat_format
from iceburg_daemon.config import Config, publish_name
from iceburg_daemon.errors import PublishError
from iceburg_daemon.logs import get_logger
from iceburg_daemon.ollama import OllamaClient, file_digest, resolve_host
from iceburg_daemon.registry import system_prompt, version_dir
from iceburg_daemon.store import RunStatus, Store

log = get_logger("iceburgd.publish")
NOT_RETRIED = -1.0  # publish_next for an error a retry cannot fix (e.g. an architecture Ollama cannot import)
PUBLISHED_STATES = (RunStatus.PROMOTED.value, RunStatus.PUBLISH_PENDING.value, RunStatus.PUBLISHED.value)


@dataclass
class Job:
    role: str
    version: int
    run_id: str
    folder: Path
    tag: str  # iceburg-<role>:v<N>
    alias: str
    created: bool  # the tag was created before (a rollback target): only the smoke test and the alias move
    progress: list[str] = field(default_factory=list)
    prune: list[int] = field(default_factory=list)  # versions retention removed whose Ollama tags go too
    shown: str = ""  # the progress line last written to the store


def version_tag(role: str, version: int) -> str:
    return f"iceburg-{role}:v{version}"


def publish(cfg: Config, client: OllamaClient, job: Job) -> None:
    """Create the version's tag unless it exists, smoke-test it, move the alias. Raises PublishError."""
    merged = job.folder / "merged"
    if not (merged / "config.json").is_file():
        raise PublishError(f"{merged}: no merged model to publish", retry=False)
    architecture(merged)
    fmt = chat_format(merged)
    if not job.created or job.tag not in client.tags():
        files = {}
        for path in sorted(p for p in merged.iterdir() if p.is_file()):
            digest = file_digest(path)
            if not client.has_blob(digest):
                job.progress.append(f"uploading {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
                client.push_blob(path, digest)
            files[path.name] = digest
        body: dict[str, Any] = {"model": job.tag, "files": files, "template": fmt.template,
                                "parameters": {"stop": list(fmt.stop)}}
        if system_prompt(job.role):
            body["system"] = system_prompt(job.role)
        if cfg.publish.quantize:
            body["quantize"] = cfg.publish.quantize
        for line in client.create(body):
            job.progress.append(str(line.get("status", "")))
            log.info("ollama_create", tag=job.tag, status=line.get("status"))
    job.progress.append("smoke test")
    answer = client.chat(job.tag, [{"role": "user", "content": cfg.publish.smoke_prompt}],
                         {"temperature": 0, "num_predict": 32})
    if not answer.strip():
        raise PublishError(f"smoke test: {job.tag} answered nothing to {cfg.publish.smoke_prompt!r}", retry=True)
    client.copy(job.tag, job.alias)
    job.progress.append(f"{job.alias} -> {job.tag}")
    for version in job.prune:
        client.delete(version_tag(job.role, version))  # gone already is fine
        job.progress.append(f"deleted {version_tag(job.role, version)} (pruned)")


class PublishStage:
    """One publish at a time, off the loop thread; `step()` (loop thread) starts due jobs and records results."""

    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 client: OllamaClient | None = None, on_result: Callable[[str, bool], None] | None = None):
        self.cfg, self.store, self.clock = cfg, store, clock
        self.client = client or OllamaClient(resolve_host(cfg.publish.ollama_host), cfg.publish.timeout_seconds)
        self.on_result = on_result  # (role, ok): metrics
        # The job in flight, its worker thread, and where the worker leaves its outcome ([error or None])
        self.current: tuple[Job, threading.Thread, list[BaseException | None]] | None = None

    def due(self) -> list[Job]:
        """Champions whose alias does not point at them yet, and whose back-off has passed."""
        if not self.cfg.publish.enabled:
            return []
        now, jobs = self.clock(), []
        for champ in self.store.champions():
            if champ["alias_version"] == champ["version"]:
                continue
            wait = champ["publish_next"]
            if wait is not None and (wait == NOT_RETRIED or wait > now):
                continue
            role, version = champ["role"], champ["version"]
            v = self.store.version(role, version)
            pruned = [p["version"] for p in self.store.versions(role)
                      if p["pruned_at"] is not None and p["published_at"] is not None]
            jobs.append(Job(role, version, v["run_id"], version_dir(self.cfg, role, version),
                            version_tag(role, version), publish_name(self.cfg, role),
                            created=v["published_at"] is not None, prune=pruned))
        return jobs

    def step(self) -> None:
        if self.current is not None:
            job, worker, outcome = self.current
            if worker.is_alive():
                self._show(job)
                return
            self.current = None
            self.record(job, outcome[0] if outcome else RuntimeError("the publish worker ended without a result"))
        jobs = self.due()
        if jobs:
            self._started(jobs[0])
            outcome: list[BaseException | None] = []

            def work(job: Job = jobs[0]) -> None:
                try:
                    publish(self.cfg, self.client, job)
                    outcome.append(None)
                except BaseException as exc:  # noqa: BLE001 - handed to the loop thread, which records it
                    outcome.append(exc)

            # A daemon thread: a shutdown does not wait for an upload (its outcome is redone at the next start)
            worker = threading.Thread(target=work, name="publish", daemon=True)
            worker.start()
            self.current = (jobs[0], worker, outcome)

    def run_now(self, role: str | None = None, echo: Callable[[str], None] | None = None) -> list[tuple[str, bool]]:
        """In this thread (foreground `train`, `rollback`, `publish`): publish every due champion."""
        out = []
        for job in self.due():
            if role is not None and job.role != role:
                continue
            self._started(job)
            error: BaseException | None = None
            try:
                publish(self.cfg, self.client, job)
            except PublishError as exc:
                error = exc
            for line in job.progress if echo else []:
                echo(line)  # type: ignore[misc]
            out.append((job.role, self.record(job, error)))
        return out

    def close(self) -> None:
        """Shutdown: an upload in flight is abandoned (a daemon thread); the alias still lags the champion in
        the store, so the next start publishes again."""
        self.current = None

    def _started(self, job: Job) -> None:
        with self.store.transaction():
            self.store.add_event("publish_started", job.run_id, self.clock(), tag=job.tag, alias=job.alias)
        log.info("publish_started", role=job.role, tag=job.tag, alias=job.alias)

    def _show(self, job: Job) -> None:
        """The worker's latest step into the store for `status`: written when it changes, not every pass."""
        text = f"publishing: {job.progress[-1]}" if job.progress else "publishing"
        if text != job.shown:
            job.shown = text
            with self.store.transaction():
                self.store.update_champion(job.role, publish_error=text)

    def record(self, job: Job, error: BaseException | None) -> bool:
        now = self.clock()
        champ = self.store.champion(job.role)
        run = self.store.run(job.run_id)
        with self.store.transaction():
            if error is None:
                self.store.update_champion(job.role, alias_version=job.version, alias_at=now, publish_failures=0,
                                           publish_next=None, publish_error=None)
                self.store.update_version(job.role, job.version, published_at=now)
                for version in job.prune:
                    self.store.update_version(job.role, version, published_at=None)
                if run is not None and run["status"] in PUBLISHED_STATES:
                    self.store.update_run(job.run_id, status=RunStatus.PUBLISHED.value, reason=None)
                self.store.add_event("published", job.run_id, now, tag=job.tag, alias=job.alias)
            else:
                retry = not isinstance(error, PublishError) or error.retry  # an unexpected error: retried too
                failures = (champ["publish_failures"] if champ else 0) + 1
                delay = min(self.cfg.publish.retry_base_minutes * 2 ** (failures - 1),
                            self.cfg.publish.retry_max_minutes) * 60
                message = str(error) if isinstance(error, PublishError) else f"{type(error).__name__}: {error}"
                self.store.update_champion(job.role, publish_failures=failures, publish_error=message[:500],
                                           publish_next=now + delay if retry else NOT_RETRIED)
                status = RunStatus.PUBLISH_PENDING if retry else RunStatus.PUBLISH_FAILED
                if run is not None and run["status"] in (*PUBLISHED_STATES, RunStatus.PUBLISH_FAILED.value) \
                        and run["status"] != RunStatus.PUBLISHED.value:
                    self.store.update_run(job.run_id, status=status.value, reason=message[:300])
                self.store.add_event("publish_failed" if not retry else "publish_pending", job.run_id, now,
                                     error=message[:300], retry_in_s=delay if retry else None)
        (log.info if error is None else log.warning)("published" if error is None else "publish_failed",
                                                     role=job.role, tag=job.tag, error=str(error) if error else None)
        if self.on_result:
            self.on_result(job.role, error is None)
        return error is None
