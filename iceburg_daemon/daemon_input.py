"""The daemon's input stages: inbox files and ICEBURG's ChromaDB stores into the store, then the truth filter.
A mixin of Daemon (which owns the store, metrics, clock and keep_alive); tick() calls them in data-flow order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iceburg_daemon.chroma_source import SourceInterrupted, sync_store
from iceburg_daemon.errors import SourceError
from iceburg_daemon.follow import source_ref
from iceburg_daemon.inbox import claim, ingest_late_appends, pending, process_claimed, scan
from iceburg_daemon.logs import get_logger, stage_failed

if TYPE_CHECKING:
    from iceburg_daemon.daemon import Daemon

log = get_logger("iceburgd.daemon")
FILTER_BATCHES_PER_TICK = 4  # a long backlog is judged over several passes, so the heartbeat stays fresh


class InputStages:
    def ingest_inbox(self: Daemon) -> None:
        assert self.store is not None
        found = scan(self.cfg.inbox_dir, now=self.clock(), settle_seconds=self.cfg.inbox.settle_seconds,
                     open_settle_seconds=self.cfg.inbox.open_settle_seconds)
        self._settles_in = found.settles_in
        for path, reason in found.skipped:
            if (str(path), reason) not in self._skipped_reported:  # report once, not on every rescan
                self._skipped_reported.add((str(path), reason))
                log.warning("inbox_entry_skipped", path=path.name, reason=reason)
                with self.store.transaction():
                    self.store.add_event("inbox_entry_skipped", path.name, self.clock(), reason=reason)
        for path in found.ready:
            if self.stopping.is_set():
                break
            claim(path, self.cfg.processing_dir, self.clock())
        claimed = pending(self.cfg.processing_dir)
        self.metrics.inbox_backlog.set(len(claimed) + found.waiting)
        for path in claimed:
            if self.stopping.is_set():
                break
            try:
                self._ingest_one(path)
            except Exception as exc:  # noqa: BLE001 - a bug on one file must not stop the loop; it is retried next pass
                stage_failed(exc, stage="ingest", file=path.name)
        for late in ingest_late_appends(self.cfg, self.store, clock=self.clock, should_stop=self.keep_alive):
            self.metrics.count(late.counts, "inbox")
            log.warning("late_append", file=late.name, stored=late.counts.total_stored,
                        duplicates=late.counts.duplicates, quarantined=sum(late.counts.quarantined.values()))
        self.metrics.inbox_backlog.set(len(pending(self.cfg.processing_dir)) + found.waiting)

    def _ingest_one(self: Daemon, path: Path) -> None:
        assert self.store is not None
        result = process_claimed(self.cfg, self.store, path, clock=self.clock, should_stop=self.keep_alive)
        if result is None:
            return
        self.metrics.count(result.counts, "inbox")
        summary: dict[str, Any] = {"file": result.name, "stored": result.counts.total_stored,
                                   "duplicates": result.counts.duplicates,
                                   "quarantined": sum(result.counts.quarantined.values())}
        if result.failure is not None:
            self.metrics.files.labels(outcome="quarantined").inc()
            log.warning("file_quarantined", reason=result.failure.reason, detail=result.failure.detail, **summary)
        elif result.complete:
            self.metrics.files.labels(outcome="ingested").inc()
            log.info("file_ingested", **summary)
        elif result.held_open:
            if result.counts.total_stored or result.counts.duplicates or result.counts.quarantined:
                log.info("file_followed", **summary)  # its writer holds it open: read on each pass until closed
        else:
            log.info("file_checkpointed", **summary)  # stopped mid-file; the next start resumes it

    def follow_logs(self: Daemon) -> None:
        assert self.follower is not None and self.store is not None
        for done in self.follower.pass_(should_stop=self.keep_alive):
            self.metrics.count(done.counts, source_ref(done.source))
            summary = {"source": done.source, "file": done.name, "stored": done.counts.total_stored,
                       "duplicates": done.counts.duplicates, "quarantined": sum(done.counts.quarantined.values())}
            if done.ended is not None:
                self.metrics.followed_ended.labels(source=done.source, outcome=done.ended).inc()
            if done.ended == "lost":
                log.error("followed_file_lost", unread_bytes=done.unread_bytes, **summary)
            elif done.ended is not None:
                log.info("followed_file_ended", how=done.ended, **summary)
            else:
                log.info("followed_file_read", **summary)
        for source in self.cfg.sources.logs:
            row = self.store.source(source_ref(source.name))
            if source.enabled and row is not None:
                self.metrics.followed_files.labels(source=source.name).set(row["items"])
                self.metrics.source_healthy.labels(source=source.name).set(int(row["health"] == "healthy"))
                if row["last_sync"] is not None:
                    self.metrics.source_last_sync.labels(source=source.name).set(row["last_sync"])

    def sync_sources(self: Daemon) -> None:
        assert self.store is not None
        for source in self.cfg.sources.chroma:
            if not source.enabled or self.stopping.is_set():
                continue
            name = f"chroma:{source.name}"
            row = self.store.source(name)
            now = self.clock()
            if row is not None and row["next_attempt"] is not None and now < row["next_attempt"]:
                continue
            try:
                outcome = sync_store(self.cfg, self.store, source, now=now, command=self.source_command,
                                     should_stop=self.keep_alive)
            except Exception as exc:  # noqa: BLE001 - one store's bug must not stop the loop
                stage_failed(exc, stage="sources", source=source.name)
                continue
            if isinstance(outcome, SourceInterrupted):
                log.info("source_sync_interrupted", source=source.name)
            elif isinstance(outcome, SourceError):
                self.metrics.source_healthy.labels(source=source.name).set(0)
                log.warning("source_unhealthy", source=source.name, reason=str(outcome))
            else:
                self.metrics.count(outcome, name)
                self.metrics.source_healthy.labels(source=source.name).set(1)
                self.metrics.source_last_sync.labels(source=source.name).set(now)
                log.info("source_synced", source=source.name, new_records=outcome.total_stored,
                         duplicates=outcome.duplicates)

    def filter_records(self: Daemon) -> None:
        assert self.chain is not None
        limit = self.cfg.quality.batch_size * FILTER_BATCHES_PER_TICK
        started = time.perf_counter()
        try:
            judged = self.chain.run(should_stop=self.keep_alive, limit=limit)
        except Exception as exc:  # noqa: BLE001 - a filter bug must not stop the loop; pending records wait for a fix
            stage_failed(exc, stage="filter")
            return
        self.metrics.count_verdicts(judged)
        if judged:  # an idle pass is not a filter pass
            self.metrics.filter_seconds.observe(time.perf_counter() - started)
        self._filter_backlog = sum(judged.values()) >= limit
        if self._filter_backlog:
            self.wake.set()  # more is waiting: beat the heartbeat, then go straight on
        if judged:
            accepted = sum(n for (_, verdict, _), n in judged.items() if verdict == "accept")
            log.info("records_filtered", accepted=accepted, rejected=sum(judged.values()) - accepted)

