"""The gate's decision -> a registered version, the champion pointer moved (or not), the history appended, and
retention. Also the two manual moves: `promote --force` and `rollback`."""

from __future__ import annotations

import json
import shutil
from typing import Any

from iceburg_daemon.config import Config
from iceburg_daemon.errors import RegistryError
from iceburg_daemon.evaluate.gate import GateDecision
from iceburg_daemon.logs import get_logger
from iceburg_daemon.registry import write_version
from iceburg_daemon.store import RunStatus, Store

log = get_logger("iceburgd.promote")


def conclude(cfg: Config, store: Store, run: Any, decision: GateDecision, report: dict[str, Any], plan: Any,
             now: float) -> str:
    """evaluating -> promoted | rejected. The version folder is laid out first, then one transaction records the
    version, the run's status and (when it passed) the new champion with its history row."""
    role = run["role"]
    existing = store.version_of_run(run["id"])  # re-evaluated (`iceburgd eval`): same version, new decision
    version = existing["version"] if existing else store.next_version(role)
    parent = plan.baseline.version
    gate = decision.to_dict()
    path = write_version(cfg, store, run, version, gate=gate, report=report, parent=parent, now=now)
    status = RunStatus.PROMOTED if decision.passed else RunStatus.REJECTED
    champ = store.champion(role)
    if decision.passed and champ is not None and champ["version"] == version == champ["alias_version"]:
        status = RunStatus.PUBLISHED  # evaluated again while it serves: nothing left to publish
    summary = {"version": version, "baseline": plan.baseline.name, "passed": decision.passed,
               "reasons": decision.reasons, "items": decision.items,
               "candidate": report["models"][plan.candidate.name],
               "baseline_scores": report["models"][plan.baseline.name]}
    with store.transaction():
        if existing is None:
            store.add_version({"role": role, "version": version, "run_id": run["id"],
                               "decision": "promoted" if decision.passed else "rejected", "path": str(path),
                               "weights": plan.candidate.weights, "parent": parent, "gate": json.dumps(gate),
                               "created_at": now})
        else:
            store.update_version(role, version, gate=json.dumps(gate),
                                 decision="promoted" if decision.passed else existing["decision"])
        store.update_run(run["id"], status=status.value, reason=None if decision.passed else decision.reason,
                         detail=None, evaluation=json.dumps(summary), supervisor_pid=None)
        store.add_event(f"run_{status.value}", run["id"], now, version=version, reasons=decision.reasons)
        if decision.passed and not _is_champion(store, role, version):
            store.set_champion(role, version, action="promote", reason=_why(decision, plan), forced=False, now=now)
    log.info(f"run_{status.value}", run=run["id"], version=version, reasons=decision.reasons)
    prune(cfg, store, role, now)
    return status.value


def force(store: Store, run_id: str, reason: str, now: float) -> int:
    """`iceburgd promote RUN_ID --force --reason`: a rejected (registered) candidate becomes champion anyway."""
    if not reason.strip():
        raise RegistryError("--force needs --reason: the history records why the gate was overridden")
    version = store.version_of_run(run_id)
    if version is None:
        raise RegistryError(f"{run_id} has no registered version (it is not evaluated yet: `iceburgd eval {run_id}`)")
    if version["pruned_at"] is not None:
        raise RegistryError(f"{run_id} (v{version['version']}) was pruned by retention: its files are gone")
    role = version["role"]
    if _is_champion(store, role, version["version"]):
        raise RegistryError(f"v{version['version']} is already the {role} champion")
    with store.transaction():
        store.update_version(role, version["version"], decision="forced")
        store.set_champion(role, version["version"], action="force", reason=reason, forced=True, now=now)
        store.update_run(run_id, status=RunStatus.PROMOTED.value, reason="forced", detail=reason)
        store.add_event("run_promoted", run_id, now, version=version["version"], forced=True, why=reason)
    return int(version["version"])


def rollback(store: Store, role: str, to: int | None, now: float) -> tuple[int, int]:
    """Move the champion back: to `to`, or to the one before the current. Returns (from, to)."""
    champ = store.champion(role)
    if champ is None:
        raise RegistryError(f"{role} has no champion to roll back")
    if to is None:
        moves = [p for p in store.promotions(role) if p["to_version"] == champ["version"]]
        to = moves[-1]["from_version"] if moves else None
        if to is None:
            raise RegistryError(f"{role} v{champ['version']} is the first champion: nothing to roll back to"
                                " (ICEBURG can be pointed back at its original model)")
    target = store.version(role, to)
    if target is None or target["pruned_at"] is not None:
        raise RegistryError(f"{role} v{to} is {'unknown' if target is None else 'pruned'}: see `iceburgd models list`")
    if to == champ["version"]:
        raise RegistryError(f"v{to} is already the {role} champion")
    with store.transaction():
        store.set_champion(role, to, action="rollback", reason=f"rollback from v{champ['version']}", forced=False,
                           now=now)
        store.add_event("rollback", role, now, from_version=champ["version"], to_version=to)
    return int(champ["version"]), int(to)


def keep_set(cfg: Config, store: Store, role: str) -> set[int]:
    """Versions retention keeps: the champion, every version the history can roll back to from it (the previous
    champions), and the newest keep_candidates of the rest."""
    champ = store.champion(role)
    keep: set[int] = set()
    if champ is not None:
        keep.add(champ["version"])
        moves = store.promotions(role)
        previous = [p["from_version"] for p in moves if p["to_version"] == champ["version"] and p["from_version"]]
        keep.update(previous[-1:])
    others = [v["version"] for v in store.versions(role) if v["version"] not in keep and v["pruned_at"] is None]
    keep.update(sorted(others)[-cfg.registry.keep_candidates:] if cfg.registry.keep_candidates else [])
    return keep


def prune(cfg: Config, store: Store, role: str, now: float) -> list[int]:
    keep = keep_set(cfg, store, role)
    pruned = []
    for v in store.versions(role):
        if v["pruned_at"] is None and v["version"] not in keep:
            # the folder goes; its hard-linked weights stay with the run folder until that goes too
            shutil.rmtree(cfg.models_dir / role / f"v{v['version']}", ignore_errors=True)
            with store.transaction():
                store.update_version(role, v["version"], pruned_at=now)
                store.add_event("version_pruned", role, now, version=v["version"])
            pruned.append(v["version"])
    return pruned


def _is_champion(store: Store, role: str, version: int) -> bool:
    champ = store.champion(role)
    return champ is not None and champ["version"] == version


def _why(decision: GateDecision, plan: Any) -> str:
    primary = next((c for c in decision.checks if c.name == "improvement"), None)
    return f"gate passed against the {plan.baseline.name}" + (f": {primary.detail}" if primary else "")
