"""A run's training-loss curve (curves.jsonl), drawn for people: as text for `iceburgd runs show`, and as
curves.png in the run folder. Standard library only (zlib + struct for the PNG): the daemon and the training
child can both use it."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

Point = tuple[float, float]


def read(run_dir: Path, key: str = "loss") -> list[Point]:
    """(step, value) for every step that recorded `key`; a torn last line (a killed child) is skipped."""
    points = []
    try:
        lines = (run_dir / "curves.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
            points.append((float(row["step"]), float(row[key])))
    return points


def text_chart(points: list[Point], width: int = 60, height: int = 10) -> list[str]:
    """The curve in `height` rows of `width` columns, y labels on the left: the last value per column."""
    if len(points) < 2:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    span, cols = (hi - lo) or 1.0, min(width, len(points))
    grid = [[" "] * cols for _ in range(height)]
    for x, y in points:
        col = round((x - xs[0]) / ((xs[-1] - xs[0]) or 1) * (cols - 1))
        row = round((hi - y) / span * (height - 1))
        grid[row][col] = "•"
    label = max(len(f"{hi:.4g}"), len(f"{lo:.4g}"))
    lines = [f"{(f'{hi:.4g}' if r == 0 else f'{lo:.4g}' if r == height - 1 else ''):>{label}} │{''.join(g)}"
             for r, g in enumerate(grid)]
    lines.append(f"{'':>{label}} └{'─' * cols}")
    lines.append(f"{'':>{label}}  step {xs[0]:.0f}{'':>{max(1, cols - 12 - len(str(int(xs[-1]))))}}{xs[-1]:.0f}")
    return lines


def write_png(path: Path, points: list[Point], width: int = 640, height: int = 320) -> bool:
    """A line chart of the curve (axes, the curve in blue) as an RGB PNG; False when there is nothing to draw."""
    if len(points) < 2:
        return False
    pixels = [[(255, 255, 255)] * width for _ in range(height)]
    left, bottom, top, right = 40, height - 30, 10, width - 10
    for x in range(left, right + 1):
        pixels[bottom][x] = (0, 0, 0)
    for y in range(top, bottom + 1):
        pixels[y][left] = (0, 0, 0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(ys), max(ys)

    def at(p: Point) -> tuple[int, int]:
        x = left + 1 + (p[0] - xs[0]) / ((xs[-1] - xs[0]) or 1) * (right - left - 1)
        y = top + (hi - p[1]) / ((hi - lo) or 1) * (bottom - top - 1)
        return round(x), round(y)

    for a, b in zip(points, points[1:]):
        _line(pixels, at(a), at(b), (31, 119, 180))
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)
    chunk = (lambda kind, data: struct.pack(">I", len(data)) + kind + data
             + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return True


def _line(pixels: list[list[tuple[int, int, int]]], a: tuple[int, int], b: tuple[int, int],
          colour: tuple[int, int, int]) -> None:
    """Bresenham, two pixels thick."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        for ox, oy in ((0, 0), (0, 1)):
            if 0 <= y0 + oy < len(pixels) and 0 <= x0 + ox < len(pixels[0]):
                pixels[y0 + oy][x0 + ox] = colour
        if (x0, y0) == (x1, y1):
            return
        e2 = 2 * err
        if e2 >= dy:
            err, x0 = err + dy, x0 + sx
        if e2 <= dx:
            err, y0 = err + dx, y0 + sy
