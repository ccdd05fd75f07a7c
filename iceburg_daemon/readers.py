"""A file on disk -> a stream of (line_no, resume_offset, decoded object | Reject), never read whole into memory.

JSONL and JSONL.gz resume from a byte offset (in the decompressed stream); JSON arrays resume by item number.
An error that makes the rest of the file unreadable raises IngestError (the caller quarantines the file whole).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from iceburg_daemon.errors import IngestError
from iceburg_daemon.formats import Reject

SUFFIXES = (".jsonl.gz", ".jsonl", ".json")
CHUNK = 1 << 16
# Past this many decompressed bytes, a gzip file expanding more than GZIP_MAX_RATIO times is a bomb (JSON logs
# compress 5-20x; a bomb of blank lines or one endless line 1000x and more, and would burn CPU for hours).
GZIP_RATIO_FLOOR, GZIP_MAX_RATIO = 16 << 20, 100

Item = tuple[int, int, Any]  # line number (1-based), resume offset after it, decoded value or Reject


def file_kind(path: Path) -> str | None:
    """'jsonl', 'jsonl.gz' or 'json' by name; None for a type the inbox does not take."""
    name = path.name.lower()
    return next((s.lstrip(".") for s in SUFFIXES if name.endswith(s)), None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one instance: building it per line costs 5 %


def deeper_than(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests more than `limit` levels (iterative: no recursion on outside data)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def within_depth(value: Any, brackets: int, limit: int) -> Any:
    """`value`, or Reject(too_deep) when it nests more than `limit` levels. Its text holds `brackets` opening
    brackets and it can nest no deeper than that, so the walk (half the cost of decoding) runs only for the rare
    text with more."""
    if brackets > limit and deeper_than(value, limit):
        return Reject("too_deep", f"nested deeper than {limit} levels ([inbox] max_depth)")
    return value


def decode_line(raw: bytes, max_depth: int = 64) -> Any:
    """bytes of one JSONL line -> decoded value, or Reject(bad_encoding | invalid_json | too_deep)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject("bad_encoding", f"not UTF-8 at byte {exc.start}")
    try:
        value = _DECODER.decode(text[1:] if text.startswith("\ufeff") else text)
    except RecursionError:
        return Reject("too_deep", "nested deeper than the JSON decoder takes")
    except ValueError as exc:
        return Reject("invalid_json", str(exc)[:200])
    return within_depth(value, raw.count(b"{") + raw.count(b"["), max_depth)


def _open_binary(path: Path, kind: str, fd: int | None = None) -> tuple[IO[bytes], IO[bytes]]:
    """(stream to read, raw file whose position tells progress). `fd`: read that open file (it may have been
    renamed or deleted since), through a duplicate descriptor rewound to the start."""
    if fd is not None:
        raw = os.fdopen(os.dup(fd), "rb")
        raw.seek(0)
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if kind == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def iter_items(path: Path, *, start_offset: int, start_line: int, max_bytes: int,
               progress: Callable[[int], None] | None = None, whole_lines: bool = False,
               kind: str | None = None, fd: int | None = None, max_depth: int = 64) -> Iterator[Item]:
    """`whole_lines`: stop before an unterminated last JSONL line (its writer is still writing it).
    A value nested deeper than `max_depth` comes as Reject(too_deep), before anything walks it.
    `kind` overrides the one the name implies; `fd` reads an open file instead of opening `path`."""
    kind = kind or file_kind(path)
    if kind is None:
        raise IngestError("unsupported_type", f"{path.name}: the inbox takes *.jsonl, *.jsonl.gz and *.json")
    try:
        stream, raw = _open_binary(path, kind, fd)
        with raw, stream:
            if kind == "json":
                yield from _iter_json_array(stream, raw, start_line, max_bytes, progress, max_depth)
            else:
                yield from _iter_jsonl(stream, raw, start_offset, start_line, max_bytes, progress, whole_lines,
                                       max_depth)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise IngestError("unreadable", f"{type(exc).__name__}: {exc}") from exc


