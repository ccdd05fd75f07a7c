"""Every Prometheus metric of the daemon, on an injected registry (tests get their own), and the HTTP endpoint.

Names follow the Prometheus conventions: iceburg_<noun>_<unit>, counters end in _total, closed label sets
(role, kind, reason codes, configured source names); never record content.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from iceburg_daemon.store import BatchCounts


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
        self.disk_free = Gauge("iceburg_data_disk_free_bytes", "Free space on the data folder's filesystem.",
                               registry=r)
        self.disk_low = Gauge("iceburg_data_disk_low", "1 while free space is below [daemon] min_free_mb: no new"
                              " input is taken.", registry=r)
        self.heartbeat = Gauge("iceburg_daemon_heartbeat_timestamp_seconds", "Unix time of the last loop pass.",
                               registry=r)
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

    def serve(self, host: str, port: int) -> Any:
        """Start the /metrics endpoint in a thread; returns the server (its port is server.server_port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
