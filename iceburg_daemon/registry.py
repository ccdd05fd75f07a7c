"""The model registry on disk: models/<role>/v<N>/ with manifest.json, the adapter and the merged weights
(hard links into the run folder: never two copies), a Modelfile and a README model card. The store holds the
versions, the champion pointer and the history; these folders are what a person (or Ollama) reads."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from iceburg_daemon.chat_formats import chat_format
from iceburg_daemon.config import Config, publish_name
from iceburg_daemon.errors import PublishError
from iceburg_daemon.fsutil import fsync_path, fsync_tree
from iceburg_daemon.store import Store


def version_dir(cfg: Config, role: str, version: int) -> Path:
    return cfg.models_dir / role / f"v{version}"


def write_version(cfg: Config, store: Store, run: Any, version: int, *, gate: dict[str, Any],
                  report: dict[str, Any], parent: int | None, now: float) -> Path:
    """Lay out models/<role>/v<N>/ atomically (staging folder, then rename). A folder left by a crash before
    its store row was committed is replaced; a version evaluated again (`iceburgd eval`) gets its manifest and
    card rewritten the same way (old folder swapped out, then removed)."""
    role, run_dir = run["role"], Path(run["run_dir"])
    final = version_dir(cfg, role, version)
    if final.exists() and store.version(role, version) is None:
        shutil.rmtree(final)
    staging = final.with_name(f".v{version}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("adapter", "merged"):
        _link_tree(run_dir / name, staging / name)
    trained = json.loads((run_dir / "manifest.json").read_text())
    manifest = {
        "role": role, "version": version, "name": f"v{version}", "run_id": run["id"],
        "base_model": trained["base_model"], "merged": trained.get("merged"),
        "dataset": {"snapshot_id": run["snapshot_id"], "train": run["train_count"], "eval": run["eval_count"]},
        "config": json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else None,
        "params": trained.get("params"), "steps": trained.get("steps"), "final": trained.get("final"),
        "eval": {name: m for name, m in report.get("models", {}).items()}, "gate": gate,
        "parent_champion": None if parent is None else f"v{parent}",
        "times": {"trained_at": trained.get("finished_at"), "registered_at": now},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (staging / "Modelfile").write_text(modelfile(cfg, role, staging / "merged"))
    (staging / "README.md").write_text(model_card(manifest, publish_name(cfg, role)))
    fsync_tree(staging)
    if final.exists():
        old = final.with_name(f".v{version}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old)
    else:
        os.rename(staging, final)
    fsync_path(final.parent)  # the rename itself is durable before the store row names the folder
    return final


def modelfile(cfg: Config, role: str, merged: Path) -> str:
    """What `ollama create -f Modelfile` needs for this version (the daemon itself publishes over the API)."""
    try:
        fmt = chat_format(merged)
    except PublishError as exc:
        return f"# not publishable: {exc}\nFROM ./merged\n"
    lines = ["FROM ./merged", f'TEMPLATE """{fmt.template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in fmt.stop]
    system = system_prompt(role)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


SYSTEM_PROMPTS = {
    "surveyor": "You are ICEBURG Surveyor, a research agent specialized in gathering comprehensive information,"
                " exploring domains, and synthesizing evidence from multiple authoritative sources.",
    "dissident": "You are ICEBURG Dissident, an adversarial agent specialized in challenging assumptions, detecting"
                 " contradictions, and presenting alternative perspectives to ensure truth through conflict.",
    "synthesist": "You are ICEBURG Synthesist, a connection agent specialized in cross-domain synthesis,"
                  " integrating insights from multiple fields, and discovering unexpected connections.",
    "oracle": "You are ICEBURG Oracle, a truth-validation agent specialized in extracting fundamental principles,"
              " validating conclusions against evidence, and making final truth determinations with explicit"
              " confidence levels.",
}


def system_prompt(role: str) -> str:
    """The agent's own system prompt in ICEBURG (the starter suites and the fixtures use the same)."""
    return SYSTEM_PROMPTS.get(role, "")


def model_card(m: dict[str, Any], alias: str) -> str:
    gate = m["gate"] or {}
    checks = "\n".join(f"- {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}"
                       for c in gate.get("checks", []))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(m["times"]["registered_at"]))
    return (f"# {m['role']} {m['name']}\n\nRegistered {when} from run `{m['run_id']}` (dataset snapshot"
            f" `{m['dataset']['snapshot_id']}`: {m['dataset']['train']} training records, {m['dataset']['eval']}"
            f" held out).\n\nBase: `{m['base_model']['ref']}` (weights sha256 {m['base_model']['weights_sha256'][:16]}"
            f"...). Compared with: {m['parent_champion'] or 'the base model'}.\n\n"
            f"Gate: **{'passed' if gate.get('passed') else 'rejected: ' + ', '.join(gate.get('reasons', []))}**"
            f"\n\n{checks}\n\nServed by Ollama as `{alias}` while it is the champion. Trace its training"
            f" records with `iceburgd data which-models RECORD_ID`; undo with `iceburgd rollback {m['role']}`.\n")


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_dir():
            _link_tree(item, dst / item.name)
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copy2(item, dst / item.name)
