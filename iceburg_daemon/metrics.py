"""Every Prometheus metric of the daemon, on an injected registry (tests get their own), and the HTTP endpoint
(`/metrics`, and `/healthz`: 200 while the heartbeat is fresh, 503 otherwise, a JSON body).

Names follow the Prometheus conventions: iceburg_<noun>_<unit>, counters end in _total, base units, closed label
sets (role, kind, status, reason codes, configured source names); never file names, record or run ids, or
record content. Two kinds: events this process saw (counters and gauges the stages update), and state read from
the store at each scrape (`StoreCollector`: queue, progress, champions, evaluation, last successes), so a
restarted daemon reports its history at once and CLI actions (a rollback) show up too.
"""

from __future__ import annotations

import json
import os
import platform
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from iceburg_daemon import __version__
from iceburg_daemon.errors import StoreError
from iceburg_daemon.store import BatchCounts, Store

EVAL_SCORES = ("held_out_loss", "reference_loss", "loss", "suite_pass_rate", "judge_win_rate", "distinct_2",
               "repeated_ngram_rate", "template_echo", "empty_rate", "unterminated_rate")
RUN_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_ingested = Counter("iceburg_records_ingested", "New records stored, by role and kind.",
                                        ["role", "kind"], registry=r)
        self.records_duplicate = Counter("iceburg_records_duplicate", "Records already in the store (ignored).",
                                         ["source"], registry=r)
        self.records_quarantined = Counter("iceburg_records_quarantined", "Lines or items quarantined, by reason.",
                                           ["reason"], registry=r)
        self.verdicts = Counter("iceburg_records_filtered", "Filter verdicts, by role, verdict and reason code.",
                                ["role", "verdict", "reason"], registry=r)
        self.files = Counter("iceburg_inbox_files", "Inbox files finished, by outcome.", ["outcome"], registry=r)
        self.inbox_backlog = Gauge("iceburg_inbox_backlog_files", "Files waiting in the inbox or being ingested.",
                                   registry=r)
        self.source_healthy = Gauge("iceburg_source_healthy", "1 if the source store was read on its last try.",
                                    ["source"], registry=r)
        self.source_last_sync = Gauge("iceburg_source_last_sync_timestamp_seconds",
                                      "Unix time of the last successful sync.", ["source"], registry=r)
        self.followed_files = Gauge("iceburg_followed_files", "Log files followed in place now, by configured"
                                    " [[sources.logs]] name.", ["source"], registry=r)
        self.followed_ended = Counter("iceburg_followed_files_ended", "Followed files finished, by source and how"
                                      " (rotated, deleted, truncated, lost: bytes never read, quarantined).",
                                      ["source", "outcome"], registry=r)
        self.filter_seconds = Histogram("iceburg_filter_pass_duration_seconds", "Duration of one filter pass (up"
                                        " to a few thousand records).", registry=r,
                                        buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.disk_free = Gauge("iceburg_data_disk_free_bytes", "Free space on the data folder's filesystem.",
                               registry=r)
        self.disk_low = Gauge("iceburg_data_disk_low", "1 while free space is below [daemon] min_free_mb: no new"
                              " input is taken.", registry=r)
        self.heartbeat = Gauge("iceburg_daemon_heartbeat_timestamp_seconds", "Unix time of the last loop pass.",
                               registry=r)
        self.started = Gauge("iceburg_daemon_start_time_seconds", "Unix time this daemon process started"
                             " (uptime: time() - this).", registry=r)
        self.build = Info("iceburg_build", "Version of iceburgd and of the Python running it.", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.runs_finished = Counter("iceburg_training_runs", "Training run attempts ended, by role and status.",
                                     ["role", "status"], registry=r)
        self.training_active = Gauge("iceburg_training_active", "Training children running now.", registry=r)
        self.trigger_fires = Counter("iceburg_trigger_fires", "Runs queued by a trigger, by role and kind"
                                     " (threshold, schedule).", ["role", "kind"], registry=r)
        self.runs_queued = Gauge("iceburg_runs_queued", "Runs waiting to start (queued or interrupted).", registry=r)
        self.runs_deferred = Gauge("iceburg_runs_deferred", "Waiting runs held back, by reason code.", ["reason"],
                                   registry=r)
        self.role_new_records = Gauge("iceburg_role_new_records", "Accepted training records no succeeded run has"
                                      " trained on (eval split excluded).", ["role"], registry=r)
        self.role_needs_attention = Gauge("iceburg_role_needs_attention", "1 when a role's automatic runs stopped"
                                          " after repeated failures.", ["role"], registry=r)
        self.last_success = Gauge("iceburg_last_successful_run_timestamp_seconds", "Unix time the role's last"
                                  " run succeeded.", ["role"], registry=r)
        self.gate_decisions = Counter("iceburg_gate_decisions", "Evaluated candidates, by role and decision"
                                      " (promoted, rejected).", ["role", "decision"], registry=r)
        self.publishes = Counter("iceburg_publish_attempts", "Publishing attempts to Ollama, by role and outcome"
                                 " (ok, failed).", ["role", "outcome"], registry=r)
        self.champion_version = Gauge("iceburg_champion_version", "The role's champion version number (0: none).",
                                      ["role"], registry=r)
        self.alias_lagging = Gauge("iceburg_publish_alias_lagging", "1 while the role's Ollama alias does not point"
                                   " at its champion (publish pending).", ["role"], registry=r)
        self.tick_seconds = Histogram("iceburg_daemon_tick_duration_seconds", "Duration of one loop pass.",
                                      registry=r, buckets=(0.005, 0.02, 0.1, 0.5, 2, 10, 60, 300))
        self._store_collector: StoreCollector | None = None

    def watch_store(self, db_path: Path, inbox_dirs: tuple[Path, ...], *, now: float) -> None:
        """Add the state read from the store at each scrape (once per registry)."""
        self.started.set(now)
        if self._store_collector is None:
            self._store_collector = StoreCollector(db_path, inbox_dirs)
            self.registry.register(self._store_collector)

    def count(self, counts: BatchCounts, source: str) -> None:
        for (role, kind), n in counts.stored.items():
            self.records_ingested.labels(role=role, kind=kind).inc(n)
        if counts.duplicates:
            self.records_duplicate.labels(source=source).inc(counts.duplicates)
        for reason, n in counts.quarantined.items():
            self.records_quarantined.labels(reason=reason).inc(n)

    def count_verdicts(self, judged: Any) -> None:
        for (role, verdict, reason), n in judged.items():
            self.verdicts.labels(role=role, verdict=verdict, reason=reason or "none").inc(n)

    def serve(self, host: str, port: int, *, db_path: Path, stale_after: float) -> ThreadingHTTPServer:
        """/metrics and /healthz in a thread; returns the server (its port is server.server_port). Raises OSError
        when it cannot listen (a port in use)."""
        server = ThreadingHTTPServer((host, port), _handler(self.registry, db_path, stale_after))
        server.daemon_threads = True
        Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server


def health(db_path: Path, stale_after: float, now: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 while the daemon's heartbeat is fresh and says running, else 503."""
    try:
        store = Store.open_readonly(db_path)
    except StoreError as exc:
        return 503, {"healthy": False, "state": "not_initialised", "detail": str(exc)}
    try:
        beat = store.heartbeat()
    finally:
        store.close()
    if beat is None:
        return 503, {"healthy": False, "state": "never_started"}
    age = now - beat["ts"]
    healthy = beat["state"] == "running" and age <= stale_after
    state = beat["state"] if beat["state"] != "running" or healthy else "stale"
    return (200 if healthy else 503), {"healthy": healthy, "state": state, "heartbeat_age_s": round(age, 3),
                                       "pid": beat["pid"], "version": beat["version"]}


def _handler(registry: CollectorRegistry, db_path: Path, stale_after: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                code, body = health(db_path, stale_after, time.time())
                self._send(code, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not found: /metrics and /healthz are served"}', "application/json")

        def do_POST(self) -> None:  # noqa: N802 - nothing here changes state
            self._send(405, b'{"error": "read only"}', "application/json")

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes every few seconds must not flood the log
            pass

    return Handler


class StoreCollector(Collector):
    """State read from the store (read-only) at each scrape. A store that cannot be read yields nothing."""

    def __init__(self, db_path: Path, inbox_dirs: tuple[Path, ...]):
        self.db_path, self.inbox_dirs = db_path, inbox_dirs

    def collect(self) -> Iterator[Any]:
        yield from self._inbox()
        try:
            store = Store.open_readonly(self.db_path)
        except StoreError:
            return
        try:
            yield from self._runs(store)
            yield from self._releases(store)
            yield from self._last_success(store)
        finally:
            store.close()

    def _inbox(self) -> Iterator[Any]:
        size = 0
        for folder in self.inbox_dirs:
            try:
                size += sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(folder)
                            if e.is_file(follow_symlinks=False) and not e.name.startswith("."))
            except OSError:
                continue
        yield GaugeMetricFamily("iceburg_inbox_backlog_bytes", "Bytes in files waiting in the inbox or being"
                                " ingested.", value=size)

    def _runs(self, store: Store) -> Iterator[Any]:
        started = CounterMetricFamily("iceburg_runs_started", "Training runs that started (first attempt), by"
                                      " role.", labels=["role"])
        for row in store.conn.execute("SELECT role, COUNT(*) AS n FROM runs WHERE started_at IS NOT NULL"
                                      " GROUP BY role"):
            started.add_metric([row["role"]], row["n"])
        yield started
        durations: dict[str, list[float]] = {}
        for row in store.conn.execute("SELECT role, started_at, finished_at FROM runs WHERE started_at IS NOT NULL"
                                      " AND finished_at IS NOT NULL"):
            durations.setdefault(row["role"], []).append(max(0.0, row["finished_at"] - row["started_at"]))
        yield _histogram("iceburg_run_duration_seconds", "Wall time of finished training runs, start to end.",
                         durations)
        step = GaugeMetricFamily("iceburg_run_step", "The running run's optimizer step.", labels=["role"])
        total = GaugeMetricFamily("iceburg_run_steps", "The running run's planned optimizer steps.",
                                  labels=["role"])
        loss = GaugeMetricFamily("iceburg_run_loss", "The running run's latest training loss.", labels=["role"])
        speed = GaugeMetricFamily("iceburg_run_tokens_per_second", "The running run's training throughput.",
                                  labels=["role"])
        for row in store.conn.execute("SELECT role, progress FROM runs WHERE status = 'running'"):
            progress = _json(row["progress"])
            for family, key in ((step, "step"), (total, "total"), (loss, "loss"), (speed, "tokens_per_s")):
                if isinstance(progress.get(key), (int, float)):
                    family.add_metric([row["role"]], float(progress[key]))
        yield from (step, total, loss, speed)

    def _releases(self, store: Store) -> Iterator[Any]:
        info = InfoMetricFamily("iceburg_champion", "The role's champion version.", labels=["role"])
        for champ in store.champions():
            info.add_metric([champ["role"]], {"version": str(champ["version"])})
        yield info
        promotions = CounterMetricFamily("iceburg_promotions", "Champion changes recorded, by role and action"
                                         " (promote, force, rollback).", labels=["role", "action"])
        for row in store.conn.execute("SELECT role, action, COUNT(*) AS n FROM promotions GROUP BY role, action"):
            promotions.add_metric([row["role"], row["action"]], row["n"])
        yield promotions
        streak = GaugeMetricFamily("iceburg_gate_rejections_in_a_row", "Candidates the gate rejected since the"
                                   " role's last promoted one.", labels=["role"])
        for role, n in sorted(store.rejections_in_a_row().items()):
            streak.add_metric([role], n)
        yield streak
        scores = GaugeMetricFamily("iceburg_eval_score", "The latest evaluated candidate of each role and its"
                                   " baseline, per metric (losses lower is better).", labels=["role", "model",
                                                                                             "metric"])
        for row in store.conn.execute("SELECT role, evaluation FROM runs r WHERE evaluation IS NOT NULL AND"
                                      " finished_at = (SELECT MAX(finished_at) FROM runs q WHERE q.role = r.role"
                                      " AND q.evaluation IS NOT NULL)"):
            evaluation = _json(row["evaluation"])
            for model, key in (("candidate", "candidate"), ("baseline", "baseline_scores")):
                for metric in EVAL_SCORES:
                    value = (evaluation.get(key) or {}).get(metric)
                    if isinstance(value, (int, float)):
                        scores.add_metric([row["role"], model, metric], float(value))
        yield scores

    def _last_success(self, store: Store) -> Iterator[Any]:
        last = GaugeMetricFamily("iceburg_stage_last_success_timestamp_seconds", "Unix time each stage last did"
                                 " its work successfully.", labels=["stage"])
        queries = {
            "ingest": "SELECT MAX(finished_at) FROM files WHERE state = 'done'",
            "sources": "SELECT MAX(last_sync) FROM sources",
            "filter": "SELECT MAX(created_at) FROM verdicts",
            "train": "SELECT MAX(finished_at) FROM runs WHERE status IN ('trained', 'evaluating', 'promoted',"
                     " 'rejected', 'published', 'publish_pending')",
            "evaluate": "SELECT MAX(ts) FROM events WHERE kind IN ('run_promoted', 'run_rejected',"
                        " 'run_published')",
            "promote": "SELECT MAX(at) FROM promotions",
            "publish": "SELECT MAX(ts) FROM events WHERE kind = 'published'",
        }
        for stage, sql in queries.items():
            value = store.conn.execute(sql).fetchone()[0]
            if value is not None:
                last.add_metric([stage], float(value))
        yield last


def _histogram(name: str, doc: str, values: dict[str, list[float]]) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=["role"])
    for role, seen in sorted(values.items()):
        buckets = [(str(b), sum(1 for v in seen if v <= b)) for b in RUN_DURATION_BUCKETS]
        family.add_metric([role], buckets + [("+Inf", len(seen))], sum(seen))
    return family


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
