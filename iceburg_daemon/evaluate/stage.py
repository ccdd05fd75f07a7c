"""Supervise the evaluation child: a trained run -> evaluating -> (gate) -> promoted | rejected.

Resumable at every point: results the child wrote before a crash are harvested into the cache and not computed
again; a run left `evaluating` by a dead supervisor is evaluated again from the cache. An evaluation that keeps
failing ends `rejected` with reason eval_failed after MAX_EVAL_ATTEMPTS, never in an endless retry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from iceburg_daemon.config import Config
from iceburg_daemon.errors import EvaluationError
from iceburg_daemon.evaluate.plan import EvalPlan, ModelRef, harvest, make_plan, write_request
from iceburg_daemon.evaluate.report import evaluate_plan
from iceburg_daemon.logs import get_logger
from iceburg_daemon.promote import conclude
from iceburg_daemon.runner import ChildSupervisor, child_env, pid_alive, read_json
from iceburg_daemon.store import RunStatus, Store

log = get_logger("iceburgd.evaluate")
MAX_EVAL_ATTEMPTS = 3
CHILD_REASON = {3: "model_unavailable", 1: "eval_child_failed"}


@dataclass
class _Active:
    run_id: str
    plan: EvalPlan
    proc: subprocess.Popen[bytes] | None
    deadline: float
    stop_reason: str | None = None
    kill_at: float | None = None
    last_progress: dict[str, Any] = field(default_factory=dict)


class Evaluator(ChildSupervisor):
    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 on_decided: Callable[[str, str, bool], None] | None = None):
        self.cfg, self.store, self.clock = cfg, store, clock
        self.on_decided = on_decided  # (run id, role, promoted)
        self.active: _Active | None = None

    @property
    def busy(self) -> bool:
        return self.active is not None

    def next_run(self) -> Any:
        """The oldest trained run, or one left evaluating by a supervisor that died."""
        for row in self.store.runs_in([RunStatus.TRAINED.value, RunStatus.EVALUATING.value]):
            if row["status"] == RunStatus.EVALUATING.value and pid_alive(row["supervisor_pid"]) \
                    and row["supervisor_pid"] != os.getpid():
                continue  # a foreground `train` or `eval` in another process has it
            return row
        return None

    def start(self, row: Any, *, against: ModelRef | None = None) -> bool:
        """Plan, harvest what a killed child left, and start the child (or decide at once when all is cached)."""
        now = self.clock()
        if row["eval_attempts"] >= MAX_EVAL_ATTEMPTS:
            self._reject(row, "eval_failed", f"{row['eval_attempts']} evaluation attempts failed")
            return False
        try:
            plan = make_plan(self.cfg, self.store, row, against=against)
            harvest(plan, self.store, now)
            pending = write_request(self.cfg, plan, self.store)
        except EvaluationError as exc:
            self._reject(row, "eval_error", str(exc))
            return False
        with self.store.transaction():
            if not self.store.claim_evaluation(row["id"], seen=row, pid=os.getpid(),
                                               attempts=row["eval_attempts"] + 1):
                log.info("eval_claimed_elsewhere", run=row["id"])  # the daemon or an `iceburgd eval` has it
                return False
            self.store.add_event("eval_started", row["id"], now, baseline=plan.baseline.name, pending=pending)
        log.info("eval_started", run=row["id"], baseline=plan.baseline.name, pending=pending)
        proc = None
        if pending:
            logf = open(plan.eval_dir / "child.log", "ab")  # noqa: SIM115 - handed to the child, closed right after
            try:
                proc = subprocess.Popen([sys.executable, "-m", "iceburg_daemon.training", "--eval-dir",
                                         str(plan.eval_dir)], stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=False,
                                        env=child_env() | {"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
            finally:
                logf.close()
        self.active = _Active(row["id"], plan, proc, time.monotonic() + self.cfg.eval.timeout_minutes * 60)
        return True

    def poll(self) -> str | None:
        """Check the child once; returns the run's new status when the evaluation ended."""
        a = self.active
        if a is None:
            return None
        if a.proc is not None:
            progress = read_json(a.plan.eval_dir / "progress.json")
            if progress and progress != a.last_progress:
                a.last_progress = progress
                row = self.store.run(a.run_id)
                training = json.loads(row["progress"]) if row["progress"] else {}  # kept: steps, loss, device
                with self.store.transaction():
                    self.store.update_run(a.run_id, progress={**training, "phase": "evaluating", "eval": progress})
            if a.stop_reason is None and time.monotonic() > a.deadline:
                self.stop("timeout")
            self.kill_overdue()
            if a.proc.poll() is None:
                return None
        return self._finish(a, 0 if a.proc is None else a.proc.returncode)

    def run_to_end(self, row: Any, *, against: ModelRef | None = None,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        """Foreground: start and wait (Ctrl-C stops the child; the run goes back to `trained`)."""
        if not self.start(row, against=against):
            now = self.store.run(row["id"])
            if now["status"] == RunStatus.EVALUATING.value:
                raise EvaluationError(f"{row['id']} is being evaluated by pid {now['supervisor_pid']}")
            return str(now["status"])
        while True:
            try:
                status = self.poll()
                if status is not None:
                    return status
                if on_progress and self.active is not None:
                    on_progress(self.active.last_progress)
                time.sleep(0.2)
            except KeyboardInterrupt:
                self.stop("shutdown")

    def _finish(self, a: _Active, rc: int) -> str:
        self.active = None
        now = self.clock()
        harvest(a.plan, self.store, now)
        row = self.store.run(a.run_id)
        if rc == 0:
            decision, report = evaluate_plan(self.cfg, a.plan, self.store)
            status = conclude(self.cfg, self.store, row, decision, report, a.plan, now)
            log.info("eval_decided", run=a.run_id, passed=decision.passed, reasons=decision.reasons)
            if self.on_decided:
                self.on_decided(a.run_id, row["role"], decision.passed)
            return status
        error = read_json(a.plan.eval_dir / "error.json") or {}
        why = a.stop_reason or error.get("reason") or CHILD_REASON.get(rc, f"exit code {rc}")
        # Back to trained: evaluated again later, from the cache. A shutdown does not use an attempt up.
        attempts = row["eval_attempts"] - (1 if a.stop_reason == "shutdown" else 0)
        with self.store.transaction():
            self.store.update_run(a.run_id, status=RunStatus.TRAINED.value, supervisor_pid=None, eval_attempts=attempts,
                                  detail=f"evaluation stopped: {why}" + (f": {error['message']}" if error else ""))
            self.store.add_event("eval_stopped", a.run_id, now, reason=why, exit_code=rc)
        log.warning("eval_stopped", run=a.run_id, reason=why, exit_code=rc)
        return RunStatus.TRAINED.value

    def _reject(self, row: Any, reason: str, detail: str) -> None:
        now = self.clock()
        with self.store.transaction():
            self.store.update_run(row["id"], status=RunStatus.REJECTED.value, reason=reason, detail=detail,
                                  supervisor_pid=None)
            self.store.add_event("run_rejected", row["id"], now, reason=reason)
        log.warning("eval_rejected", run=row["id"], reason=reason, detail=detail)

