"""The Daemon: wires config, store, inbox, sources, metrics and logs into one loop; signals; ordered shutdown.

tick() reads top to bottom in data-flow order: scan inbox -> claim -> ingest -> sync sources -> filter ->
trigger (queue runs by threshold or schedule) -> train (supervise children, pause them when a pausing condition
starts, start the oldest run that no deferral holds) -> evaluate (a trained run against the champion; the gate
promotes or rejects) -> publish (move the champion's Ollama alias, on a worker thread) -> heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Sequence

from iceburg_daemon import __version__
from iceburg_daemon.config import Config
from iceburg_daemon.daemon_input import InputStages
from iceburg_daemon.evaluate.stage import Evaluator
from iceburg_daemon.evaluate.suites import install_starters
from iceburg_daemon.follow import Follower
from iceburg_daemon.fsutil import free_bytes
from iceburg_daemon.inbox import InboxWatcher
from iceburg_daemon.lock import DataDirLock
from iceburg_daemon.logs import get_logger, stage_failed
from iceburg_daemon.metrics import Metrics
from iceburg_daemon.publish import PublishStage
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.embed import EmbeddingError
from iceburg_daemon.runner import Runner, remove_orphan_run_dirs
from iceburg_daemon.store import SourceHealth, Store
from iceburg_daemon.trigger.defer import REASONS as DEFER_REASONS
from iceburg_daemon.trigger.state import backfill_trained
from iceburg_daemon.trigger.step import TriggerStage

log = get_logger("iceburgd.daemon")


class Daemon(InputStages):
    def __init__(self, cfg: Config, *, metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 source_command: Sequence[str] | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.source_command = source_command  # tests swap the chroma reader child
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.started_at = clock()
        self.lock = DataDirLock(cfg.lock_path)
        self.store: Store | None = None
        self.chain: FilterChain | None = None
        self.follower: Follower | None = None
        self.runners: list[Runner] = []  # one per concurrent training child ([training] max_concurrent_runs)
        self.triggers: TriggerStage | None = None
        self.evaluator: Evaluator | None = None
        self.publisher: PublishStage | None = None
        self._skipped_reported: set[tuple[str, str]] = set()
        self._settles_in: float | None = None  # wake early when a waiting inbox file settles
        self._filter_backlog = False  # the last filter pass stopped at its limit: more records are waiting
        self._last_beat = float("-inf")
        self._disk_low = False
        self._work_since: float | None = None  # when input work last resumed (for input_share_while_training)

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def open(self) -> None:
        self.lock.acquire()
        for folder in (self.cfg.inbox_dir, self.cfg.processing_dir, self.cfg.archive_dir, self.cfg.quarantine_dir,
                       self.cfg.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.cfg.data_dir, self.cfg.models_dir):
            os.chmod(folder, 0o700)  # records, logs and weights are private, even in a folder made beforehand
        self.store = Store.open(self.cfg.db_path)
        self.metrics.watch_store(self.cfg.db_path, (self.cfg.inbox_dir, self.cfg.processing_dir), now=self.clock())
        self.follower = Follower(self.cfg, self.store, clock=self.clock)
        self.chain = FilterChain(self.cfg, self.store, clock=self.clock)
        self._prepare_semantic_index()
        self.runners = [Runner(self.cfg, self.store, clock=self.clock, on_finish=self._run_finished)
                        for _ in range(self.cfg.training.max_concurrent_runs)]
        self.runners[0].recover()
        for name in remove_orphan_run_dirs(self.cfg, self.store):
            log.warning("orphan_run_folder_removed", folder=name)  # a crash between its rename and its commit
        backfill_trained(self.store)  # runs that succeeded before triggers existed: their records are not new
        self.triggers = TriggerStage(self.cfg, self.store, clock=self.clock,
                                     on_fire=lambda role, kind: self.metrics.trigger_fires.labels(
                                         role=role, kind=kind).inc(), keep_alive=self.keep_alive)
        self.evaluator = Evaluator(self.cfg, self.store, clock=self.clock, on_decided=self._decided)
        self.publisher = PublishStage(self.cfg, self.store, clock=self.clock, on_result=lambda role, ok:
                                      self.metrics.publishes.labels(role=role, outcome="ok" if ok else "failed").inc())
        install_starters(self.cfg.evals_dir)  # the user's own suites are never overwritten
        with self.store.transaction():
            for source in self.cfg.sources.chroma:
                if source.enabled:
                    self.store.ensure_source(f"chroma:{source.name}", "chroma", str(source.path))
            self.store.add_event("daemon_started", "daemon", self.clock(), pid=os.getpid(), version=__version__)
        log.info("daemon_started", pid=os.getpid(), data_dir=str(self.cfg.data_dir), version=__version__)

    def _prepare_semantic_index(self) -> None:
        """Bring the derived vector index level with the store; rebuild it when it cannot be read."""
        semantic = self.chain.semantic if self.chain else None
        if semantic is None:
            return
        try:
            semantic.verify()
            added = semantic.catch_up(on_batch=self.keep_alive)
        except EmbeddingError as exc:
            log.warning("semantic_unavailable", error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the index is derived data: whatever broke it, rebuild it
            log.warning("semantic_index_unreadable", error=f"{type(exc).__name__}: {exc}")
            try:
                added = semantic.rebuild(on_batch=self.keep_alive)
            except Exception as again:  # noqa: BLE001 - start anyway: the filter retries the rebuild when it needs it
                log.error("semantic_index_rebuild_failed", error=f"{type(again).__name__}: {str(again)[:300]}")
                return
        if added:
            log.info("semantic_index_caught_up", records=added)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
        if self.chain is not None:
            self.chain.close()  # feature workers, if a backlog was being judged
        children = [*self.runners, *([self.evaluator] if self.evaluator else [])]
        for child in children:
            child.stop("shutdown")  # every child saves its work at once: one grace period for all of them
        for child in children:
            child.shutdown()  # runs resume from their checkpoints; an evaluation from the cache
        self.runners = []
        if self.publisher is not None:
            self.publisher.close()
        if self.store is not None:
            now = self.clock()
            with self.store.transaction():
                self.store.beat(pid=os.getpid(), started_at=self.started_at, now=now, state="stopped",
                                version=__version__)
                self.store.add_event("daemon_stopped", "daemon", now)
            self.store.close()
            self.store = None
        self.lock.release()
        log.info("daemon_stopped")

    def run(self, *, once: bool = False, serve_metrics: bool = True) -> int:
        """Foreground loop (launchd forbids self-daemonizing). Returns the process exit code."""
        self.open()
        watcher = InboxWatcher(self.cfg.inbox_dir, self.wake)
        server = None
        try:
            if not once:
                self._install_signals()
                if serve_metrics and self.cfg.metrics.enabled:
                    server = self._serve_metrics()
                if self.cfg.inbox.watch and not watcher.start():
                    log.warning("inbox_watch_unavailable", fallback="rescan")
            period = min(self.cfg.daemon.heartbeat_seconds, self.cfg.inbox.rescan_seconds or 1e9)
            while True:
                self.tick()
                if self.stopping.is_set():
                    break
                if once:
                    if self.training_busy or self._release_pending():
                        time.sleep(0.2)  # --once also sees a queued run through training, evaluation, publishing
                        continue
                    if not self.wake.is_set():
                        break
                    self.wake.clear()  # --once still finishes a backlog that needs several passes
                    continue
                self.wake.wait(timeout=min(period, self._settles_in or period))
                self.wake.clear()
                if self.stopping.is_set():
                    break
        finally:
            watcher.stop()
            if server is not None:
                server.shutdown()
                server.server_close()
            self.close()
        return 0

    def _serve_metrics(self) -> Any:
        """The /metrics endpoint, or None when it cannot listen (say the port is taken): the daemon runs on
        without it, and status says why (kept in the store's meta table)."""
        assert self.store is not None
        try:
            server = self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port, db_path=self.cfg.db_path,
                                        stale_after=self.cfg.daemon.stale_after_seconds)
        except OSError as exc:
            problem = f"cannot listen on {self.cfg.metrics.host}:{self.cfg.metrics.port}: {exc.strerror or exc}"
            log.error("metrics_unavailable", reason=problem)
            with self.store.transaction():
                self.store.set_meta("metrics_error", problem)
            return None
        with self.store.transaction():
            self.store.set_meta("metrics_error", "")
        log.info("metrics_serving", host=self.cfg.metrics.host, port=server.server_port)
        return server

    def _install_signals(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stopping.is_set():
                os._exit(128 + signum)  # second signal: leave now; the store resumes from the last commit
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stopping.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # ---- one pass --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        started = time.perf_counter()
        self._work_since = None  # the wait before this pass is not work
        taking_input = self._disk_has_room()  # a full disk stops new input; nothing already taken is lost
        if taking_input:
            self._guarded("inbox", self.ingest_inbox)
        if taking_input and not self.stopping.is_set():
            self._guarded("follow", self.follow_logs)
        if taking_input and not self.stopping.is_set():
            self.sync_sources()
        if taking_input and not self.stopping.is_set() and self.cfg.quality.mode != "paused":
            self.filter_records()
        if not self.stopping.is_set():
            self.trigger()
        if not self.stopping.is_set():
            self.train()
        if not self.stopping.is_set():
            self.evaluate()
        if not self.stopping.is_set():
            self.publish()
        self._guarded("heartbeat", self.heartbeat)
        self.metrics.tick_seconds.observe(time.perf_counter() - started)

    def _disk_has_room(self) -> bool:
        """Free space in the data folder above [daemon] min_free_mb; logged and recorded when that changes."""
        free = free_bytes(self.cfg.data_dir)
        low = free is not None and free < self.cfg.daemon.min_free_mb * 2**20
        if free is not None:
            self.metrics.disk_free.set(free)
        self.metrics.disk_low.set(int(low))
        if low != self._disk_low:
            self._disk_low = low
            kind = "disk_low" if low else "disk_ok"
            (log.error if low else log.info)(kind, free_mb=round((free or 0) / 2**20, 1),
                                             min_free_mb=self.cfg.daemon.min_free_mb)
            self._guarded("disk", lambda: self._event(kind, free_mb=round((free or 0) / 2**20, 1)))
        return not low

    def _event(self, kind: str, **data: Any) -> None:
        assert self.store is not None
        with self.store.transaction():
            self.store.add_event(kind, "daemon", self.clock(), **data)

    @staticmethod
    def _guarded(stage: str, step: Callable[[], None]) -> None:
        """A stage's unexpected error is logged and the loop goes on (retried next pass): a daemon that died
        here would be restarted by launchd in a loop."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            stage_failed(exc, stage=stage)

    def trigger(self) -> None:
        """Decide per role whether new records or a schedule queue a run (each decision that acts is an event)."""
        assert self.triggers is not None
        try:
            decisions = self.triggers.run(filtering=self._filter_backlog)
        except Exception as exc:  # noqa: BLE001 - a trigger bug must not stop ingest and filtering
            stage_failed(exc, stage="trigger")
            return
        for d in decisions:
            self.metrics.role_new_records.labels(role=d.state.role).set(d.state.new_records)
            self.metrics.role_needs_attention.labels(role=d.state.role).set(int(d.state.needs_attention))
            if d.state.last_success is not None:
                self.metrics.last_success.labels(role=d.state.role).set(d.state.last_success)

    @property
    def training_busy(self) -> bool:
        return any(r.busy for r in self.runners)

    def train(self) -> None:
        """Supervise the running children (pausing one when a pausing condition starts); while a slot is free,
        start the oldest queued or interrupted run that no deferral holds."""
        assert self.triggers is not None
        try:
            for runner in self.runners:
                if runner.busy and runner.active is not None:
                    cause = self.triggers.pause_cause(runner.active.run_id)
                    if cause is not None:
                        runner.stop(f"paused:{cause.code}")  # checkpoints; resumes when the cause clears
                    runner.poll()
            free = [r for r in self.runners if not r.busy]
            if free and not (self.evaluator and self.evaluator.busy):  # an evaluation finishes its chain first
                waiting = free[0].waiting_runs()
                while free and waiting:
                    row = self.triggers.gate(waiting)
                    if row is None:
                        break
                    waiting = [w for w in waiting if w["id"] != row["id"]]
                    if free[0].start(row):
                        free.pop(0)
            self._queue_metrics()
        except Exception as exc:  # noqa: BLE001 - a runner bug must not stop ingest and filtering
            stage_failed(exc, stage="train")
        self.metrics.training_active.set(sum(1 for r in self.runners if r.busy))

    def evaluate(self) -> None:
        """Supervise the evaluation child; when no child of any kind runs, start on the oldest trained run."""
        assert self.evaluator is not None
        try:
            if self.evaluator.busy:
                if self.evaluator.poll() is not None:
                    self.wake.set()  # publish or start the next run now
            elif not self.training_busy:
                row = self.evaluator.next_run()
                if row is not None:
                    self.evaluator.start(row)
        except Exception as exc:  # noqa: BLE001 - an evaluation bug must not stop ingest and filtering
            stage_failed(exc, stage="evaluate")

    def publish(self) -> None:
        """Move each champion's Ollama alias onto it (off this thread); record what finished."""
        assert self.publisher is not None and self.store is not None
        try:
            self.publisher.step()
            for champ in self.store.champions():
                self.metrics.champion_version.labels(role=champ["role"]).set(champ["version"])
                self.metrics.alias_lagging.labels(role=champ["role"]).set(
                    int(self.cfg.publish.enabled and champ["alias_version"] != champ["version"]))
        except Exception as exc:  # noqa: BLE001 - Ollama trouble must not stop ingest and filtering
            stage_failed(exc, stage="publish")

    def _release_pending(self) -> bool:
        """--once: work left after training (a trained run to evaluate, a publish due or in flight)."""
        if self.evaluator is None or self.publisher is None:
            return False
        return (self.evaluator.busy or self.evaluator.next_run() is not None or self.publisher.current is not None
                or bool(self.publisher.due()))

    def _decided(self, run_id: str, role: str, promoted: bool) -> None:
        self.metrics.gate_decisions.labels(role=role, decision="promoted" if promoted else "rejected").inc()

    def _queue_metrics(self) -> None:
        assert self.store is not None
        waiting = self.store.runs_in(["queued", "interrupted"])
        self.metrics.runs_queued.set(len(waiting))
        deferred: dict[str, int] = {}
        for row in waiting:
            for code in json.loads(row["deferred"]) if row["deferred"] else []:
                deferred[code] = deferred.get(code, 0) + 1
        for code in (*DEFER_REASONS, "cooldown"):
            self.metrics.runs_deferred.labels(reason=code).set(deferred.get(code, 0))

    def _run_finished(self, *, run_id: str, role: str, status: str) -> None:
        self.metrics.runs_finished.labels(role=role, status=status).inc()
        self.wake.set()  # the next queued run can start now

    def keep_alive(self) -> bool:
        """The `should_stop` handed to long stages (a big file, a Chroma read, a filter backlog, an index
        rebuild), called between their batches and transactions: beats the heartbeat when it is due, so status
        never calls a busy daemon stale; while a child trains, pauses so this work takes at most
        [training] input_share_while_training of the time; answers whether a shutdown was asked for."""
        if self.store is not None and not self.store.conn.in_transaction and \
                self.clock() - self._last_beat >= self.cfg.daemon.heartbeat_seconds:
            self._guarded("heartbeat", self.heartbeat)
        share = self.cfg.training.input_share_while_training
        if share < 1 and (self.training_busy or (self.evaluator is not None and self.evaluator.busy)):
            now = time.monotonic()
            if self._work_since is not None:  # worked since the last call: pause (3x as long at 0.25)
                self.stopping.wait(min((now - self._work_since) * (1 / share - 1), 5.0))
            self._work_since = time.monotonic()
        return self.stopping.is_set()

    def heartbeat(self) -> None:
        assert self.store is not None
        now = self._last_beat = self.clock()
        self.store.beat(pid=os.getpid(), started_at=self.started_at, now=now, state="running", version=__version__)
        self.metrics.heartbeat.set(now)
        for row in self.store.sources():
            self.metrics.source_healthy.labels(source=row["name"].split(":", 1)[1]).set(
                1 if row["health"] == SourceHealth.HEALTHY.value else 0)
