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
from iceburg_daemon.trigger.explain import role_view

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
        snapshot = {
            "initialised": True,
            "running": state == "running",
            "state": state,
            "pid": pid,
            "uptime_s": round(now - beat["started_at"]) if beat is not None and state == "running" else None,
            "activity": _activity(store) if state == "running" else None,
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
            "sources": [{"name": s["name"], "kind": s["kind"], "path": s["path"], "health": s["health"],
                         "reason": s["reason"],
                         "failures": s["failures"], "items": s["items"], "last_sync": s["last_sync"],
                         "next_attempt": s["next_attempt"]} for s in store.sources()],
            "roles": [_role(cfg, store, role, now) for role in ROLES if cfg.role(role).enabled],
            "runs": [_run_line(r) for r in store.runs(limit=5)],
            "events": [{"ts": e["ts"], "kind": e["kind"], "subject": e["subject"]} for e in store.recent_events(8)],
        }
        snapshot["needs_you"] = _needs_you(cfg, store, snapshot, now)
        return snapshot
    finally:
        store.close()


def _activity(store: Store) -> str:
    """What the daemon is doing, from the store: the child it supervises, else the file or backlog at hand."""
    for run in store.runs_in(["running"]):
        p = json.loads(run["progress"]) if run["progress"] else {}
        if p.get("step") is not None and p.get("total"):
            eta = f", ETA {p['eta_s']:.0f}s" if isinstance(p.get("eta_s"), (int, float)) else ""
            return f"training {run['role']} ({run['id']}): step {p['step']} of {p['total']}{eta}"
        return f"training {run['role']} ({run['id']}): {p.get('phase', 'starting')}"
    for run in store.runs_in(["evaluating"]):
        return f"evaluating {run['role']} ({run['id']})"
    for row in store.conn.execute("SELECT name, byte_offset, size FROM files WHERE state = 'ingesting'"
                                  " AND byte_offset < size LIMIT 1"):  # a followed file read to its end is idle
        share = f" ({100 * row['byte_offset'] / row['size']:.0f} %)" if row["size"] else ""
        return f"ingesting {row['name']}{share}"
    waiting = store.unfiltered_count()
    if waiting:
        return f"filtering: {waiting} record(s) waiting"
    for champ in store.champions():
        if champ["alias_version"] != champ["version"] and champ["publish_next"] is None:
            return f"publishing {champ['role']} v{champ['version']}"
    return "idle"


def _role(cfg: Config, store: Store, role: str, now: float) -> dict[str, Any]:
    """The trigger's view of a role, plus its champion (version, held-out loss, alias) and its last run."""
    view = role_view(cfg, store, role, now_instant(now))
    champ = store.champion(role)
    version = store.version(role, champ["version"]) if champ else None
    run = store.run(version["run_id"]) if version else None
    evaluation = json.loads(run["evaluation"]) if run is not None and run["evaluation"] else {}
    view["champion"] = None if champ is None else {
        "version": champ["version"], "alias_in_sync": champ["alias_version"] == champ["version"],
        "held_out_loss": (evaluation.get("candidate") or {}).get("held_out_loss")}
    last = store.runs(role, limit=1)
    view["last_run"] = None if not last else {"id": last[0]["id"], "status": last[0]["status"],
                                              "reason": last[0]["reason"], "finished_at": last[0]["finished_at"]}
    return view


def _needs_you(cfg: Config, store: Store, snap: dict[str, Any], now: float) -> list[str]:
    """What a person should do something about, each with the command that helps."""
    out = []
    if snap["state"] in ("stopped", "dead", "stale", "never_started"):
        out.append(f"the daemon is {snap['state'].replace('_', ' ')}: start it (`iceburgd service install` on a"
                   " Mac, or `iceburgd run`); `iceburgd logs --level warning` says why it stopped")
    for view in snap["roles"]:
        role, last = view["role"], view["last_run"]
        if view["needs_attention"]:
            out.append(f"{role} stopped training after {view['failures']} failed runs: fix the cause, then"
                       f" `iceburgd trigger reset {role}`")
        elif last and last["status"] == "failed":
            out.append(f"{role}'s last run failed ({last['reason']}): `iceburgd runs show {last['id']}`")
    for role, n in sorted(store.rejections_in_a_row().items()):
        if n >= 3:
            out.append(f"the gate rejected the last {n} candidates of {role}: read their eval.md"
                       f" (`iceburgd models list --role {role}`)")
    for champ in store.champions():
        if cfg.publish.enabled and champ["publish_next"] == -1:
            out.append(f"publishing {champ['role']} v{champ['version']} to Ollama failed and is not retried"
                       f" ({champ['publish_error']}): fix it, then `iceburgd publish {champ['role']}`")
    for source in snap["sources"]:
        if source["health"] == "unhealthy":
            out.append(f"source {source['name']} cannot be read ({source['reason']}); retried automatically")
    lost = store.conn.execute("SELECT COUNT(*) FROM files WHERE state = 'lost' AND finished_at >= ?",
                              (now - 7 * 86400,)).fetchone()[0]
    if lost:
        out.append(f"{lost} followed log file(s) were deleted or truncated before they were read to the end in the"
                   " last 7 days (`iceburgd logs --event followed_file_lost`): keep rotated files in the same"
                   " folder, or raise [sources] rotated_grace_seconds")
    whole = store.conn.execute("SELECT COUNT(*) FROM files WHERE state = 'quarantined' AND finished_at >= ?",
                               (now - 86400,)).fetchone()[0]
    if whole:
        out.append(f"{whole} inbox file(s) quarantined whole in the last 24 h: see {cfg.quarantine_dir}"
                   " and `iceburgd logs --event file_quarantined`")
    return out


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
    from iceburg_daemon.status_view import render as draw

    return draw(snapshot, now)
