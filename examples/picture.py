"""An entrypoint whose result is an image: a PNG as a `data:` URL, made with the standard library.

The web console shows such a result as the picture. data: {"size": 64, "hue": 200} or nothing.
"""

from __future__ import annotations

import base64
import colorsys
import struct
import zlib
from typing import Any


def gradient(data: Any) -> str:
    """A size x size PNG (at most 256): a diagonal gradient of the given hue (0-360)."""
    settings = data if isinstance(data, dict) else {}
    size = max(1, min(256, int(settings.get("size", 64))))
    hue = float(settings.get("hue", 210)) % 360 / 360
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type 0: the row as it is
        for x in range(size):
            r, g, b = colorsys.hsv_to_rgb(hue, 0.25 + 0.75 * x / size, 0.35 + 0.65 * y / size)
            row += bytes((int(r * 255), int(g * 255), int(b * 255)))
        rows.append(bytes(row))
    return "data:image/png;base64," + base64.b64encode(_png(size, size, b"".join(rows))).decode()


def _png(width: int, height: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
