"""`iceburgd status` on a terminal: one screen that answers "is it healthy, what is it doing, what happened last,
what needs me". Colour on a terminal, plain text when piped (rich decides); the data is status.collect()'s."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from iceburg_daemon.trigger.decide import span
from iceburg_daemon.trigger.explain import sentence


def render(snapshot: dict[str, Any], now: float) -> Any:
    if not snapshot["initialised"]:
        return Text(f"iceburgd: not initialised — {snapshot['detail']}", style="yellow")
    colour = "green" if snapshot["running"] else "red"
    age, uptime = snapshot["heartbeat_age_s"], snapshot["uptime_s"]
    head = Text.assemble(("iceburgd ", "bold"), (snapshot["state"], f"bold {colour}"),
                         f"  pid {snapshot['pid']}" + (f"  up {_span(uptime)}" if uptime is not None else "")
                         + f"  heartbeat {'-' if age is None else f'{age:.1f}s ago'}  data {snapshot['data_dir']}")
    doing = Text(f"now: {snapshot['activity']}", style="cyan") if snapshot["activity"] else Text("")
    needs = Text("\n".join(f"needs you: {n}" for n in snapshot["needs_you"]), style="bold red")
    warnings = Text("\n".join(f"warning: {w}" for w in snapshot["warnings"]), style="bold yellow")
    inbox = snapshot["inbox"]
    inbox_line = Text(f"inbox: {inbox['ready']} ready, {inbox['settling']} settling ({inbox['held_open']} held open"
                      f" by a writer), {inbox['processing']} in progress, {len(inbox['skipped'])} skipped; files: "
                      + (", ".join(f"{k} {v}" for k, v in sorted(snapshot["files"].items())) or "none"))
    parts = [head, doing, *([needs] if snapshot["needs_you"] else []),
             *([warnings] if snapshot["warnings"] else []), _roles(snapshot, now), inbox_line, _records(snapshot),
             _quarantine(snapshot), _sources(snapshot, now), _runs(snapshot), _events(snapshot, now)]
    return Group(*parts)


def _roles(snapshot: dict[str, Any], now: float) -> Any:
    table = Table(title="roles", title_justify="left")
    for col in ("role", "new / threshold", "champion", "held-out loss", "Ollama", "last run", "when it trains"):
        table.add_column(col)
    for v in snapshot["roles"]:
        champ, last = v["champion"], v["last_run"]
        alias = "-" if champ is None else Text("in sync", style="green") if champ["alias_in_sync"] else Text(
            "lagging", style="red")
        outcome = "-" if last is None else f"{last['status']}" + (f" ({last['reason']})" if last["reason"] else "")
        table.add_row(v["role"], f"{v['new_records']} / {v['min_new_records']}",
                      "-" if champ is None else f"v{champ['version']}", _num(champ and champ["held_out_loss"]),
                      alias, Text(outcome[:40], style="red" if last and last["status"] == "failed" else ""),
                      Text(sentence(v).split(": ", 1)[-1][:70], style="red" if v["needs_attention"] else ""))
    return table


def _records(snapshot: dict[str, Any]) -> Any:
    table = Table(title=f"records ({snapshot['verdicts']['unfiltered']} waiting for the filter)",
                  title_justify="left")
    for col in ("role", "kind", "count", "accepted", "rejected"):
        table.add_column(col, justify="left" if col in ("role", "kind") else "right")
    for r in snapshot["records"]:
        table.add_row(r["role"], r["kind"], str(r["count"]), "" if r["accepted"] is None else str(r["accepted"]),
                      "" if r["rejected"] is None else str(r["rejected"]))
    return table


def _quarantine(snapshot: dict[str, Any]) -> Any:
    table = Table(title="quarantined", title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for reason, n in snapshot["quarantined"].items():
        table.add_row(reason, str(n))
    return table


def _sources(snapshot: dict[str, Any], now: float) -> Any:
    table = Table(title="sources", title_justify="left")
    for col in ("name", "health", "items", "last sync", "reason"):
        table.add_column(col)
    for s in snapshot["sources"]:
        last = "-" if s["last_sync"] is None else f"{_span(now - s['last_sync'])} ago"
        style = "green" if s["health"] == "healthy" else "red" if s["health"] == "unhealthy" else ""
        table.add_row(s["name"], Text(s["health"], style=style), str(s["items"]), last, (s["reason"] or "")[:80])
    return table


def _runs(snapshot: dict[str, Any]) -> Any:
    table = Table(title="training runs", title_justify="left")
    for col in ("run", "trigger", "status", "progress", "loss", "eval loss", "reason"):
        table.add_column(col)
    for r in snapshot["runs"]:
        step = f"{r['step']}/{r['total']}" if r["step"] is not None else (r["phase"] or "-")
        eta = f" eta {r['eta_s']:.0f}s" if r["status"] == "running" and r["eta_s"] is not None else ""
        table.add_row(r["id"], r["trigger"] or "", r["status"], step + eta, _num(r["loss"]), _num(r["eval_loss"]),
                      r["reason"] or "")
    return table


def _events(snapshot: dict[str, Any], now: float) -> Any:
    table = Table(title="recent events", title_justify="left")
    for col in ("age", "event", "subject"):
        table.add_column(col)
    for e in snapshot["events"]:
        table.add_row(_span(now - e["ts"]), e["kind"], e["subject"][:60])
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _span(seconds: float) -> str:
    return f"{max(0, seconds):.0f}s" if seconds < 90 else span(seconds)
