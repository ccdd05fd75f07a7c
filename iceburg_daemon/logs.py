"""structlog setup: JSON lines to data/logs/iceburgd.log (rotated), readable lines on a terminal.

Events carry stable keys (event, file, source, reason, counts); record contents are never logged.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import structlog.tracebacks

from iceburg_daemon.fsutil import is_disk_full

LOG_FILE = "iceburgd.log"
# Tracebacks without local variables: locals hold record contents (secrets, a 600-level nested poison line)
NO_LOCALS = structlog.tracebacks.ExceptionDictTransformer(show_locals=False, max_frames=20)


def configure(*, level: str = "info", log_dir: Path | None = None, max_bytes: int = 10_485_760, backups: int = 5,
              console: bool = True) -> None:
    """Idempotent: replaces the handlers installed by an earlier call."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_iceburgd", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level.upper())
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(log_dir / LOG_FILE, maxBytes=max_bytes,
                                                            backupCount=backups, encoding="utf-8")
        file_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.ExceptionRenderer(NO_LOCALS), structlog.processors.JSONRenderer()],
            foreign_pre_chain=shared))
        _add(root, file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=(
                            structlog.dev.RichTracebackFormatter(show_locals=False, max_frames=20)))],
            foreign_pre_chain=shared))
        _add(root, stream)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _add(root: logging.Logger, handler: logging.Handler) -> None:
    handler._iceburgd = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def get_logger(name: str = "iceburgd") -> Any:
    return structlog.get_logger(name)


_DISK_FULL_LOGGED: dict[str, float] = {}  # stage -> when its last disk-full line was logged


def stage_failed(exc: BaseException, **where: Any) -> None:
    """A stage's unexpected error: a traceback (a bug), or, when the disk is full (the machine's state), one line
    per stage a minute at most: a heartbeat failing every few seconds must not fill the log it cannot write."""
    if not is_disk_full(exc):
        get_logger("iceburgd.daemon").exception("stage_failed", **where)
        return
    stage = str(where.get("stage"))
    if time.monotonic() - _DISK_FULL_LOGGED.get(stage, float("-inf")) >= 60.0:
        _DISK_FULL_LOGGED[stage] = time.monotonic()
        get_logger("iceburgd.daemon").error("stage_failed_disk_full", error=str(exc)[:200], **where)
