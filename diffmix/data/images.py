"""Decode any image file into a clean, fully loaded 8-bit RGB image.

:func:`open_rgb` is the one place pixels enter the project. Whatever the input -- a
grayscale or 1-bit scan, a palette GIF with transparency, a CMYK JPEG, a 16-bit PNG, a
float TIFF, a phone photo with an EXIF rotation -- it returns an ``RGB`` image that looks
the way a viewer shows it, or raises :class:`ImageDecodeError` with a short reason.

Nothing here changes PIL's global settings: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays as
it is (False by default, so truncated files fail) and the decompression-bomb limit is a
per-call argument checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: Largest image accepted by default, in pixels (width * height): 64 megapixels.
DEFAULT_MAX_PIXELS = 64_000_000

#: File extensions (lower case) that folder datasets treat as images.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # rotations by 90/270 degrees
_PIL_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


class ImageDecodeError(ValueError):
    """An image that cannot be used; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


def is_image_name(name: str | os.PathLike) -> bool:
    """True when a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def extension_reason(name: str | os.PathLike) -> str:
    """The skip reason for a file whose extension is not an image extension."""
    suffix = Path(name).suffix.lower()
    return (
        f"not an image file (extension {suffix})" if suffix else "not an image file (no extension)"
    )


def open_rgb(
    source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode ``source`` (a path, raw bytes or a binary file object) into an RGB image.

    The image is fully decoded (``.load()``; PNG chunks are also CRC-verified), the EXIF
    orientation is applied, transparency is composited on white, and high-bit-depth pixels
    are scaled to 0-255 (see :func:`to_rgb`). ``max_pixels`` (width * height, > 0) is checked
    from the header before decoding.

    Raises :class:`ImageDecodeError` whose ``reason`` is one of "zero-byte file",
    "not an image", "truncated image", "corrupt image: ...", "decompression bomb: ...",
    "unsupported image mode ...". A missing path raises ``FileNotFoundError``.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    data = _read_source(source)
    label = str(source) if isinstance(source, (str, os.PathLike)) else None
    try:
        return _decode(data, max_pixels)
    except ImageDecodeError as e:
        raise ImageDecodeError(e.reason, label) from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`open_rgb` would return it.

    Reads only the header (and EXIF orientation, which swaps the sides for 90-degree
    rotations); does not validate pixel data.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                w, h = im.size
                try:
                    orientation = im.getexif().get(_EXIF_ORIENTATION)
                except Exception:  # unreadable EXIF: size as stored
                    orientation = None
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(_pil_bomb_reason(e), str(path)) from None
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


# --------------------------------------------------------------------------- decoding


def _read_source(source: str | os.PathLike | bytes | BinaryIO) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    if hasattr(source, "read"):
        return source.read()
    raise TypeError(f"open_rgb takes a path, bytes or a binary file, got {type(source).__name__}")


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    """Steps: 1. open the header, 2. check the size, 3. decode, 4. verify, 5. normalise."""
    if not data:
        raise ImageDecodeError("zero-byte file")
    # 1. Open the header only. PIL's own bomb warning is silenced here (locally) because
    #    the explicit max_pixels check below is the one that decides.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageDecodeError("not an image") from None
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(_pil_bomb_reason(e)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageDecodeError(_load_failure_reason(e)) from None
    with im:
        # 2. Check the size before any pixel is decoded.
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageDecodeError(f"corrupt image: empty size {w}x{h}")
        if w * h > max_pixels:
            raise ImageDecodeError(
                f"decompression bomb: {w}x{h} px exceeds limit of {max_pixels} px"
            )
        # 3. Decode every pixel (raises on truncated data unless LOAD_TRUNCATED_IMAGES).
        try:
            im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error ...
            raise ImageDecodeError(_load_failure_reason(e)) from None
        # 4. PNG: check chunk CRCs and the end marker that load() does not read.
        if im.format == "PNG":
            _verify_png(data)
        # 5. Orientation, then colour mode.
        im = _apply_exif_orientation(im)
        return to_rgb(im)


def _verify_png(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as again:
            again.verify()
    except Exception as e:
        raise ImageDecodeError(_load_failure_reason(e)) from None


def _load_failure_reason(error: BaseException) -> str:
    msg = str(error).strip() or type(error).__name__
    if isinstance(error, EOFError) or "truncat" in msg.lower():
        return "truncated image"
    return f"corrupt image: {msg}"


def _pil_bomb_reason(error: BaseException) -> str:
    m = _PIL_BOMB.search(str(error))
    if m:
        return f"decompression bomb: {m.group(1)} px exceeds PIL's limit of {m.group(2)} px"
    return f"decompression bomb: {error}"


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:  # an unreadable EXIF block does not make the pixels unusable
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
        return im
    return im if out is None else out


# --------------------------------------------------------------------------- colour modes


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to a new 8-bit ``RGB`` image.

    - ``1``/``L``/``P``/``YCbCr``/``LAB``/``HSV``/``CMYK``/``RGBX``: PIL's conversion.
    - Transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, palette or colour-key
      ``transparency``): composited on a white background.
    - 16-bit integer (``I;16``, ``I;16B``, ``I;16L``): ``value / 257`` (0..65535 -> 0..255).
    - 32-bit integer ``I``: values within 0..255 kept, within 0..65535 scaled as 16-bit,
      otherwise stretched from their min..max to 0..255.
    - Float ``F``: values within 0..1 times 255, within 0..255 kept, otherwise stretched
      from min..max; NaN becomes 0.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(im), mode="L").convert("RGB")
    if mode == "La":
        im, mode = im.convert("RGBa"), "RGBa"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or (
        "transparency" in im.info and mode in ("P", "L", "RGB", "1")
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"unsupported image mode {mode} ({e})") from None


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """Scale a single-channel 16/32-bit integer or float image to uint8 (rules in to_rgb)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