def _iter_jsonl(stream: IO[bytes], raw: IO[bytes], offset: int, line_no: int, max_bytes: int,
                progress: Callable[[int], None] | None, whole_lines: bool, max_depth: int) -> Iterator[Item]:
    if offset:
        stream.seek(offset)
    compressed = stream is not raw

    def check_ratio() -> None:
        if compressed and offset > GZIP_RATIO_FLOOR and offset > GZIP_MAX_RATIO * max(raw.tell(), 1):
            raise IngestError("gzip_bomb", f"{raw.tell()} compressed bytes expanded to more than {offset}"
                                           f" (over {GZIP_MAX_RATIO}x)")

    while True:
        line = stream.readline(max_bytes + 1)
        if not line or (whole_lines and len(line) <= max_bytes and not line.endswith(b"\n")):
            return
        offset += len(line)
        line_no += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of an over-long line without holding it
                more = stream.readline(CHUNK)
                offset += len(more)
                check_ratio()
                if not more or more.endswith(b"\n"):
                    break
            yield line_no, offset, Reject("too_large", f"line longer than {max_bytes} bytes")
            continue
        if line_no % 256 == 0:
            check_ratio()
            if progress:
                progress(raw.tell())
        if line.isspace():  # (not empty: checked above)
            continue  # blank lines separate nothing and hold nothing
        yield line_no, offset, decode_line(line, max_depth)


def _iter_json_array(stream: IO[bytes], raw: IO[bytes], skip: int, max_bytes: int,
                     progress: Callable[[int], None] | None, max_depth: int) -> Iterator[Item]:
    """Items of a top-level JSON array, decoded one by one from a sliding buffer.

    A top-level object is taken as a single item (line 1). After a syntax error the rest of the file is one
    invalid_json item: everything before it has been delivered.
    """
    decoder = _DECODER
    text = _Utf8Text(stream)
    buf, pos, eof = "", 0, False

    def fill() -> bool:
        nonlocal buf, pos, eof
        chunk = text.read()
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + chunk, 0
        return True

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf) or not fill():
                return

    skip_ws()
    if pos >= len(buf):
        yield 1, 0, Reject("invalid_json", "empty file")
        return
    top_level_array = buf[pos] == "["
    if top_level_array:
        pos += 1
    item = 0
    while True:
        skip_ws()
        if top_level_array and pos < len(buf) and buf[pos] == "]" and item == 0:
            return
        if pos >= len(buf):
            if top_level_array:
                yield item + 1, item + 1, Reject("invalid_json", "unterminated JSON array")
            return
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:
                    break
            except (ValueError, RecursionError) as exc:
                if len(buf) - pos > max_bytes * 4 + CHUNK:
                    yield item + 1, item + 1, Reject("too_large", f"item {item + 1} exceeds {max_bytes} characters;"
                                                     " the rest of the file is not read")
                    return
                if eof:
                    reason = "too_deep" if isinstance(exc, RecursionError) else "invalid_json"
                    yield item + 1, item + 1, Reject(reason, f"item {item + 1}: {str(exc)[:200]}")
                    return
            if not fill():
                continue
        item += 1
        size = end - pos
        pos = end
        if item > skip:
            if size > max_bytes:
                yield item, item, Reject("too_large", f"item longer than {max_bytes} characters")
            else:
                brackets = buf.count("{", end - size, end) + buf.count("[", end - size, end)
                yield item, item, within_depth(value, brackets, max_depth)
        if progress and item % 256 == 0:
            progress(raw.tell())
        if not top_level_array:
            skip_ws()
            if pos < len(buf):
                yield item + 1, item + 1, Reject("invalid_json", "extra data after the top-level value")
            return
        skip_ws()
        if pos < len(buf) and buf[pos] == ",":
            pos += 1
        elif pos < len(buf) and buf[pos] == "]":
            return
        else:
            yield item + 1, item + 1, Reject("invalid_json", f"expected ',' or ']' after item {item}")
            return


class _Utf8Text:
    """Incremental UTF-8 decoding of a binary stream; a bad byte makes the file unreadable."""

    def __init__(self, stream: IO[bytes]):
        import codecs

        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def read(self) -> str:
        data = self.stream.read(CHUNK)
        try:
            return self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise IngestError("bad_encoding", f"not UTF-8 ({exc.reason})") from exc
