"""`iceburgd`: argument parsing and printing only; the work lives in the stage modules.

Exit codes: 0 ok; 1 daemon not running or stale (status), a runtime failure, a foreground training run that
did not succeed or whose candidate was rejected, or a publish that failed; 2 invalid config or usage, or store
not initialised (status); 3 another iceburgd holds the data directory; 4 `service` on a system without
launchctl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from iceburg_daemon import ROLES, __version__
from iceburg_daemon.config import Config, load_config, to_dict
from iceburg_daemon.errors import AlreadyRunningError, ConfigError, IceburgDaemonError
from iceburg_daemon.logs import configure as configure_logs

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iceburgd", description="Continuous-training daemon for ICEBURG.")
    p.add_argument("--config", type=Path, help="config.toml (default: $ICEBURGD_CONFIG, else ./config.toml)")
    p.add_argument("--version", action="version", version=f"iceburgd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--once", action="store_true", help="work until inbox, sources and filter are idle, then exit")
    status = sub.add_parser("status", help="is the daemon running, what does the store hold")
    status.add_argument("--json", action="store_true")
    ingest = sub.add_parser("ingest", help="ingest files in place (not moved), with the inbox's rules")
    ingest.add_argument("paths", nargs="+", type=Path, help="files, or folders to search for *.jsonl/*.json/*.gz")
    ingest.add_argument("--json", action="store_true")
    backup = sub.add_parser("backup", help="a consistent copy of the store, taken while the daemon runs")
    backup.add_argument("dest", type=Path, help="the file to write (replaced if it exists)")
    backup.add_argument("--json", action="store_true")
    drop = sub.add_parser("drop", help="copy files into the inbox safely (temporary name, fsync, rename)")
    drop.add_argument("paths", nargs="+", type=Path)
    drop.add_argument("--json", action="store_true")
    _data_parser(sub)
    from iceburg_daemon import cli_logs, cli_models, cli_service, cli_train, cli_trigger

    cli_train.add_parsers(sub)
    cli_trigger.add_parsers(sub)
    cli_models.add_parsers(sub)
    cli_service.add_parsers(sub)
    cli_logs.add_parsers(sub)
    index = sub.add_parser("index", help="the filter's vector index (derived data)")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    rebuild = index_sub.add_parser("rebuild", help="re-embed every accepted record into a fresh index")
    rebuild.add_argument("--json", action="store_true")
    config = sub.add_parser("config", help="show or check the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved configuration")
    show.add_argument("--json", action="store_true")
    check = config_sub.add_parser("check", help="validate; exit 0 if valid, 2 if not")
    check.add_argument("--json", action="store_true")
    return p


def _data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="the truth filter's verdicts: stats, explain, export, refilter")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="verdicts per role and reason; records waiting for training")
    stats.add_argument("--role", choices=ROLES)
    stats.add_argument("--json", action="store_true")
    explain = data_sub.add_parser("explain", help="one record, every filter's verdict and score")
    explain.add_argument("id", type=int)
    explain.add_argument("--json", action="store_true")
    export = data_sub.add_parser("export", help="JSONL of a role's records to stdout (or --output)")
    export.add_argument("--role", choices=ROLES, required=True)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--accepted", action="store_const", dest="verdict", const="accept", default="accept")
    which.add_argument("--rejected", action="store_const", dest="verdict", const="reject")
    export.add_argument("--format", choices=("chat", "alpaca"), default="chat")
    export.add_argument("--output", type=Path)
    refilter = data_sub.add_parser("refilter", help="judge every record again with the current config")
    refilter.add_argument("--json", action="store_true")
    which_models = data_sub.add_parser("which-models", help="every model version whose training set held a record")
    which_models.add_argument("id", type=int)
    which_models.add_argument("--json", action="store_true")
    forget = data_sub.add_parser("forget", help="never train on a record again; list the versions to retrain")
    forget.add_argument("id", type=int)
    forget.add_argument("--reason", default="forgotten by the user")
    forget.add_argument("--json", action="store_true")


def _config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    if os.environ.get("ICEBURGD_CONFIG"):
        return Path(os.environ["ICEBURGD_CONFIG"])
    return Path("config.toml") if Path("config.toml").is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # the store, logs, runs, models and exports hold private data: 0600 files, 0700 folders
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(_config_path(args.config))
    except ConfigError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"valid": False, "problems": exc.problems}, indent=2))
        elif args.command == "run":  # one line in launchd's error log, so a restart loop says why at a glance
            print(f"iceburgd: invalid configuration: {'; '.join(exc.problems)}", file=sys.stderr)
        else:
            print(f"iceburgd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "run":
        configure_logs(level="warning", console=True)  # stderr only: stdout carries the command's output
    try:
        if args.command == "run":
            return _run(cfg, once=args.once)
        if args.command == "status":
            return _status(cfg, as_json=args.json)
        if args.command == "ingest":
            return _ingest(cfg, args.paths, as_json=args.json)
        if args.command == "backup":
            return _backup(cfg, args.dest, as_json=args.json)
        if args.command == "drop":
            return _drop(cfg, args.paths, as_json=args.json)
        if args.command == "index":
            from iceburg_daemon.cli_data import rebuild_index

            return rebuild_index(cfg, as_json=args.json)
        if args.command == "data":
            from iceburg_daemon.cli_data import run_data

            return run_data(cfg, args)
        if args.command == "trigger":
            from iceburg_daemon.cli_trigger import run_trigger

            return run_trigger(cfg, args)
        if args.command in ("eval", "promote", "models", "rollback", "publish"):
            from iceburg_daemon.cli_models import run_models

            return run_models(cfg, args)
        if args.command == "logs":
            from iceburg_daemon.cli_logs import run as run_logs

            return run_logs(cfg, args)
        if args.command == "service":
            from iceburg_daemon.cli_service import run as run_service

            return run_service(cfg, args)
        if args.command in ("train", "runs", "base"):
            from iceburg_daemon import cli_train

            return {"train": cli_train.run_train, "runs": cli_train.run_runs, "base": cli_train.run_base}[
                args.command](cfg, args)
        return _config(cfg, args.config_command, as_json=args.json)
    except AlreadyRunningError as exc:
        print(f"iceburgd: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except IceburgDaemonError as exc:
        print(f"iceburgd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _run(cfg: Config, *, once: bool) -> int:
    from iceburg_daemon.daemon import Daemon

    try:
        configure_logs(level=cfg.logs.level, log_dir=cfg.logs_dir, max_bytes=cfg.logs.max_bytes,
                       backups=cfg.logs.backups)
        return Daemon(cfg).run(once=once)
    except OSError as exc:  # an unusable data folder (a file, no permission, read-only): one line, no traceback
        where = exc.filename or cfg.data_dir
        print(f"iceburgd: cannot use {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _status(cfg: Config, *, as_json: bool) -> int:
    from iceburg_daemon.status import collect, exit_code, render

    now = time.time()
    snapshot = collect(cfg, now=now)
    if as_json:
        print(json.dumps(snapshot, indent=2, default=str))
    else:
        from rich.console import Console

        Console().print(render(snapshot, now))
    return exit_code(snapshot)


def _backup(cfg: Config, dest: Path, *, as_json: bool) -> int:
    from iceburg_daemon.store import Store

    store = Store.open_readonly(cfg.db_path)
    try:
        store.backup(dest.resolve())
    finally:
        store.close()
    copy = Store.open_readonly(dest.resolve())
    try:
        report = {"backup": str(dest.resolve()), "bytes": dest.stat().st_size, "records": copy.conn.execute(
            "SELECT COUNT(*) FROM records").fetchone()[0], "integrity_ok": copy.integrity_ok()}
    finally:
        copy.close()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['backup']}: {report['bytes']:,} bytes, {report['records']:,} records, integrity"
              f" {'ok' if report['integrity_ok'] else 'FAILED'}")
    return EXIT_OK if report["integrity_ok"] else EXIT_FAILURE


def _drop(cfg: Config, paths: list[Path], *, as_json: bool) -> int:
    from iceburg_daemon.inbox import drop

    report = []
    for path in paths:
        try:
            report.append({"path": str(path), "dropped": str(drop(path, cfg.inbox_dir))})
        except OSError as exc:
            report.append({"path": str(path), "error": exc.strerror or str(exc)})
    if as_json:
        print(json.dumps(report, indent=2))
    for r in report if not as_json else []:
        print(f"{r['path']} -> {r['dropped']}" if "dropped" in r else f"iceburgd: {r['path']}: {r['error']}",
              file=sys.stdout if "dropped" in r else sys.stderr)
    return EXIT_FAILURE if any("error" in r for r in report) else EXIT_OK


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith((".jsonl", ".json", ".gz"))))
        else:
            out.append(p)
    return out


def _ingest(cfg: Config, paths: list[Path], *, as_json: bool) -> int:
    from iceburg_daemon.lock import DataDirLock
    from iceburg_daemon.ingest import ingest_paths
    from iceburg_daemon.store import Store

    configure_logs(level="warning", log_dir=cfg.logs_dir, console=not as_json)
    lock = DataDirLock(cfg.lock_path).acquire()  # the daemon and this command never write at the same time
    store = Store.open(cfg.db_path)
    try:
        reports = ingest_paths(cfg, store, _expand(paths), progress=sys.stderr.isatty() and not as_json)
        judged = _filter_now(cfg, store) if cfg.quality.mode != "paused" else Counter()
    finally:
        store.close()
        lock.release()
    verdicts = {f"{role}/{verdict}" + (f"/{reason}" if reason else ""): n
                for (role, verdict, reason), n in sorted(judged.items())}
    if as_json:
        print(json.dumps({"files": reports, "verdicts": verdicts}, indent=2))
        return EXIT_OK
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in reports:
        for key, n in r["stored"].items():
            totals[key] += n
        reasons.update(r["quarantined"])
        note = f" [{r['outcome']}: {r.get('reason')}]" if r["outcome"] != "ingested" else ""
        print(f"{r['path']}: stored {sum(r['stored'].values())}, duplicates {r['duplicates']},"
              f" quarantined {sum(r['quarantined'].values())}{note}")
    print("stored by role/kind: " + (", ".join(f"{k} {n}" for k, n in sorted(totals.items())) or "none"))
    print("quarantined by reason: " + (", ".join(f"{k} {n}" for k, n in sorted(reasons.items())) or "none"))
    print("filter verdicts: " + (", ".join(f"{k} {n}" for k, n in verdicts.items()) or "none"))
    return EXIT_OK


def _filter_now(cfg: Config, store: Any) -> Counter[tuple[str, str, str]]:
    from iceburg_daemon.quality.chain import FilterChain

    chain = FilterChain(cfg, store, clock=time.time)
    try:
        return chain.run()
    finally:
        chain.close()


def _config(cfg: Config, command: str, *, as_json: bool) -> int:
    data = to_dict(cfg)
    if command == "check":
        if as_json:
            print(json.dumps({"valid": True, "config_path": data["config_path"]}))
        else:
            print(f"config ok: {data['config_path'] or '(defaults)'}")
        return EXIT_OK
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(_as_toml(data))
    return EXIT_OK


def _as_toml(data: dict[str, Any]) -> str:
    """The resolved config printed as TOML (plain values, tables and arrays of tables)."""
    lines = [f"# resolved from {data.get('config_path') or 'defaults'}"]
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        tables = {k: v for k, v in values.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        subtables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if k not in tables and k not in subtables)
        for key, sub in subtables.items():  # [role.train]
            lines.append(f"\n[{section}.{key}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in sub.items())
        for key, items in tables.items():  # arrays of tables last, or later keys would land inside them
            for item in items:
                lines.append(f"\n[[{section}.{key}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items())
    return "\n".join(lines)
