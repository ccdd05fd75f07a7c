"""Feature extraction in a worker process, so the next batch's features are computed while the main process
judges the current one (the judging itself is sequential: each record must see the ones before it).

The main process computes a share of each batch itself when judging alone would leave it waiting for the
workers; the share is steered by how long it waited for them in the last batch (on 2 cores, 1 worker: about a
third of the rows without the semantic filter, where judging is cheap; none with it).

Workers are started with `spawn` (the daemon holds SQLite handles and a vector index a fork must not copy), only
while a backlog lasts, and stopped when it is drained so an idle daemon keeps no extra processes. A worker that
dies is not fatal: the batch is computed in the main process and the pool is started again later.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from iceburg_daemon.logs import get_logger
from iceburg_daemon.quality.features import Features, Packed, Row, extract, extract_packed, unpack

log = get_logger("iceburgd.filter")


def _exit_with_parent() -> None:
    """Runs first in each worker: a thread ends the worker as soon as its parent is gone, even SIGKILLed (the
    task queue alone would keep it waiting forever: the worker holds both ends of it)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(0)

        threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_count(configured: int) -> int:
    """-1 (auto): a worker per spare CPU, at most 2 (past that the main process's judging is the limit)."""
    return min(2, (os.cpu_count() or 1) - 1) if configured < 0 else configured


class FeatureWorkers:
    def __init__(self, count: int, hash_dim: int = 0):
        self.count = count
        self.hash_dim = hash_dim  # passed to extract: hash vectors are computed with the other features
        self._pool: ProcessPoolExecutor | None = None
        self.share = 1.0  # of each batch's rows sent to the workers; the main process computes the rest
        self._row_seconds: float | None = None  # the main process's extraction time per row (moving average)

    def submit(self, rows: list[Row], q: Any) -> Callable[[], list[Features]]:
        """Start computing the features of rows; call the result to wait for them (it computes the main
        process's share first)."""
        if self.count > 0:
            try:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_exit_with_parent)
                sent = max(1, round(len(rows) * self.share))
                size = -(-sent // self.count)
                futures = [self._pool.submit(extract_packed, rows[i : min(i + size, sent)], q, self.hash_dim)
                           for i in range(0, sent, size)]
                return lambda: self._collect(futures, rows, sent, q)
            except Exception as exc:  # noqa: BLE001 - no worker could start: compute here
                self._failed(exc)
        feats = extract(rows, q, self.hash_dim)
        return lambda: feats

    def _collect(self, futures: list[Future[Packed]], rows: list[Row], sent: int, q: Any) -> list[Features]:
        started = time.perf_counter()
        own = extract(rows[sent:], q, self.hash_dim)
        if len(rows) > sent:
            seconds = (time.perf_counter() - started) / (len(rows) - sent)
            self._row_seconds = seconds if self._row_seconds is None else 0.7 * self._row_seconds + 0.3 * seconds
        started = time.perf_counter()
        try:
            done = [f for future in futures for f in unpack(future.result())]
        except Exception as exc:  # noqa: BLE001 - e.g. a killed worker: compute here, start afresh next time
            self._failed(exc)
            return extract(rows[:sent], q, self.hash_dim) + own
        self._steer(time.perf_counter() - started, len(rows))
        return done + own

    def _steer(self, waited: float, rows: int) -> None:
        """Waiting for the workers moves rows to the main process (each moved row shortens the wait by about
        twice its extraction time); not waiting hands a few back, in case the workers now idle."""
        if waited > 0.002:
            step = waited / (2 * self._row_seconds * rows) if self._row_seconds else 0.05
            self.share = max(0.0, self.share - min(step, 0.2))
        else:
            self.share = min(1.0, self.share + 0.02)

    def _failed(self, exc: Exception) -> None:
        log.warning("feature_worker_failed", error=f"{type(exc).__name__}: {exc}"[:500])
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
