"""A registered file -> records and quarantine rows in the store, batch by batch, resumable, exactly once.

Each batch of lines and the file's resume point commit in one transaction, and records are keyed by content
hash, so a process killed at any instant resumes without losing or repeating a record.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from iceburg_daemon.errors import IngestError
from iceburg_daemon.formats import Reject, canonical_json, encode_record, parse_object
from iceburg_daemon.fsutil import is_disk_full
from iceburg_daemon.quality.secrets import may_hold_secrets, redact_value
from iceburg_daemon.readers import iter_items
from iceburg_daemon.store import BatchCounts, FileState, NewRecord, Rejection, Store

EXCERPT_CHARS = 200
MAX_FILE_FAILURES = 3  # unexpected exceptions on one file before it is quarantined whole (internal_error)


@dataclass
class FileResult:
    name: str
    file_id: int
    counts: BatchCounts = field(default_factory=BatchCounts)
    complete: bool = False  # every line stored or quarantined
    failure: IngestError | None = None  # the rest of the file could not be read
    held_open: bool = False  # read to its last whole line, but a process still holds it open for writing


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def register_file(store: Store, path: Path, *, name: str, origin: str, now: float) -> sqlite3.Row:
    """The files row for this path and content, created on first sight (idempotent)."""
    sha, size = sha256_of(path)
    row = store.file_by_path(path, sha)
    if row is None:
        store.add_file(name=name, path=path, origin=origin, size=size, sha256=sha, now=now)
        row = store.file_by_path(path, sha)
    assert row is not None
    return row


def rejects_prefix(row: sqlite3.Row) -> str:
    """Quarantine source_ref prefix for a file: unique per (name, content), so a re-drop adds no rows."""
    return f"{row['name']}@{row['sha256'][:16]}:"


def to_new_record(record: dict[str, Any], *, source: str, source_ref: str) -> NewRecord:
    """Redact secrets and personal data first: the store never holds them, not even in the identity hash."""
    record["source"] = source
    record["source_ref"] = source_ref
    digest, stored = encode_record(record)
    if may_hold_secrets(stored):  # rare: only then walk every string of the record
        found: Counter[str] = Counter()
        record = redact_value(record, found)
        if found:
            record["redactions"] = dict(sorted(found.items()))
            digest, stored = encode_record(record)
    return NewRecord(
        content_hash=digest,
        role=record["role"],
        kind=record["kind"],
        canonical=stored,
        source=source,
        source_ref=source_ref,
        record_ts=record.get("record_ts"),
    )


def ingest_file(
    store: Store,
    row: sqlite3.Row,
    *,
    source: str,
    batch_size: int,
    max_record_bytes: int,
    clock: Callable[[], float],
    max_depth: int = 64,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
    path: Path | None = None,
    whole_lines: bool = False,
    max_rejects: int = 0,
    kind: str | None = None,
    fd: int | None = None,
) -> FileResult:
    """Ingest from the row's resume point. Stops early (complete=False) when should_stop() turns true.

    A value nested deeper than `max_depth` is quarantined (too_deep) before anything walks it. An unexpected
    exception (a bug, or input nothing foresaw) is re-raised for the caller to retry; at the MAX_FILE_FAILURES-th
    the lines before it are kept and the file ends as a failure with reason internal_error.
    `path` reads the file where it lies now (an archived file that grew); `whole_lines` leaves an unterminated
    last line for later (its writer still holds the file open). `kind` and `fd`: see readers.iter_items."""
    result = FileResult(name=row["name"], file_id=row["id"])
    path, prefix, name = path or Path(row["path"]), rejects_prefix(row), row["name"]
    records: list[NewRecord] = []
    rejections: list[Rejection] = []
    offset, line_no = row["byte_offset"], row["line_no"]

    def flush(check: bool = True) -> None:
        result.counts.add(store.commit_batch(row["id"], records, rejections, byte_offset=offset,
                                             line_no=line_no, now=clock()))
        records.clear()
        rejections.clear()
        bad = row["quarantined"] + sum(result.counts.quarantined.values())
        if check and max_rejects and bad >= max_rejects and bad > row["stored"] + row["duplicates"] + \
                result.counts.total_stored + result.counts.duplicates:
            raise IngestError("mostly_invalid", f"{bad} lines quarantined, more than it gave records"
                                                f" ([inbox] max_rejects_per_file = {max_rejects})")

    try:
        items = iter_items(path, start_offset=offset, start_line=line_no, max_bytes=max_record_bytes,
                           progress=progress, whole_lines=whole_lines, kind=kind, fd=fd, max_depth=max_depth)
        for item_line, item_offset, value in items:
            parsed = value if isinstance(value, Reject) else parse_object(value)
            if isinstance(parsed, Reject):
                rejections.append(Rejection(source=source, source_ref=f"{prefix}{item_line}", reason=parsed.reason,
                                            detail=parsed.detail, excerpt=_excerpt(value), line_no=item_line))
            else:
                records.append(to_new_record(parsed, source=source, source_ref=f"{name}:{item_line}"))
            line_no, offset = item_line, item_offset  # resume after this line: it is in the batch
            if len(records) + len(rejections) >= batch_size:
                flush()
                if should_stop():
                    return result
        flush()
    except IngestError as exc:
        flush(check=False)  # everything read before the failure is kept (nothing left after mostly_invalid)
        result.failure = exc
        return result
    except Exception as exc:  # noqa: BLE001 - re-raised until the bound, then the file is quarantined
        if is_disk_full(exc):
            raise  # not the file's fault: retried from the last commit once there is space, never quarantined
        failures = store.count_file_failure(row["id"])
        if failures < MAX_FILE_FAILURES:
            raise
        flush(check=False)  # the lines before the one that failed
        result.failure = IngestError("internal_error", f"{type(exc).__name__} after line {line_no} on"
                                                       f" {failures} attempts: {str(exc)[:200]}")
        return result
    result.complete = True
    return result


def _excerpt(value: Any) -> str:
    if isinstance(value, Reject):
        return ""  # the raw line is not kept for encoding/size/JSON errors: it may be binary or huge
    text = canonical_json(redact_value(value, Counter()))  # string by string: JSON escapes hide word boundaries
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def write_rejects_file(store: Store, row: sqlite3.Row, folder: Path) -> Path | None:
    """data/quarantine/<file>.rejects.jsonl, regenerated from the store (so a crash never duplicates a line)."""
    rows = store.rejections_for(rejects_prefix(row))
    if not rows:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(row['path']).name}.rejects.jsonl"
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for q in rows:
            fh.write(canonical_json({"file": row["name"], "line": q["line_no"], "reason": q["reason"],
                                     "detail": q["detail"], "excerpt": q["excerpt"]}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def quarantine_whole_file(store: Store, result: FileResult, row: sqlite3.Row, failure: IngestError, *,
                          source: str, final_path: str | None, now: float) -> None:
    """Record why the file as a whole could not be read, and mark it quarantined."""
    with store.transaction():
        result.counts.quarantined += store.insert_rejections([Rejection(source=source, source_ref=f"{rejects_prefix(row)}file",
                                           reason=failure.reason, detail=failure.detail, excerpt="")], now)
        store.finish_file(row["id"], FileState.QUARANTINED, final_path=final_path, reason=failure.reason, now=now)
        store.add_event("file_quarantined", row["name"], now, reason=failure.reason, detail=failure.detail)


def ingest_paths(cfg: Any, store: Store, paths: list[Path], *, progress: bool = False,
                 clock: Callable[[], float] | None = None) -> list[dict[str, Any]]:
    """`iceburgd ingest`: files ingested in place (never moved), same parsing, exactly-once and quarantine rules."""
    clock = clock or time.time
    reports = []
    for path in paths:
        path = path.resolve()
        report: dict[str, Any] = {"path": str(path), "stored": {}, "duplicates": 0, "quarantined": {}}
        if not path.is_file() or path.is_symlink():
            report.update(outcome="skipped", reason="not_a_regular_file")
            reports.append(report)
            continue
        row = register_file(store, path, name=path.name, origin="cli", now=clock())
        if row["state"] != FileState.INGESTING.value:
            report.update(outcome="already_ingested", reason=row["reason"])
            reports.append(report)
            continue
        for attempt in range(1, MAX_FILE_FAILURES + 1):  # ingest_file raises until its bound, then gives up
            try:
                with _progress_bar(path, enabled=progress) as advance:
                    result = ingest_file(store, row, source="cli", batch_size=cfg.inbox.batch_size,
                                         max_record_bytes=cfg.inbox.max_record_bytes, clock=clock, progress=advance,
                                         max_depth=cfg.inbox.max_depth,
                                         max_rejects=cfg.inbox.max_rejects_per_file)
                break
            except Exception:  # noqa: BLE001 - retried from the committed resume point
                if attempt == MAX_FILE_FAILURES:
                    raise
                row = store.file_counts(row["id"])
        if result.failure is not None:
            quarantine_whole_file(store, result, row, result.failure, source="cli", final_path=None, now=clock())
            report.update(outcome="quarantined", reason=result.failure.reason)
        else:
            with store.transaction():
                store.finish_file(row["id"], FileState.DONE, final_path=None, reason=None, now=clock())
            report["outcome"] = "ingested"
        write_rejects_file(store, row, cfg.quarantine_dir)
        report["stored"] = {f"{role}/{kind}": n for (role, kind), n in sorted(result.counts.stored.items())}
        report["duplicates"] = result.counts.duplicates
        report["quarantined"] = dict(result.counts.quarantined)
        reports.append(report)
    return reports


class _progress_bar:
    """A rich progress bar over the file's bytes on a terminal; a no-op otherwise."""

    def __init__(self, path: Path, *, enabled: bool):
        self.path, self.enabled, self.bar = path, enabled, None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TimeRemainingColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.path.name, total=self.path.stat().st_size)
        bar = self.bar
        return lambda done: bar.update(task, completed=done)

    def __exit__(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
