"""ICEBURG's side of the inbox: an importable writer that hands interaction records to iceburgd.

Standard library only, and nothing from the daemon, so ICEBURG can vendor or import it without the training
stack. Records are buffered in memory and written by a background thread into a hidden temporary file, which
is fsynced and renamed into the inbox every `max_records` records or `max_seconds` seconds: the daemon only
ever sees whole files. Names carry the host, pid and a counter, so several processes can write at once.
`write()` never blocks longer than `max_block_seconds` (a slow or full disk): it then returns False and counts
the record in `dropped`, rather than stalling an agent.

    from iceburg_daemon.sink import InboxWriter
    with InboxWriter("~/iceburg_daemon/data/inbox") as inbox:
        inbox.write({"messages": [...], "metadata": {"agent_type": "surveyor"}})
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any


_DUE = object()


class InboxWriter:
    def __init__(self, inbox: str | Path, *, prefix: str = "iceburg", max_records: int = 500,
                 max_seconds: float = 30.0, max_block_seconds: float = 0.5, max_pending: int = 10_000):
        self.inbox = Path(inbox).expanduser()
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.prefix = f"{prefix}-{socket.gethostname().split('.')[0]}-{os.getpid()}"
        self.max_records, self.max_seconds, self.max_block_seconds = max_records, max_seconds, max_block_seconds
        self.dropped = 0  # records refused because the writer could not keep up within max_block_seconds
        self.files = 0  # files handed to the inbox
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="iceburgd-inbox-writer", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> bool:
        """Queue one record (a JSON object in any of the shapes the inbox reads). False if it was dropped."""
        line = json.dumps(record, ensure_ascii=False)
        try:
            self._queue.put(line, timeout=self.max_block_seconds)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self) -> None:
        """Hand everything written so far to the inbox now (waits for the background thread)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> "InboxWriter":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---- the background thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        lines: list[str] = []
        started = time.monotonic()
        while True:
            timeout = max(0.0, self.max_seconds - (time.monotonic() - started)) if lines else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _DUE  # max_seconds passed with records waiting
            if isinstance(item, str):
                if not lines:
                    started = time.monotonic()
                lines.append(item)
                if len(lines) < self.max_records:
                    continue
            while lines:
                try:
                    self._roll(lines)
                    lines = []
                except OSError:  # a full or failing disk: keep them, try again (write() stays bounded meanwhile)
                    time.sleep(1.0)
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _roll(self, lines: list[str]) -> None:
        """Write a hidden temporary file, fsync it, and rename it into the inbox under a name no one else uses."""
        self._seq += 1
        name = f"{self.prefix}-{time.time_ns()}-{self._seq:06d}.jsonl"
        tmp = self.inbox / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.inbox / name)
        self.files += 1
