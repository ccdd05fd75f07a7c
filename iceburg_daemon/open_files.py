"""Which inbox files another process still holds open for writing, where the platform can tell.

A writer that keeps its log open and appends in place would lose every line written after the file is claimed
and archived. Linux answers from /proc (each fd's target and open flags); macOS from `lsof -F`. Anything else,
or a check that fails, answers None ("cannot tell"): the inbox then relies on its size check and late-append
watch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_O_ACCMODE = 0o3  # the access bits of an fd's open flags: 0 read-only, 1 write-only, 2 read-write
LSOF_TIMEOUT_SECONDS = 10.0


def held_for_writing(paths: list[Path]) -> set[Path] | None:
    """The subset of `paths` some process (this one included) has open for writing; None if unknowable here."""
    if not paths:
        return set()
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self/fdinfo"):
        return _from_proc(paths, Path("/proc"))
    if sys.platform == "darwin":
        return _from_lsof(paths)
    return None


def _from_proc(paths: list[Path], proc: Path) -> set[Path]:
    by_inode: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = path
    found: set[Path] = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:  # gone, or another user's process (whose files the inbox does not share)
            continue
        for fd in fds:
            try:
                st = os.stat(proc / pid / "fd" / fd)
                path = by_inode.get((st.st_dev, st.st_ino))
                if path is not None and _writable(proc / pid / "fdinfo" / fd):
                    found.add(path)
            except OSError:
                continue
    return found


def _writable(fdinfo: Path) -> bool:
    for line in fdinfo.read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & _O_ACCMODE != 0
    return False


def _from_lsof(paths: list[Path]) -> set[Path] | None:
    try:
        done = subprocess.run(["lsof", "-n", "-P", "-F", "an", "--", *map(str, paths)], capture_output=True,
                              text=True, timeout=LSOF_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode not in (0, 1):  # 1: none of the files is open (or some did not exist)
        return None
    return parse_lsof(done.stdout, paths)


def parse_lsof(output: str, paths: list[Path]) -> set[Path]:
    """`lsof -F an` output -> the paths open with access w (write) or u (read and write)."""
    wanted = {str(p): p for p in paths}
    found: set[Path] = set()
    access = ""
    for line in output.splitlines():
        tag, value = line[:1], line[1:]
        if tag in ("p", "f"):  # a new process or file set: its access field comes before its name
            access = ""
        elif tag == "a":
            access = value
        elif tag == "n" and access in ("w", "u") and value in wanted:
            found.add(wanted[value])
    return found
