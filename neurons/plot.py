"""A loss curve as a PNG, without a plotting library: a small raster and zlib.

Good enough to see a curve go down; the numbers are in the table and the JSON.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

_W, _H, _PAD = 480, 270, 24
_BG, _AXIS, _GRID, _LINE = (255, 255, 255), (60, 60, 60), (225, 225, 225), (200, 40, 40)


def _png(pixels: list[bytearray]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)
    header = struct.pack(">IIBBBBB", _W, _H, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def loss_curve_png(values: Sequence[float], path: Path) -> None:
    """Plot `values` (one per window) left to right, scaled to fill the frame."""
    pixels = [bytearray(_BG * _W) for _ in range(_H)]

    def put(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < _W and 0 <= y < _H:
            pixels[y][3 * x : 3 * x + 3] = bytes(colour)

    for i in range(5):  # horizontal grid lines
        y = _PAD + i * (_H - 2 * _PAD) // 4
        for x in range(_PAD, _W - _PAD):
            put(x, y, _GRID)
    for x in range(_PAD, _W - _PAD):
        put(x, _H - _PAD, _AXIS)
    for y in range(_PAD, _H - _PAD + 1):
        put(_PAD, y, _AXIS)

    finite = [v for v in values if math.isfinite(v)]
    if len(finite) >= 2:
        low, high = min(finite), max(finite)
        span = (high - low) or 1.0

        def at(i: int, v: float) -> tuple[float, float]:
            x = _PAD + i * (_W - 2 * _PAD) / (len(values) - 1)
            y = _H - _PAD - (v - low) / span * (_H - 2 * _PAD)
            return x, y

        for i in range(len(values) - 1):
            if not (math.isfinite(values[i]) and math.isfinite(values[i + 1])):
                continue
            (x0, y0), (x1, y1) = at(i, values[i]), at(i + 1, values[i + 1])
            steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            for s in range(steps + 1):
                t = s / steps
                x, y = round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t)
                for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    put(x + dx, y + dy, _LINE)
    path.write_bytes(_png(pixels))
