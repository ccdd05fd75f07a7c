"""Training runs from the daemon's side (torch-free): queue a run (freeze its dataset, write run.json), start
the child `python -m iceburg_daemon.training`, watch it (progress, wall-clock limit, cancel requests, shutdown),
and map its end to a run status. The child stays in our process group so launchd reaps it with us.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from iceburg_daemon.config import Config, to_dict
from iceburg_daemon.config_training import params_dict
from iceburg_daemon import ROLES
from iceburg_daemon.errors import TrainingError
from iceburg_daemon.fsutil import fsync_path, fsync_tree
from iceburg_daemon.logs import get_logger
from iceburg_daemon.snapshot import freeze
from iceburg_daemon.store import RunStatus, Store
from iceburg_daemon.trigger.clock import now_instant
from iceburg_daemon.trigger.state import on_run_ended, on_run_started

log = get_logger("iceburgd.runner")
CHILD_EXIT = {0: RunStatus.TRAINED, 75: RunStatus.INTERRUPTED}
CHILD_REASON = {3: "base_unavailable", 4: "no_trainable_examples"}


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_base(cfg: Config, ref: str) -> str:
    """A name under models/base/, else a path (absolute, ~, ./), else a Hugging Face id for the child to find."""
    named = cfg.base_models_dir / ref
    if named.is_dir():
        return str(named)
    path = Path(ref).expanduser()
    if path.is_absolute() or ref.startswith((".", "~")):
        return str(path if path.is_absolute() else (cfg.config_path.parent if cfg.config_path else Path.cwd()) / path)
    return ref


def queue_run(cfg: Config, store: Store, role: str, *, reason: str, now: float, trigger: str = "manual",
              urgent: bool = False, on_queued: Callable[[str], None] | None = None,
              on_progress: Callable[[], object] = lambda: None) -> tuple[str, bool]:
    """(run id, created). A role has at most one active run: asking again returns the one already there.
    `on_queued(run_id)` runs inside the transaction that queues it."""
    active = store.active_run(role)
    if active is not None:
        return active["id"], False
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
    staging = cfg.runs_dir / f".staging-{role}-{os.getpid()}"
    snap = freeze(store, role, cfg.training.eval_percent, staging, now, on_progress)
    if snap.train_count == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(f"role {role!r} has no accepted training records outside the eval split"
                            " (see `iceburgd data stats`)")
    run_id = f"{role}-{stamp}-{snap.snapshot_id[:8]}"
    run_dir = cfg.runs_dir / run_id
    params = cfg.role(role).train
    spec = {"run_id": run_id, "role": role, "base_model": resolve_base(cfg, params.base_model),
            "params": params_dict(params), "training": to_dict(cfg)["training"]}
    (staging / "run.json").write_text(json.dumps(spec, indent=2))
    (staging / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    with store.transaction():
        store.add_run({"id": run_id, "role": role, "status": RunStatus.QUEUED.value, "run_dir": str(run_dir),
                       "snapshot_id": snap.snapshot_id, "train_count": snap.train_count,
                       "eval_count": snap.eval_count, "reason": reason, "created_at": now, "trigger": trigger,
                       "urgent": int(urgent)})
        store.hold_out(snap.eval_ids, run_id)
        store.add_event("run_queued", run_id, now, role=role, reason=reason, train=snap.train_count)
        if on_queued is not None:
            on_queued(run_id)
        fsync_tree(staging)  # the dataset snapshot is on the disk before the rename publishes it
        os.rename(staging, run_dir)  # then the row commits: a crash in between leaves a folder no row names,
        fsync_path(run_dir.parent)   # which `remove_orphan_run_dirs` clears at the next start
    return run_id, True


def remove_orphan_run_dirs(cfg: Config, store: Store) -> list[str]:
    """Run folders (and staging folders) that no run row names: left by a crash between the rename and the
    commit in queue_run. Only names this daemon creates, older than a minute (a `train` in another process may
    be between its rename and its commit right now), and staging folders of dead processes are touched."""
    if not cfg.runs_dir.is_dir():
        return []
    removed = []
    for path in cfg.runs_dir.iterdir():
        if not path.is_dir() or time.time() - path.stat().st_mtime < 60:
            continue
        if path.name.startswith(".staging-"):
            pid = path.name.rsplit("-", 1)[-1]
            orphan = pid.isdigit() and not pid_alive(int(pid))
        else:
            orphan = path.name.split("-", 1)[0] in ROLES and store.run(path.name) is None
        if orphan:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def child_command(cfg: Config, run_dir: Path, python: str = sys.executable) -> list[str]:
    """The child's command line; multi-GPU launchers wrap the same module unchanged."""
    module = ["-m", "iceburg_daemon.training", "--run-dir", str(run_dir)]
    n = str(cfg.training.num_processes)
    if cfg.training.launcher == "accelerate":
        return [python, "-m", "accelerate.commands.launch", "--num_processes", n, *module]
    if cfg.training.launcher == "torchrun":
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *module]
    return [python, *module]


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "1.0")  # stay inside macOS's recommended GPU working set
    env.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # an op missing on MPS runs on the CPU, not failing the run
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env


