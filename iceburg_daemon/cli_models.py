"""`iceburgd eval | promote | models | rollback | publish`: evaluate a run on demand, override the gate, list the
registry, move the champion back, publish now. Torch-free: evaluation runs in the training package's child."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from iceburg_daemon import ROLES
from iceburg_daemon.cli_train import emit
from iceburg_daemon.config import Config, publish_name
from iceburg_daemon.errors import EvaluationError, RegistryError
from iceburg_daemon.store import RunStatus, Store

EXIT_OK, EXIT_FAILURE = 0, 1


def add_parsers(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate a trained run against the champion (or --against vN) now")
    ev.add_argument("id")
    ev.add_argument("--against", type=_version, metavar="VERSION", help="compare with this version (e.g. v3)")
    ev.add_argument("--json", action="store_true")
    promote = sub.add_parser("promote", help="make a rejected candidate the champion anyway (recorded as forced)")
    promote.add_argument("id")
    promote.add_argument("--force", action="store_true", required=True)
    promote.add_argument("--reason", required=True, help="why the gate is overridden (kept in the history)")
    promote.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="the registry: versions per role, the champion, the history")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list")
    listing.add_argument("--role", choices=ROLES)
    listing.add_argument("--json", action="store_true")
    show = models_sub.add_parser("show", help="one version's manifest and gate decision")
    show.add_argument("role", choices=ROLES)
    show.add_argument("version", type=_version, nargs="?", help="default: the champion")
    show.add_argument("--json", action="store_true")
    rollback = sub.add_parser("rollback", help="point the role (and its Ollama alias) back at an earlier version")
    rollback.add_argument("role", choices=ROLES)
    rollback.add_argument("--to", type=_version, metavar="VERSION", help="default: the previous champion")
    rollback.add_argument("--json", action="store_true")
    publish = sub.add_parser("publish", help="publish champions whose Ollama alias lags now (retry a pending one)")
    publish.add_argument("role", choices=ROLES, nargs="?")
    publish.add_argument("--json", action="store_true")


def _version(text: str) -> int:
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version such as v3") from None


def run_models(cfg: Config, args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[Config, argparse.Namespace], int]] = {
        "eval": cmd_eval, "promote": cmd_promote, "models": cmd_models, "rollback": cmd_rollback,
        "publish": cmd_publish}
    return handlers[args.command](cfg, args)


def cmd_eval(cfg: Config, args: argparse.Namespace) -> int:
    from iceburg_daemon.evaluate.plan import version_ref
    from iceburg_daemon.evaluate.stage import Evaluator
    from iceburg_daemon.evaluate.suites import install_starters

    install_starters(cfg.evals_dir)
    store = Store.open(cfg.db_path)
    try:
        row = store.run(args.id)
        if row is None:
            raise EvaluationError(f"no run {args.id!r} (see `iceburgd runs list`)")
        if row["status"] not in (RunStatus.TRAINED.value, RunStatus.PROMOTED.value, RunStatus.REJECTED.value,
                                 RunStatus.PUBLISHED.value, RunStatus.PUBLISH_PENDING.value,
                                 RunStatus.PUBLISH_FAILED.value):
            raise EvaluationError(f"{args.id} is {row['status']}: only a trained run can be evaluated")
        against = version_ref(store, row["role"], args.against) if args.against else None
        with store.transaction():  # evaluated again: the gate decides anew; a champion stays champion
            store.update_run(row["id"], eval_attempts=0)
        status = Evaluator(cfg, store).run_to_end(store.run(args.id), against=against,
                                                  on_progress=progress_printer(args.json))
        summary = json.loads(store.run(args.id)["evaluation"] or "null")
    finally:
        store.close()
    report = (cfg.runs_dir / args.id / "eval.md")
    emit(args.json, {"id": args.id, "status": status, "evaluation": summary},
          report.read_text() if report.exists() else f"{args.id}: {status}")
    return EXIT_OK


def cmd_promote(cfg: Config, args: argparse.Namespace) -> int:
    from iceburg_daemon.promote import force

    store = Store.open(cfg.db_path)
    try:
        version = force(store, args.id, args.reason, time.time())
        role = store.run(args.id)["role"]
    finally:
        store.close()
    published = _publish_now(cfg, role, args.json)
    emit(args.json, {"id": args.id, "role": role, "version": version, "forced": True, "published": published},
          f"{role}: v{version} is the champion (forced: {args.reason})" + _published_note(cfg, role, published))
    return EXIT_OK


def cmd_rollback(cfg: Config, args: argparse.Namespace) -> int:
    from iceburg_daemon.promote import rollback

    store = Store.open(cfg.db_path)
    try:
        old, new = rollback(store, args.role, args.to, time.time())
    finally:
        store.close()
    published = _publish_now(cfg, args.role, args.json)
    emit(args.json, {"role": args.role, "from": old, "to": new, "published": published},
          f"{args.role}: champion v{old} -> v{new}" + _published_note(cfg, args.role, published))
    return EXIT_OK if published is not False else EXIT_FAILURE


def cmd_publish(cfg: Config, args: argparse.Namespace) -> int:
    from iceburg_daemon.publish import PublishStage

    store = Store.open(cfg.db_path)
    try:
        with store.transaction():  # by hand: retry now, also what was not retried automatically
            for champ in store.champions():
                if args.role in (None, champ["role"]):
                    store.update_champion(champ["role"], publish_next=None)
        results = PublishStage(cfg, store).run_now(args.role, echo=None if args.json else print)
        rows = {c["role"]: dict(c) for c in store.champions()}
    finally:
        store.close()
    emit(args.json, {"published": [{"role": r, "ok": ok, "error": rows[r]["publish_error"]} for r, ok in results]},
          "\n".join(f"{r}: {'published' if ok else 'failed: ' + str(rows[r]['publish_error'])}" for r, ok in results)
          or "nothing to publish: every champion's alias already points at it")
    return EXIT_OK if all(ok for _, ok in results) else EXIT_FAILURE


def cmd_models(cfg: Config, args: argparse.Namespace) -> int:
    store = Store.open_readonly(cfg.db_path)
    try:
        if args.models_command == "list":
            roles = [args.role] if args.role else ROLES
            out = [model_view(cfg, store, role) for role in roles]
            out = [o for o in out if o["versions"] or o["champion"]]
            emit(args.json, {"roles": out}, "\n".join(_models_text(o) for o in out) or "no model versions yet")
            return EXIT_OK
        champ = store.champion(args.role)
        version = args.version or (champ["version"] if champ else None)
        row = store.version(args.role, version) if version else None
        if row is None:
            raise RegistryError(f"{args.role} has no version {'v' + str(version) if version else '(no champion)'}")
        manifest_path = cfg.models_dir / args.role / f"v{version}" / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        view = {**_version_view(row, champ), "manifest": manifest}
        emit(args.json, view, json.dumps(view, indent=2) if manifest is None else _show_text(view))
        return EXIT_OK
    finally:
        store.close()


def model_view(cfg: Config, store: Store, role: str) -> dict[str, Any]:
    champ = store.champion(role)
    return {"role": role, "alias": publish_name(cfg, role),
            "champion": None if champ is None else champ["version"],
            "alias_version": None if champ is None else champ["alias_version"],
            "publish_error": None if champ is None else champ["publish_error"],
            "versions": [_version_view(v, champ) for v in store.versions(role)],
            "history": [dict(p) for p in store.promotions(role)]}


def _version_view(v: Any, champ: Any) -> dict[str, Any]:
    gate = json.loads(v["gate"]) if v["gate"] else {}
    return {"version": v["version"], "run_id": v["run_id"], "decision": v["decision"],
            "champion": champ is not None and champ["version"] == v["version"],
            "reasons": gate.get("reasons", []), "published": v["published_at"] is not None,
            "pruned": v["pruned_at"] is not None, "created_at": v["created_at"], "path": v["path"]}


def _models_text(o: dict[str, Any]) -> str:
    lag = ""
    if o["champion"] is not None and o["alias_version"] != o["champion"]:
        lag = f"  (Ollama {o['alias']} -> {'v' + str(o['alias_version']) if o['alias_version'] else 'nothing'}"
        lag += f": {o['publish_error'] or 'publish pending'})"
    lines = [f"{o['role']}: champion {'v' + str(o['champion']) if o['champion'] else '-'}{lag}"]
    for v in o["versions"]:
        mark = "*" if v["champion"] else " "
        state = "pruned" if v["pruned"] else ("published" if v["published"] else "")
        lines.append(f" {mark} v{v['version']:<4} {v['decision']:<9} {', '.join(v['reasons']) or '-':<30} {state:<9}"
                     f" {v['run_id']}")
    return "\n".join(lines)


def _show_text(view: dict[str, Any]) -> str:
    m = view["manifest"]
    gate = m.get("gate") or {}
    lines = [f"{m['role']} v{m['version']}{' (champion)' if view['champion'] else ''}: {view['decision']}",
             f"  run {m['run_id']}, snapshot {m['dataset']['snapshot_id']} ({m['dataset']['train']} train /"
             f" {m['dataset']['eval']} eval records), base {m['base_model']['ref']}",
             f"  compared with {m['parent_champion'] or 'the base'}: "
             + ("passed" if gate.get("passed") else "rejected (" + ", ".join(gate.get("reasons", [])) + ")")]
    lines += [f"    {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in gate.get("checks", [])]
    return "\n".join(lines)


def _publish_now(cfg: Config, role: str, as_json: bool) -> bool | None:
    """Publish the role's champion at once (None: publishing is off or nothing was due)."""
    from iceburg_daemon.publish import PublishStage

    if not cfg.publish.enabled:
        return None
    store = Store.open(cfg.db_path)
    try:
        results = PublishStage(cfg, store).run_now(role, echo=None if as_json else lambda s: print(s, file=sys.stderr))
    finally:
        store.close()
    return results[0][1] if results else None


def _published_note(cfg: Config, role: str, published: bool | None) -> str:
    if published is None:
        return ""
    if published:
        return f"; Ollama {publish_name(cfg, role)} moved"
    return f"; Ollama {publish_name(cfg, role)} NOT moved yet (publish_pending: the daemon retries; see `models list`)"


def progress_printer(as_json: bool) -> Callable[[dict[str, Any]], None] | None:
    if as_json or not sys.stderr.isatty():
        return None
    last: list[str] = []

    def show(p: dict[str, Any]) -> None:
        line = f"evaluating: {p.get('phase', '')} {p.get('model', '')} {p.get('done', 0)}/{p.get('total', '?')}"
        if not last or last[0] != line:
            print("\r" + line.ljust(70), end="", file=sys.stderr, flush=True)
            last[:] = [line]

    return show


