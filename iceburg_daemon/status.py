"""Read-only store + inbox -> one status snapshot (a dict), its exit code, and a table for people."""

from __future__ import annotations

import json
from typing import Any

from iceburg_daemon import ROLES
from iceburg_daemon.config import Config, publish_name
from iceburg_daemon.errors import StoreError
from iceburg_daemon.fsutil import free_bytes
from iceburg_daemon.inbox import pending, scan
from iceburg_daemon.runner import pid_alive
from iceburg_daemon.store import Store
from iceburg_daemon.trigger.clock import now_instant
from iceburg_daemon.trigger.explain import role_view, sentence

EXIT_HEALTHY, EXIT_NOT_RUNNING, EXIT_NOT_INITIALISED = 0, 1, 2


def collect(cfg: Config, *, now: float) -> dict[str, Any]:
    try:
        store = Store.open_readonly(cfg.db_path)
    except StoreError as exc:
        return {"initialised": False, "running": False, "state": "not_initialised", "detail": str(exc)}
    try:
        beat = store.heartbeat()
        if beat is None:
            state, age, pid = "never_started", None, None
        else:
            age, pid = now - beat["ts"], beat["pid"]
            if beat["state"] == "stopped":
                state = "stopped"
            elif not pid_alive(pid) or age > cfg.daemon.stale_after_seconds:
                state = "dead" if not pid_alive(pid) else "stale"
            else:
                state = "running"
        found = scan(cfg.inbox_dir, now=now, settle_seconds=cfg.inbox.settle_seconds,
                     open_settle_seconds=cfg.inbox.open_settle_seconds)
        return {
            "initialised": True,
            "running": state == "running",
            "state": state,
            "pid": pid,
            "heartbeat_age_s": None if age is None else round(age, 3),
            "version": beat["version"] if beat else None,
            "data_dir": str(cfg.data_dir),
            "warnings": _warnings(cfg, store, now),
            "models": _models(cfg, store),
            "inbox": {"ready": len(found.ready), "settling": found.waiting, "held_open": found.held_open,
                      "processing": len(pending(cfg.processing_dir)),
                      "skipped": [{"name": p.name, "reason": r} for p, r in found.skipped]},
            "files": store.file_state_counts(),
            "records": _records(store),
            "quarantined": {r["reason"]: r["n"] for r in store.quarantine_counts()},
            "verdicts": _verdicts(store),
            "sources": [{"name": s["name"], "path": s["path"], "health": s["health"], "reason": s["reason"],
                         "failures": s["failures"], "items": s["items"], "last_sync": s["last_sync"],
                         "next_attempt": s["next_attempt"]} for s in store.sources()],
            "roles": [role_view(cfg, store, role, now_instant(now)) for role in ROLES if cfg.role(role).enabled],
            "runs": [_run_line(r) for r in store.runs(limit=5)],
            "events": [{"ts": e["ts"], "kind": e["kind"], "subject": e["subject"]} for e in store.recent_events(8)],
        }
    finally:
        store.close()


def _warnings(cfg: Config, store: Store, now: float) -> list[str]:
    out = []
    metrics_error = store.meta("metrics_error")
    if metrics_error and cfg.metrics.enabled:
        out.append(f"no /metrics endpoint: {metrics_error} (the daemon runs on without it; free the port or set"
                   " [metrics] port, then restart)")
    for champ in store.champions() if cfg.publish.enabled else []:
        if champ["alias_version"] != champ["version"]:
            alias = publish_name(cfg, champ["role"])
            points = f"v{champ['alias_version']}" if champ["alias_version"] else "nothing of ours"
            when = ("not retried automatically: fix it, then `iceburgd publish`" if champ["publish_next"] == -1
                    else f"next try in {max(0, champ['publish_next'] - now):.0f}s" if champ["publish_next"]
                    else "publishing now")
            out.append(f"Ollama {alias} points at {points} but the {champ['role']} champion is v{champ['version']}"
                       f" ({champ['publish_error'] or 'publish pending'}; {when})")
    free = free_bytes(cfg.data_dir)
    if free is not None and free < cfg.daemon.min_free_mb * 2**20:
        out.append(f"disk nearly full: {free / 2**20:.0f} MB free in {cfg.data_dir} ([daemon] min_free_mb ="
                   f" {cfg.daemon.min_free_mb:g}): no new input is taken until space is freed; nothing is lost")
    late = store.events_since("late_append", now - 86400)
    if late:
        lines = sum(json.loads(e["data"]).get("lines", 0) for e in late)
        out.append(f"{lines} line(s) were appended to {len({e['subject'] for e in late})} inbox file(s) after they"
                   " were archived (last 24 h); they were ingested, but the writer should start a new file (or"
                   " close it) instead of appending to one it keeps open: see docs/inbox.md")
    if cfg.quality.mode == "off":
        out.append('the truth filter is off ([quality] mode = "off"): every record is accepted unjudged'
                   " (reason filter_off) and may be trained on")
    elif cfg.quality.mode == "paused":
        out.append('the truth filter is paused ([quality] mode = "paused"): new records wait unjudged and are'
                   " not trained on")
    return out


def _models(cfg: Config, store: Store) -> list[dict[str, Any]]:
    return [{"role": c["role"], "champion": c["version"], "since": c["since"], "alias": publish_name(cfg, c["role"]),
             "alias_version": c["alias_version"], "publish_failures": c["publish_failures"],
             "publish_error": c["publish_error"]} for c in store.champions()]


