"""`iceburgd data ...`: printing of the filter's verdicts; the queries live in dataset_view and the store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from iceburg_daemon.config import Config
from iceburg_daemon.store import Store


def run_data(cfg: Config, args: argparse.Namespace) -> int:
    from iceburg_daemon import dataset_view

    if args.data_command == "refilter":
        return _refilter(cfg, as_json=args.json)
    if args.data_command in ("which-models", "forget"):
        return _lineage(cfg, args)
    store = Store.open_readonly(cfg.db_path)
    try:
        if args.data_command == "stats":
            result = dataset_view.stats(store, args.role, cfg.training.eval_percent)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                _print_stats(result)
            return 0
        if args.data_command == "explain":
            found = dataset_view.explain(store, args.id)
            if found is None:
                print(f"iceburgd: no record {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(found, indent=2, ensure_ascii=False) if args.json else _explain_text(found))
            return 0
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
        try:
            n = 0
            for item in dataset_view.export(store, args.role, args.verdict, args.format):
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
                n += 1
        finally:
            if args.output:
                out.close()
        print(f"exported {n} records", file=sys.stderr)
        return 0
    finally:
        store.close()


def _lineage(cfg: Config, args: argparse.Namespace) -> int:
    """which-models: the versions whose training set held the record. forget: it is never trained on again
    (left out of every later snapshot and new-record count) and the versions to retrain are listed."""
    forget = args.data_command == "forget"
    store = Store.open(cfg.db_path) if forget else Store.open_readonly(cfg.db_path)
    try:
        record = store.conn.execute("SELECT id, role, kind FROM records WHERE id = ?", (args.id,)).fetchone()
        if record is None:
            print(f"iceburgd: no record {args.id}", file=sys.stderr)
            return 1
        versions = [{"role": v["role"], "version": v["version"], "run_id": v["run_id"], "decision": v["decision"],
                     "champion": (c := store.champion(v["role"])) is not None and c["version"] == v["version"],
                     "pruned": v["pruned_at"] is not None} for v in store.versions_trained_on(args.id)]
        newly = False
        if forget:
            with store.transaction():
                newly = store.forget_record(args.id, args.reason, time.time())
                store.add_event("record_forgotten", str(args.id), time.time(), reason=args.reason,
                                versions=[f"{v['role']}:v{v['version']}" for v in versions])
    finally:
        store.close()
    result = {"record": args.id, "role": record["role"], "versions": versions}
    if forget:
        result.update(forgotten=True, newly=newly, retrain=sorted({v["role"] for v in versions if not v["pruned"]}))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    names = [f"{v['role']} v{v['version']}" + (" (champion)" if v["champion"] else "") + (" [pruned]" if v["pruned"]
             else "") for v in versions]
    print(f"record {args.id} ({record['role']}/{record['kind']}) was trained on by: "
          + (", ".join(names) or "no model"))
    if forget:
        print(f"record {args.id} will never be trained on again" + ("" if newly else " (it already was forgotten)"))
        if result["retrain"]:
            roles = " ".join(f"`iceburgd train --role {r}`" for r in result["retrain"])
            print(f"retrain to drop it from the served models: {roles} (the next run leaves it out)")
    return 0


def _refilter(cfg: Config, *, as_json: bool) -> int:
    from iceburg_daemon.lock import DataDirLock
    from iceburg_daemon.quality.chain import FilterChain

    lock = DataDirLock(cfg.lock_path).acquire()
    store = Store.open(cfg.db_path)
    try:
        with store.transaction():
            generation = store.start_new_generation()
            store.add_event("refilter", "filter", time.time(), generation=generation)
        chain = FilterChain(cfg, store, clock=time.time)
        if chain.semantic is not None:
            chain.semantic.rebuild()  # no accepted record is left, so this empties the vector index
        total = store.unfiltered_count()
        try:
            judged = chain.run(progress=_progress(total, enabled=not as_json))
        finally:
            chain.close()  # workers stopped, the vector index saved
    finally:
        store.close()
        lock.release()
    accepted = sum(n for (_, verdict, _), n in judged.items() if verdict == "accept")
    result = {"generation": generation, "judged": sum(judged.values()), "accepted": accepted}
    print(json.dumps(result) if as_json else f"generation {generation}: judged {result['judged']},"
          f" accepted {accepted}, rejected {result['judged'] - accepted}")
    return 0


def rebuild_index(cfg: Config, *, as_json: bool) -> int:
    from iceburg_daemon.lock import DataDirLock
    from iceburg_daemon.quality.chain import FilterChain

    lock = DataDirLock(cfg.lock_path).acquire()
    store = Store.open(cfg.db_path)
    try:
        semantic = FilterChain(cfg, store, clock=time.time).semantic
        if semantic is None:
            print("iceburgd: no vector index: set [embedding] provider (and [quality] semantic = true)",
                  file=sys.stderr)
            return 2
        count = semantic.rebuild()
    finally:
        store.close()
        lock.release()
    print(json.dumps({"indexed": count}) if as_json else f"indexed {count} accepted records")
    return 0


def _progress(total: int, *, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    return lambda done: print(f"\rjudged {done}/{total}", end="" if done < total else "\n", file=sys.stderr)


def _print_stats(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"verdicts (filter generation {result['generation']}; {result['unfiltered']} unfiltered)")
    for col in ("role", "accepted", "rejected", "waiting for training", "rejected by reason"):
        table.add_column(col)
    for role, e in sorted(result["roles"].items()):
        reasons = ", ".join(f"{k} {v}" for k, v in e["reasons"].items())
        table.add_row(role, str(e["accepted"]), str(e["rejected"]), str(e["waiting_for_training"]), reasons)
    Console().print(table)


def _explain_text(found: dict[str, Any]) -> str:
    v = found["verdict"] or {}
    lines = [f"record {found['id']}  role {found['role']}  kind {found['kind']}  from {found['source_ref']}",
             f"verdict: {v.get('verdict', 'not yet judged')}"
             + (f"  ({v['filter']}: {v['reason']}: {v['detail']})" if v.get("reason") else ""),
             "scores: " + json.dumps(v.get("scores", {}), sort_keys=True)]
    if found["duplicate_of"]:
        d = found["duplicate_of"]
        lines.append(f"duplicates record {d['id']} ({d['source_ref']}): {d['answer'][:200]!r}")
    if len(found["history"]) > 1:
        lines.append(f"history: {len(found['history'])} verdicts: "
                     + ", ".join(f"g{h['generation']} {h['verdict']} {h['reason'] or ''}" for h in found["history"]))
    for m in found["record"].get("messages") or []:
        lines.append(f"[{m['role']}] {m['content'][:300]}")
    return "\n".join(lines)
