"""Durability helpers: what is renamed into place, or named by a store row, is on the disk first."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and folder under root, then root: before a rename publishes the tree."""
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file() or p.is_dir():
            fsync_path(p)
    fsync_path(root)


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for lack of space (SQLite's SQLITE_FULL, or ENOSPC / EDQUOT from the OS): the machine's
    state, never the input's fault, so it must not count against a file or a record."""
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc)  # "database or disk is full"
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding path (None if it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
