"""open_rgb on every odd kind of image file, and a folder holding all of them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from diffmix.data import ImageDecodeError, load_dataset, open_rgb
from diffmix.data.images import image_size, to_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise_rgb(size: int = 64, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` RGB pixels with a few bytes of data: a bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def gray_png() -> bytes:
    return _save(Image.new("L", (8, 6), 200), "PNG")


def bilevel_png() -> bytes:
    im = Image.new("1", (8, 8), 0)
    im.putpixel((0, 0), 1)
    return _save(im, "PNG")


def palette_transparent_png() -> bytes:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    for x in range(4, 8):
        for y in range(8):
            im.putpixel((x, y), 1)
    return _save(im, "PNG", transparency=0)  # index 0 (black) is transparent


def rgba_png() -> bytes:
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    im.putpixel((7, 7), (255, 0, 0, 255))
    im.putpixel((6, 7), (255, 0, 0, 128))
    return _save(im, "PNG")


def la_png() -> bytes:
    im = Image.new("LA", (8, 8), (0, 0))
    im.putpixel((7, 7), (0, 255))
    return _save(im, "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def sixteen_bit_png() -> bytes:
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    return _save(Image.fromarray(arr), "PNG")


def float_tiff() -> bytes:
    arr = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    return _save(Image.fromarray(arr, mode="F"), "TIFF")


def exif_rotated_jpeg() -> bytes:
    """40x20 stored pixels, red top-left corner, EXIF orientation 6 (rotate 90 deg CW)."""
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im, "JPEG", quality=95, exif=exif.tobytes())


def huge_png() -> bytes:
    return _save(Image.new("RGB", (5000, 5000), (10, 20, 30)), "PNG")


def truncated_jpeg() -> bytes:
    data = _save(_noise_rgb(), "JPEG", quality=90)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = _save(_noise_rgb(), "PNG")
    return data[: len(data) // 2]


# --------------------------------------------------------------------------- conversions


def test_grayscale_and_bilevel_become_rgb() -> None:
    gray = open_rgb(gray_png())
    assert gray.mode == "RGB" and gray.size == (8, 6)
    assert gray.getpixel((3, 3)) == (200, 200, 200)
    bil = open_rgb(bilevel_png())
    assert bil.mode == "RGB"
    assert bil.getpixel((0, 0)) == WHITE and bil.getpixel((5, 5)) == (0, 0, 0)


def test_palette_transparency_is_composited_on_white() -> None:
    im = open_rgb(palette_transparent_png())
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == WHITE  # transparent black -> white, not black
    assert im.getpixel((6, 3)) == RED


def test_rgba_and_la_composited_on_white() -> None:
    im = open_rgb(rgba_png())
    assert im.getpixel((0, 0)) == WHITE
    assert im.getpixel((7, 7)) == RED
    r, g, b = im.getpixel((6, 7))  # half-transparent red over white
    assert r == 255 and 120 <= g <= 135 and 120 <= b <= 135
    la = open_rgb(la_png())
    assert la.getpixel((0, 0)) == WHITE and la.getpixel((7, 7)) == (0, 0, 0)


def test_cmyk_jpeg_becomes_red() -> None:
    im = open_rgb(cmyk_jpeg())
    assert im.mode == "RGB"
    r, g, b = im.getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30


def test_sixteen_bit_png_scaled_by_full_range() -> None:
    src = Image.open(io.BytesIO(sixteen_bit_png()))
    assert src.mode.startswith("I")  # really a 16-bit image
    im = open_rgb(sixteen_bit_png())
    values = [im.getpixel((x, 0))[0] for x in range(4)]
    assert values == [0, 128, 255, 1]


def test_float_tiff_scaled() -> None:
    im = open_rgb(float_tiff())
    assert [im.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 64]


def test_other_modes_convert() -> None:
    big = Image.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32), mode="I")
    assert [to_rgb(big).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]  # stretched
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), mode="I")
    assert [to_rgb(small).getpixel((x, 0))[0] for x in range(3)] == [0, 7, 255]  # kept
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), mode="I")
    assert [to_rgb(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    big_endian = Image.new("I;16B", (2, 1), 65535)
    assert to_rgb(big_endian).getpixel((0, 0)) == WHITE
    wide_float = Image.fromarray(np.array([[-10.0, 10.0]], dtype=np.float32), mode="F")
    assert [to_rgb(wide_float).getpixel((x, 0))[0] for x in range(2)] == [0, 255]
    assert to_rgb(Image.new("HSV", (1, 1), (0, 255, 255))).getpixel((0, 0)) == RED
    r, g, b = to_rgb(Image.new("LAB", (1, 1), (255, 128, 128))).getpixel((0, 0))
    assert min(r, g, b) > 245  # L=100 is white, not (255, 128, 128)
    r, g, b = to_rgb(Image.new("YCbCr", (1, 1), (76, 85, 255))).getpixel((0, 0))
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_applied() -> None:
    im = open_rgb(exif_rotated_jpeg())
    assert im.size == (20, 40)  # sides swapped
    r, g, b = im.getpixel((17, 2))  # stored top-left is displayed top-right
    assert r > 200 and b < 60
    r, g, b = im.getpixel((2, 2))
    assert b > 200 and r < 60


def test_image_size_reads_header_with_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    path.write_bytes(exif_rotated_jpeg())
    assert image_size(path) == (20, 40)


def test_huge_but_allowed_image_decodes() -> None:
    im = open_rgb(huge_png())
    assert im.size == (5000, 5000) and im.getpixel((4999, 4999)) == (10, 20, 30)


# --------------------------------------------------------------------------- refusals


def test_decompression_bomb_refused_from_header() -> None:
    with pytest.raises(ImageDecodeError) as err:
        open_rgb(_png_header_only(20000, 20000))
    assert err.value.reason.startswith("decompression bomb")
    with pytest.raises(ImageDecodeError) as err:
        open_rgb(_png_header_only(3000, 3000), max_pixels=1_000_000)
    assert err.value.reason == "decompression bomb: 3000x3000 px exceeds limit of 1000000 px"


def test_max_pixels_is_checked_before_decoding() -> None:
    data = _save(Image.new("RGB", (100, 100)), "PNG")
    assert open_rgb(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageDecodeError, match="100x100 px exceeds limit of 9999 px"):
        open_rgb(data, max_pixels=9_999)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte file"),
        (b"hello, I am text pretending to be a jpeg\n", "not an image"),
        (truncated_jpeg(), "truncated image"),
        (truncated_png(), "truncated image"),
    ],
    ids=["zero-byte", "text", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        open_rgb(data)
    assert err.value.reason == reason


def test_png_missing_its_end_is_refused() -> None:
    data = _save(_noise_rgb(), "PNG")
    with pytest.raises(ImageDecodeError):
        open_rgb(data[:-20])  # pixels decode, but the last chunk and IEND are gone


def test_path_and_file_object_sources(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    path.write_bytes(gray_png())
    assert open_rgb(path).size == open_rgb(str(path)).size == (8, 6)
    with path.open("rb") as f:
        assert open_rgb(f).mode == "RGB"
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg: zero-byte file"):
        open_rgb(tmp_path / "empty.jpg")


def test_pil_globals_untouched() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError):
        open_rgb(_png_header_only(20000, 20000))
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------- a folder of them


GOOD = {
    "gray.png": gray_png,
    "bilevel.png": bilevel_png,
    "palette.PNG": palette_transparent_png,
    "rgba.png": rgba_png,
    "la.png": la_png,
    "cmyk.jpg": cmyk_jpeg,
    "deep.png": sixteen_bit_png,
    "float.tif": float_tiff,
    "rotated.JPEG": exif_rotated_jpeg,
    "huge.png": huge_png,
}
BAD = {
    "bomb.png": (lambda: _png_header_only(20000, 20000), "decompression bomb"),
    "cut.jpg": (truncated_jpeg, "truncated image"),
    "cut.png": (truncated_png, "truncated image"),
    "empty.jpg": (lambda: b"", "zero-byte file"),
    "text.jpg": (lambda: b"just some words\n", "not an image"),
    "notes.txt": (lambda: b"notes\n", "not an image file (extension .txt)"),
}


def test_folder_of_odd_images_loads_good_and_skips_bad(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    (root / "train" / "odd").mkdir(parents=True)
    (root / "test" / "odd").mkdir(parents=True)
    (root / "test" / "odd" / "t.png").write_bytes(gray_png())
    for name, make in GOOD.items():
        (root / "train" / "odd" / name).write_bytes(make())
    for name, (make, _) in BAD.items():
        (root / "train" / "odd" / name).write_bytes(make())
    (root / "train" / "odd" / ".DS_Store").write_bytes(b"\0junk")  # hidden: ignored

    ds = load_dataset(str(root))

    assert ds.class_names == ["odd"]
    assert sorted(Path(it.id).name for it in ds.items) == sorted(GOOD)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == set(BAD)
    for name, (_, reason) in BAD.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    for i in range(len(ds)):
        im = ds.image(i)
        assert im.mode == "RGB" and im.size[0] > 0