def _records(store: Store) -> list[dict[str, Any]]:
    """Per role and kind: how many, and how many of them the filter accepted and rejected (signals are never
    judged: None)."""
    judged = store.verdicts_by_kind()
    return [{"role": r["role"], "kind": r["kind"], "count": r["n"],
             "accepted": judged.get((r["role"], r["kind"]), {}).get("accept", 0) if r["kind"] != "signal" else None,
             "rejected": judged.get((r["role"], r["kind"]), {}).get("reject", 0) if r["kind"] != "signal" else None}
            for r in store.record_counts()]


def _verdicts(store: Store) -> dict[str, Any]:
    roles: dict[str, dict[str, int]] = {}
    for row in store.verdict_counts():
        entry = roles.setdefault(row["role"], {"accepted": 0, "rejected": 0})
        entry["accepted" if row["verdict"] == "accept" else "rejected"] += row["n"]
    return {"roles": roles, "unfiltered": store.unfiltered_count()}


def _run_line(row: Any) -> dict[str, Any]:
    progress = json.loads(row["progress"]) if row["progress"] else {}
    metrics = json.loads(row["metrics"]) if row["metrics"] else {}
    return {"id": row["id"], "role": row["role"], "status": row["status"], "trigger": row["trigger"],
            "phase": progress.get("phase"),
            "step": progress.get("step"), "total": progress.get("total"), "eta_s": progress.get("eta_s"),
            "loss": progress.get("loss"), "eval_loss": metrics.get("eval_loss"), "reason": row["reason"]}


def exit_code(snapshot: dict[str, Any]) -> int:
    if not snapshot["initialised"]:
        return EXIT_NOT_INITIALISED
    return EXIT_HEALTHY if snapshot["running"] else EXIT_NOT_RUNNING


def render(snapshot: dict[str, Any], now: float) -> Any:
    """A rich renderable: a few small tables a person can read at a glance."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not snapshot["initialised"]:
        return Text(f"iceburgd: not initialised — {snapshot['detail']}", style="yellow")
    colour = "green" if snapshot["running"] else "red"
    age = snapshot["heartbeat_age_s"]
    head = Text.assemble(("iceburgd ", "bold"), (snapshot["state"], f"bold {colour}"),
                         f"  pid {snapshot['pid']}  heartbeat {'-' if age is None else f'{age:.1f}s ago'}"
                         f"  data {snapshot['data_dir']}")
    warnings = Text("\n".join(f"warning: {w}" for w in snapshot["warnings"]), style="bold yellow")
    inbox = snapshot["inbox"]
    inbox_line = Text(f"inbox: {inbox['ready']} ready, {inbox['settling']} settling ({inbox['held_open']} held open"
                      f" by a writer), {inbox['processing']} in"
                      f" progress, {len(inbox['skipped'])} skipped; files: "
                      + (", ".join(f"{k} {v}" for k, v in sorted(snapshot["files"].items())) or "none"))
    records = Table(title=f"records ({snapshot['verdicts']['unfiltered']} waiting for the filter)",
                    title_justify="left")
    for col in ("role", "kind", "count", "accepted", "rejected"):
        records.add_column(col, justify="left" if col in ("role", "kind") else "right")
    for r in snapshot["records"]:
        records.add_row(r["role"], r["kind"], str(r["count"]), "" if r["accepted"] is None else str(r["accepted"]),
                        "" if r["rejected"] is None else str(r["rejected"]))
    quarantine = Table(title="quarantined", title_justify="left")
    quarantine.add_column("reason")
    quarantine.add_column("count", justify="right")
    for reason, n in snapshot["quarantined"].items():
        quarantine.add_row(reason, str(n))
    sources = Table(title="sources", title_justify="left")
    for col in ("name", "health", "items", "last sync", "reason"):
        sources.add_column(col)
    for s in snapshot["sources"]:
        last = "-" if s["last_sync"] is None else f"{now - s['last_sync']:.0f}s ago"
        style = "green" if s["health"] == "healthy" else "red" if s["health"] == "unhealthy" else ""
        sources.add_row(s["name"], Text(s["health"], style=style), str(s["items"]), last, (s["reason"] or "")[:80])
    roles = Text("\n".join(sentence(v) for v in snapshot["roles"]) or "no roles enabled",
                 style="red" if any(v["needs_attention"] for v in snapshot["roles"]) else "")
    runs = Table(title="training runs", title_justify="left")
    for col in ("run", "trigger", "status", "progress", "loss", "eval loss", "reason"):
        runs.add_column(col)
    for r in snapshot["runs"]:
        step = f"{r['step']}/{r['total']}" if r["step"] is not None else (r["phase"] or "-")
        eta = f" eta {r['eta_s']:.0f}s" if r["status"] == "running" and r["eta_s"] is not None else ""
        runs.add_row(r["id"], r["trigger"] or "", r["status"], step + eta, _num(r["loss"]), _num(r["eval_loss"]), r["reason"] or "")
    events = Table(title="recent events", title_justify="left")
    events.add_column("age")
    events.add_column("event")
    events.add_column("subject")
    for e in snapshot["events"]:
        events.add_row(f"{now - e['ts']:.0f}s", e["kind"], e["subject"][:60])
    models = Text("\n".join(
        f"{m['role']}: champion v{m['champion']}, Ollama {m['alias']} -> "
        + (f"v{m['alias_version']}" if m["alias_version"] else "not published") for m in snapshot["models"])
        or "no champion yet (the first model that beats its base becomes one)")
    return Group(head, *([warnings] if snapshot["warnings"] else []), inbox_line, records, quarantine, sources,
                 Text("when roles train", style="italic"), roles, Text("models", style="italic"), models,
                 runs, events)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