@dataclass
class _Active:
    run_id: str
    run_dir: Path
    proc: subprocess.Popen[bytes]
    deadline: float
    stop_reason: str | None = None  # cancel | timeout | shutdown | paused:<cause>: why we signalled it
    kill_at: float | None = None
    last_progress: dict[str, Any] = field(default_factory=dict)


class ChildSupervisor:
    """Stopping a supervised child, shared by the training and the evaluation supervisors: SIGTERM first (the
    child saves what it has), SIGKILL once `stop_grace_seconds` have passed."""

    cfg: Config
    active: Any  # has run_id, proc (None: no child), stop_reason, kill_at

    def poll(self) -> str | None:
        raise NotImplementedError

    def stop(self, reason: str) -> None:
        a = self.active
        if a is None or a.stop_reason is not None:
            return
        a.stop_reason = reason
        a.kill_at = time.monotonic() + self.cfg.training.stop_grace_seconds
        log.info("child_stopping", run=a.run_id, reason=reason)
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGTERM)

    def kill_overdue(self) -> None:
        a = self.active
        if a is not None and a.kill_at is not None and time.monotonic() > a.kill_at and a.proc is not None \
                and a.proc.poll() is None:
            a.proc.kill()  # it had its grace period

    def shutdown(self) -> None:
        """Daemon stopping: the child saves its work; the run resumes at the next start."""
        if self.active is None:
            return
        self.stop("shutdown")
        while self.poll() is None:
            time.sleep(0.1)


