"""Monitoring as code (monitoring/): promtool checks the scrape config and the alert rules and runs their unit
tests; a real Prometheus scrapes a real daemon through a whole chain (ingest, filter, trigger, train, evaluate,
promote, publish) and answers for series of each stage; the Grafana dashboard's expressions parse there and name
only metrics the daemon exports; the metric names and labels follow the conventions; /healthz says 200 or 503.

Prometheus comes from Debian's `prometheus` package (.ci/run installs it). Without it these tests fail in CI
(IBD_CI=1) with the reason, and are skipped only outside CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from fake_ollama import FakeOllama

from iceburg_daemon.metrics import health
from iceburg_daemon.store import Store
from iceburg_daemon.testing import (chain_config, fact_record, free_port, spawn_daemon, wait_for, write_config,
                                    write_jsonl)

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
LABELS = {"role", "kind", "reason", "verdict", "source", "outcome", "status", "decision", "stage", "action",
          "model", "metric", "version", "python", "le"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("IBD_CI") == "1":
            pytest.fail(f"{tool} not found: .ci/run installs Debian's prometheus package (apt-get install prometheus)")
        pytest.skip(f"{tool} not installed (Debian: apt-get install prometheus); CI runs this")
    return path


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _query(prom: str, expr: str) -> dict:
    code, body = _get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    return {"http": code, **json.loads(body)}


def test_promtool_checks_the_config_and_the_rules_and_runs_every_alert_test():
    promtool = _need("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = re.findall(r"^\s+- alert: (\w+)", (MONITORING / "alerts.yml").read_text(), re.M)
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    assert len(rules) == 9 and set(rules) == tested  # every alert has a unit test


def test_healthz_is_503_for_a_stale_or_stopped_heartbeat(tmp_path):
    db = tmp_path / "s.sqlite3"
    assert health(db, 60, time.time())[0] == 503  # no store yet
    store = Store.open(db)
    with store.transaction():
        store.beat(pid=os.getpid(), started_at=0, now=1000.0, state="running", version="x")
    store.close()
    assert health(db, 60, 1030.0) == (200, {"healthy": True, "state": "running", "heartbeat_age_s": 30.0,
                                            "pid": os.getpid(), "version": "x"})
    assert health(db, 60, 1100.0)[0] == 503 and health(db, 60, 1100.0)[1]["state"] == "stale"


@pytest.mark.slow
def test_a_real_prometheus_scrapes_a_daemon_through_the_whole_chain(tmp_path, tiny_base, fixtures):
    prometheus = _need("prometheus")
    chroma = tmp_path / "iceburg-chroma"
    shutil.copytree(fixtures / "data" / "memory" / "chroma", chroma)
    ollama = FakeOllama()
    port, prom_port = free_port(), free_port()
    text = chain_config(tiny_base, ollama_url=ollama.url, chroma=chroma, metrics_port=port)
    cfg_path = write_config(tmp_path / "home", text)
    inbox = tmp_path / "home" / "data" / "inbox"
    inbox.mkdir(parents=True)
    write_jsonl(inbox / "usage.jsonl", [json.dumps(fact_record(f"site{i}", "teal")) for i in range(60)]
                + ['{"broken'])
    config = (MONITORING / "prometheus.yml").read_text().replace("127.0.0.1:9477", f"127.0.0.1:{port}")
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace(
        "evaluation_interval: 15s", "evaluation_interval: 1s").replace("- alerts.yml",
                                                                                  f"- {MONITORING / 'alerts.yml'}")
    (tmp_path / "prometheus.yml").write_text(config)
    daemon = spawn_daemon(cfg_path)
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for(lambda: _get(f"{api}/-/ready")[0] == 200 if _port_open(prom_port) else False, 60, "prometheus ready")
        wait_for(lambda: any(t["health"] == "up" for t in json.loads(_get(f"{api}/api/v1/targets")[1])["data"]
                             ["activeTargets"]), 60, "the daemon's target up")
        expected = ["iceburg_records_ingested_total", "iceburg_records_quarantined_total",
                    "iceburg_records_filtered_total", "iceburg_trigger_fires_total", "iceburg_runs_started_total",
                    "iceburg_training_runs_total", "iceburg_gate_decisions_total", "iceburg_champion_info",
                    "iceburg_eval_score", "iceburg_promotions_total", "iceburg_publish_attempts_total",
                    "iceburg_run_duration_seconds_count", "iceburg_build_info"]
        wait_for(lambda: all(_query(api, name)["data"]["result"] for name in expected), 600,
                 "series from every stage in Prometheus", every=2.0)
        stages = {r["metric"]["stage"] for r in _query(api, "iceburg_stage_last_success_timestamp_seconds")
                  ["data"]["result"]}
        assert stages == {"ingest", "sources", "filter", "train", "evaluate", "promote", "publish"}
        rules = wait_for(lambda: _healthy_rules(api), 60, "every rule evaluated and healthy")
        assert len(rules) == 9
        code, scrape = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        _check_names(scrape.decode())
        _check_dashboard(api, scrape.decode())
        code, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert code == 200 and json.loads(body)["healthy"] is True
        assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
        post = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(post, timeout=5)
            raise AssertionError("POST was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 405  # nothing served here changes state
    finally:
        prom.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGTERM)
        prom.wait(30)
        daemon.wait(120)
        ollama.close()


def _healthy_rules(api: str) -> list | None:
    rules = json.loads(_get(f"{api}/api/v1/rules")[1])["data"]["groups"][0]["rules"]
    return rules if all(r["health"] == "ok" for r in rules) else None  # "unknown" until first evaluated


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_names(scrape: str) -> None:
    """iceburg_<noun>_<unit>, counters end in _total, closed label sets, no run ids or file names as values."""
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M))
    ours = {name: kind for name, kind in families.items() if name.startswith("iceburg_")}
    assert len(ours) >= 40 and ours == families, set(families) - set(ours)
    for line in scrape.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = re.match(r"[a-z_0-9]+", line).group(0)
        base = re.sub(r"_(total|created|bucket|sum|count|info)$", "", name)
        kind = families.get(name) or families.get(base) or families.get(base + "_info")
        assert kind is not None, line
        if kind == "counter":
            assert name.endswith(("_total", "_created")), line
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0] if "{" not in line else
                                 line[line.index("{"):line.rindex("}") + 1]))
        assert set(labels) <= LABELS, line
        for value in labels.values():
            assert "/" not in value and not re.search(r"\d{8}-\d{6}", value), line  # no paths, no run ids


def _check_dashboard(api: str, scrape: str) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    # every family the daemon exports, also those with no sample right now (no run is training at the end)
    exported = set(re.findall(r"^(iceburg_[a-z0-9_]+)", scrape, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M):
        exported |= {name, *(f"{name}_{s}" for s in ("bucket", "sum", "count") if kind == "histogram")}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            answer = _query(api, target["expr"])
            assert answer["status"] == "success", (panel["title"], target["expr"], answer)
            for name in re.findall(r"\b(iceburg_[a-z0-9_]+)", target["expr"]):
                assert name in exported, (panel["title"], name)
