"""`iceburgd logs [-f] [--level L] [--event E] [--lines N] [--json]`: the daemon's structured log (one JSON object
per line in data/logs/iceburgd.log) read as a person would: time, level, event, then the event's fields."""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from iceburg_daemon.config import Config
from iceburg_daemon.logs import LOG_FILE

LEVELS = ("debug", "info", "warning", "error", "critical")
COLOURS = {"warning": "\033[33m", "error": "\033[31m", "critical": "\033[1;31m", "debug": "\033[2m"}


def add_parsers(sub: Any) -> None:
    logs = sub.add_parser("logs", help="read the structured log: filter by level or event, follow with -f")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    logs.add_argument("--level", choices=LEVELS, default="debug", help="this level and above")
    logs.add_argument("--event", action="append", default=[], help="event name or glob (file_*); repeatable")
    logs.add_argument("--lines", type=int, default=50, help="how many matching lines of the past to show first")
    logs.add_argument("--json", action="store_true", help="the matching lines as they are stored")


def run(cfg: Config, args: Any) -> int:
    path = cfg.logs_dir / LOG_FILE
    if not path.exists() and not args.follow:
        print(f"iceburgd: no log yet at {path} (the daemon writes it once it runs)", file=sys.stderr)
        return 1
    keep = _matcher(args.level, args.event)
    colour = sys.stdout.isatty() and not args.json and not os.environ.get("NO_COLOR")
    past, fh = _read(path)
    for entry in [e for e in past if keep(e)][-args.lines:] if args.lines > 0 else []:
        print(_format(entry, as_json=args.json, colour=colour), flush=True)
    if not args.follow:
        if fh is not None:
            fh.close()
        return 0
    try:
        for entry in _follow(path, fh):
            if keep(entry):
                print(_format(entry, as_json=args.json, colour=colour), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _matcher(level: str, events: list[str]) -> Any:
    floor = LEVELS.index(level)

    def keep(entry: dict[str, Any]) -> bool:
        rank = LEVELS.index(entry["level"]) if entry.get("level") in LEVELS else len(LEVELS) - 1
        return rank >= floor and (not events or any(fnmatch.fnmatchcase(str(entry.get("event")), e) for e in events))

    return keep


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return {"event": line.rstrip("\n"), "level": "info"} if line.strip() else None  # not ours: shown as is
    return value if isinstance(value, dict) else None


def _read(path: Path) -> tuple[list[dict[str, Any]], BinaryIO | None]:
    """The log's whole lines, and the open file positioned after them: following goes on from there, so nothing
    written meanwhile (even across a rotation) is missed."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - handed on to _follow, or closed by the caller
    except FileNotFoundError:
        return [], None
    entries, offset = [], 0
    for line in iter(fh.readline, b""):
        if not line.endswith(b"\n"):
            break  # half written: following prints it once it is whole
        offset += len(line)
        entry = _parse(line.decode("utf-8", "replace"))
        if entry is not None:
            entries.append(entry)
    fh.seek(offset)
    return entries, fh


def _follow(path: Path, fh: BinaryIO | None, poll: float = 0.5) -> Iterator[dict[str, Any]]:
    """Whole lines as they are written after what _read gave; a rotated log (a new inode at `path`) is read from
    its first line once the old one has nothing more."""
    inode = os.fstat(fh.fileno()).st_ino if fh is not None else None
    pending = b""
    while True:
        if fh is None:
            try:
                fh = open(path, "rb")  # noqa: SIM115 - reopened on rotation
            except FileNotFoundError:
                time.sleep(poll)
                continue
            inode, pending = os.fstat(fh.fileno()).st_ino, b""
        chunk = fh.readline()
        if chunk:
            pending += chunk
            if pending.endswith(b"\n"):  # a half-written line waits for its end
                entry = _parse(pending.decode("utf-8", "replace"))
                pending = b""
                if entry is not None:
                    yield entry
            continue
        time.sleep(poll)
        try:
            rotated = os.stat(path).st_ino != inode
        except FileNotFoundError:
            rotated = True
        if rotated:  # what the old file got before its rename, then the new file from its first line
            rest = pending + fh.read()
            fh.close()
            fh, pending = None, b""
            for line in rest.splitlines(keepends=True):
                entry = _parse(line.decode("utf-8", "replace")) if line.endswith(b"\n") else None
                if entry is not None:
                    yield entry


def _format(entry: dict[str, Any], *, as_json: bool, colour: bool) -> str:
    if as_json:
        return json.dumps(entry)
    fields = {k: v for k, v in entry.items() if k not in ("event", "level", "timestamp", "exception")}
    when = str(entry.get("timestamp", ""))[:19].replace("T", " ")
    level = str(entry.get("level", ""))
    text = f"{when} {level:<8} {entry.get('event', '')}" + "".join(f" {k}={_value(v)}" for k, v in fields.items())
    if entry.get("exception"):
        text += "\n" + str(entry["exception"]).rstrip()
    return f"{COLOURS[level]}{text}\033[0m" if colour and level in COLOURS else text


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(text) if " " in text else text