class Runner(ChildSupervisor):
    """Runs one training child at a time for a supervisor (the daemon, or `train --foreground`)."""

    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 command: Callable[[Path], Sequence[str]] | None = None, on_finish: Callable[..., None] | None = None):
        self.cfg, self.store, self.clock = cfg, store, clock
        self.command = command or (lambda run_dir: child_command(cfg, run_dir))
        self.on_finish = on_finish
        self.active: _Active | None = None

    @property
    def busy(self) -> bool:
        return self.active is not None

    def recover(self) -> None:
        """At start-up: a run left `running` by a supervisor that died is interrupted (its checkpoint resumes);
        a child it left behind is stopped first so two never write one run folder."""
        for row in self.store.runs_in([RunStatus.RUNNING.value]):
            if pid_alive(row["supervisor_pid"]) and row["supervisor_pid"] != os.getpid():
                continue  # a foreground `train` still watches it
            if pid_alive(row["child_pid"]) and _is_child_of(row["child_pid"], row["run_dir"]):
                _stop_orphan(row["child_pid"], self.cfg.training.stop_grace_seconds)
            with self.store.transaction():
                self.store.update_run(row["id"], status=RunStatus.INTERRUPTED.value, detail="supervisor died",
                                      child_pid=None)
                self.store.add_event("run_interrupted", row["id"], self.clock(), why="supervisor died")
            log.info("run_recovered", run=row["id"])

    def waiting_runs(self) -> list[Any]:
        """Queued and interrupted runs that may still start, oldest first (cancelled and worn-out ones end here)."""
        out = []
        for row in self.store.runs_in([RunStatus.QUEUED.value, RunStatus.INTERRUPTED.value]):
            if row["cancel_requested"]:
                self._end(row["id"], RunStatus.CANCELLED, "cancelled before it ran", None)
            elif row["attempts"] >= self.cfg.training.max_attempts:
                self._end(row["id"], RunStatus.FAILED, "too_many_attempts",
                          f"{row['attempts']} starts (training.max_attempts)")
            else:
                out.append(row)
        return out

    def next_run(self) -> Any:
        runs = self.waiting_runs()
        return runs[0] if runs else None

    def start(self, row: Any) -> bool:
        """Claim the run and start its child; False when another supervisor claimed it first."""
        run_dir = Path(row["run_dir"])
        now = self.clock()
        with self.store.transaction():
            if not self.store.claim_run(row["id"], supervisor_pid=os.getpid(), now=now):
                return False
            on_run_started(self.store, row["role"], now_instant(now))
        (run_dir / "error.json").unlink(missing_ok=True)
        logf = open(run_dir / "child.log", "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            proc = subprocess.Popen(list(self.command(run_dir)), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=run_dir,
                                    env=child_env() | {"HF_HUB_DISABLE_PROGRESS_BARS": "1"})  # a log file, not a tty
        except OSError as exc:
            self._end(row["id"], RunStatus.FAILED, "child_not_started", str(exc))
            return False
        finally:
            logf.close()
        with self.store.transaction():
            self.store.update_run(row["id"], child_pid=proc.pid)
            self.store.add_event("run_started", row["id"], now, attempt=row["attempts"] + 1, pid=proc.pid)
        self.active = _Active(row["id"], run_dir, proc, time.monotonic() + self.cfg.training.timeout_minutes * 60)
        log.info("run_started", run=row["id"], role=row["role"], pid=proc.pid, attempt=row["attempts"] + 1)
        return True

    def poll(self) -> str | None:
        """Check the child once: progress, cancel, deadline, exit. Returns the final status when it ended."""
        a = self.active
        if a is None:
            return None
        progress = read_json(a.run_dir / "progress.json")
        if progress and progress != a.last_progress:
            a.last_progress = progress
            with self.store.transaction():
                self.store.update_run(a.run_id, progress=progress)
        row = self.store.run(a.run_id)
        if a.stop_reason is None and row is not None and row["cancel_requested"]:
            self.stop("cancel")
        elif a.stop_reason is None and time.monotonic() > a.deadline:
            self.stop("timeout")
        self.kill_overdue()
        rc = a.proc.poll()
        if rc is None:
            return None
        return self._finish(a, rc).value

    def _finish(self, a: _Active, rc: int) -> RunStatus:
        self.active = None
        error = read_json(a.run_dir / "error.json") or {}
        if a.stop_reason == "cancel":
            status, reason = RunStatus.CANCELLED, "cancelled"
        elif a.stop_reason == "timeout":
            status, reason = RunStatus.TIMED_OUT, f"over {self.cfg.training.timeout_minutes} minutes"
        elif rc in CHILD_EXIT:
            status = CHILD_EXIT[rc]
            reason = a.stop_reason if status == RunStatus.INTERRUPTED else None  # shutdown | paused:<cause>
        elif rc < 0 and (a.stop_reason in (None, "shutdown") or a.stop_reason.startswith("paused:")):
            # Killed (OOM killer, kill -9, or past the shutdown grace): resume from the last checkpoint,
            # attempts permitting.
            status, reason = RunStatus.INTERRUPTED, f"killed by {signal.Signals(-rc).name}"
            if rc == -signal.SIGKILL and a.stop_reason is None:  # nobody here sent it: likely the OOM killer
                reason += " (out of memory? lower micro_batch or max_length, or set gradient_checkpointing)"
        else:
            status, reason = RunStatus.FAILED, error.get("reason") or CHILD_REASON.get(rc, f"exit code {rc}")
        detail = error.get("message") if status == RunStatus.FAILED else None
        if status == RunStatus.FAILED and not detail:
            detail = _tail(a.run_dir / "child.log")
        # A checkpointed stop (exit 75) is not a failed attempt: sleep, restarts and shutdowns never use them up;
        # nor is a child we had to SIGKILL after its grace because we were shutting down or pausing it.
        ours = a.stop_reason is not None and (a.stop_reason == "shutdown" or a.stop_reason.startswith("paused:"))
        self._end(a.run_id, status, reason, detail, refund_attempt=rc == 75 or (rc < 0 and ours))
        return status

    def _end(self, run_id: str, status: RunStatus, reason: str | None, detail: str | None, *,
             refund_attempt: bool = False) -> None:
        now = self.clock()
        row = self.store.run(run_id)
        manifest = read_json(Path(row["run_dir"]) / "manifest.json") if status == RunStatus.TRAINED else None
        extra: dict[str, Any] = {"metrics": manifest["final"]} if manifest else {}
        if refund_attempt:
            extra["attempts"] = max(0, row["attempts"] - 1)
        with self.store.transaction():
            self.store.update_run(run_id, status=status.value, reason=reason, detail=detail, child_pid=None,
                                  finished_at=None if status == RunStatus.INTERRUPTED else now, **extra)
            self.store.add_event(f"run_{status.value}", run_id, now, reason=reason)
            if status != RunStatus.INTERRUPTED:
                on_run_ended(self.store, row, status.value, now_instant(now), self.cfg.role(row["role"]).trigger)
        log.info("run_finished", run=run_id, status=status.value, reason=reason)
        if self.on_finish:
            self.on_finish(run_id=run_id, role=row["role"], status=status.value)


def request_cancel(store: Store, run_id: str, now: float) -> str:
    """Mark a run for cancellation; a run nobody supervises is cancelled at once. Returns its status after."""
    row = store.run(run_id)
    if row is None:
        raise TrainingError(f"no run {run_id!r} (see `iceburgd runs list`)")
    if row["status"] not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.INTERRUPTED.value):
        return str(row["status"])
    with store.transaction():
        store.update_run(run_id, cancel_requested=1)
        unsupervised = row["status"] != RunStatus.RUNNING.value or not pid_alive(row["supervisor_pid"])
        if unsupervised:
            store.update_run(run_id, status=RunStatus.CANCELLED.value, reason="cancelled", finished_at=now)
            store.add_event("run_cancelled", run_id, now)
    return RunStatus.CANCELLED.value if unsupervised else "cancelling"


def _is_child_of(pid: int, run_dir: str) -> bool:
    """Guard against pid reuse: the process's command line names the run folder."""
    out = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False)
    return run_dir in out.stdout


def _stop_orphan(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after the grace; a child that is already gone (it may exit at any moment) is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be ours
        except ChildProcessError:
            pass
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int = 2000) -> str | None:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return None
