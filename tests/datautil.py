"""Small image-folder datasets for tests: noisy solid-colour classes a classifier learns fast."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_color_folder(
    root: Path,
    *,
    per_class: int = 5,
    size: int = 24,
    noise: float = 20.0,
    seed: int = 0,
    colors: Mapping[str, tuple[int, int, int]] = RGB,
) -> Path:
    """Write ``root/<colour>/<i>.png``: ``per_class`` images of ``size`` px per colour, each the
    colour plus Gaussian noise (std ``noise``, 0-255 scale) from one seeded generator, classes in
    the mapping's order. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for name, rgb in colors.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, noise, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit grayscale PNG of ``width`` x ``height`` black pixels: a decompression bomb.

    Written row by row through one zlib stream, so making it costs no more memory than one
    row; 12000 x 12000 is about 20 KB on disk and 144 megapixels decoded.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path
