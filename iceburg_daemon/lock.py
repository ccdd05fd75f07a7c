"""The data directory's lock: one writer (the daemon, `ingest`, `data refilter`, `index rebuild`) at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from iceburg_daemon.errors import AlreadyRunningError


class DataDirLock:
    """An flock on data/iceburgd.lock: one writer per data directory. The kernel drops it if we die."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> "DataDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"another iceburgd (pid {holder}) is using {self.path.parent}; stop it first"
                " (`launchctl stop` / `kill -TERM`), or use another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
