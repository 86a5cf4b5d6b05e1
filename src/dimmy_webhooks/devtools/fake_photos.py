"""Photos for the fake Dimmy API: a small PNG of a box with the item's dimensions on it.

:func:`photo_png` draws one, the same bytes every time for the same item, photo number and
dimensions, and different from item to item (its colours come from the id, the box's shape
from the dimensions). Written with the standard library only (``zlib`` and ``struct``): a
5x7 bitmap font, convex polygons filled by scanlines, one ``IDAT`` chunk. Always
:data:`WIDTH` x :data:`HEIGHT` pixels (a few kilobytes).
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import Sequence
from typing import Any

WIDTH, HEIGHT = 320, 240
Colour = tuple[int, int, int]

_FONT = {  # 5x7 glyphs, one string of five bits per row
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    "x": ("00000", "00000", "10001", "01010", "00100", "01010", "10001"),
    "c": ("00000", "00000", "01110", "10000", "10000", "10001", "01110"),
    "m": ("00000", "00000", "11010", "10101", "10101", "10001", "10001"),
    "i": ("00100", "00000", "01100", "00100", "00100", "00100", "01110"),
    "n": ("00000", "00000", "10110", "11001", "10001", "10001", "10001"),
    "o": ("00000", "00000", "01110", "10001", "10001", "10001", "01110"),
    "d": ("00001", "00001", "01101", "10011", "10001", "10001", "01111"),
    "s": ("00000", "00000", "01111", "10000", "01110", "00001", "11110"),
    "#": ("01010", "01010", "11111", "01010", "11111", "01010", "01010"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    " ": ("00000",) * 7,
}
_UNKNOWN = ("11111", "10001", "10001", "10001", "10001", "10001", "11111")


def dimensions_of(item: dict[str, Any]) -> tuple[float, float, float, str] | None:
    """``(width, height, depth, unit)`` of a fake item's first dimensioning step, or ``None``."""
    steps = item.get("dimensioning")
    if not isinstance(steps, list) or not steps or not isinstance(steps[0], dict):
        return None
    dims = steps[0].get("dimensions")
    if not isinstance(dims, dict):
        return None
    try:
        sides = tuple(float(dims[name]) for name in ("width", "height", "depth"))
    except (KeyError, TypeError, ValueError):
        return None
    return (*sides, str(dims.get("unit") or ""))  # type: ignore[return-value]


class _Canvas:
    def __init__(self, background: Colour) -> None:
        self.pixels = bytearray(bytes(background) * (WIDTH * HEIGHT))

    def dot(self, x: int, y: int, colour: Colour) -> None:
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            at = (y * WIDTH + x) * 3
            self.pixels[at : at + 3] = bytes(colour)

    def polygon(self, corners: Sequence[tuple[float, float]], colour: Colour) -> None:
        """Fill a convex polygon: on each row, between the leftmost and rightmost edge."""
        low = max(0, int(min(y for _, y in corners)))
        high = min(HEIGHT - 1, int(max(y for _, y in corners)))
        edges = list(zip(corners, [*corners[1:], corners[0]], strict=True))
        for y in range(low, high + 1):
            row = y + 0.5
            xs = [
                x0 + (row - y0) * (x1 - x0) / (y1 - y0)
                for (x0, y0), (x1, y1) in edges
                if y0 != y1 and min(y0, y1) <= row <= max(y0, y1)
            ]
            if xs:
                start, end = max(0, round(min(xs))), min(WIDTH, round(max(xs)))
                self.pixels[(y * WIDTH + start) * 3 : (y * WIDTH + end) * 3] = bytes(colour) * (
                    end - start
                )

    def text(self, x: int, y: int, words: str, colour: Colour, scale: int = 2) -> None:
        for char in words:
            for row, bits in enumerate(_FONT.get(char, _UNKNOWN)):
                for col, bit in enumerate(bits):
                    if bit == "1":
                        for dy in range(scale):
                            for dx in range(scale):
                                self.dot(x + col * scale + dx, y + row * scale + dy, colour)
            x += 6 * scale


def _shade(colour: Colour, factor: float) -> Colour:
    r, g, b = (min(255, max(0, round(c * factor))) for c in colour)
    return (r, g, b)


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


@functools.lru_cache(maxsize=256)
def photo_png(
    item_id: str, number: int, dimensions: tuple[float, float, float, str] | None
) -> bytes:
    """Photo ``number`` of the item ``item_id`` whose sides are ``dimensions``: a box in
    proportion to them, in colours drawn from the id, with the dimensions written below."""
    seed = hashlib.sha256(f"{item_id}/{number}".encode()).digest()
    background: Colour = (230 + seed[0] % 26, 230 + seed[1] % 26, 230 + seed[2] % 26)
    cardboard: Colour = (150 + seed[3] % 60, 100 + seed[4] % 50, 50 + seed[5] % 40)
    canvas = _Canvas(background)
    width, height, depth = dimensions[:3] if dimensions else (1.0, 1.0, 1.0)
    width, height, depth = (max(side, 1e-9) for side in (width, height, depth))
    scale = min(200 / (width + depth * 0.5), 150 / (height + depth * 0.5))
    w, h, d = width * scale, height * scale, depth * scale * 0.5
    left = (WIDTH - w - d) / 2
    bottom = 20 + (150 + h + d) / 2  # the box centred in the area above the text
    front = [(left, bottom - h), (left + w, bottom - h), (left + w, bottom), (left, bottom)]
    top = [(left, bottom - h), (left + d, bottom - h - d), (left + w + d, bottom - h - d)]
    top.append((left + w, bottom - h))
    side = [(left + w, bottom - h), (left + w + d, bottom - h - d), (left + w + d, bottom - d)]
    side.append((left + w, bottom))
    canvas.polygon(top, _shade(cardboard, 1.25))
    canvas.polygon(side, _shade(cardboard, 0.75))
    canvas.polygon(front, cardboard)
    tape = (left + w / 2 - max(w / 20, 2), left + w / 2 + max(w / 20, 2))
    canvas.polygon(
        [(tape[0], bottom - h), (tape[1], bottom - h), (tape[1], bottom), (tape[0], bottom)],
        _shade(cardboard, 1.4),
    )
    ink: Colour = (40, 40, 48)
    canvas.text(8, 8, f"#{number}", ink)
    if dimensions is None:
        label = "no dims"
    else:
        label = " x ".join(_number(side) for side in dimensions[:3]) + f" {dimensions[3]}"
    label = label[:26]
    canvas.text(max(4, (WIDTH - 12 * len(label)) // 2), HEIGHT - 26, label, ink)
    return encode_png(WIDTH, HEIGHT, bytes(canvas.pixels))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """``rgb`` (``width * height * 3`` bytes, rows top to bottom) as an 8-bit RGB PNG."""
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError("pixel data does not match the size")
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
