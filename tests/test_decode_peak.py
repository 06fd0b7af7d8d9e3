"""Decoding a whole image set holds it once: the peak is the set's bytes, not twice that.

``ImageStore.for_dataset`` decodes a set that fits the budget into one tensor; the budget
(``TrainConfig.cache_mb``) is only a bound if the decode itself does not need twice the room
(measured at 60k rows: a 2048 MB budget peaked at 3.4 GB before the fix).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from PIL import Image

from diffmix.classify.data import decode_images, decode_paths

N, R = 300, 224  # 300 x 150 KB = 45 MB decoded


def _hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM")


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError("no VmRSS")


def _peak_mb(fn) -> tuple[float, object]:
    """Peak RSS growth (MB) while ``fn()`` runs, via Linux's resettable high-water mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    start = _rss_kb()
    out = fn()
    return (_hwm_kb() - start) / 1024.0, out


class _Photos:
    """A dataset-like object: ``image(i)`` is a fresh 300 x 260 RGB photo."""

    def image(self, i: int) -> Image.Image:
        return Image.new("RGB", (300, 260), (i % 256, 80, 160))


@pytest.mark.parametrize("source", ["dataset", "paths"])
def test_decoding_a_set_holds_it_once(source: str, tmp_path: Path) -> None:
    set_mb = N * 3 * R * R / 2**20
    if source == "dataset":
        run = lambda: decode_images(_Photos(), range(N), R)  # noqa: E731
    else:
        files = []
        for i in range(N):
            f = tmp_path / f"{i}.png"
            _Photos().image(i).save(f)
            files.append(f)
        run = lambda: decode_paths(files, R)  # noqa: E731
    with contextlib.suppress(Exception):
        run()  # warm-up: first-use allocations are not the decode's
    peak, images = _peak_mb(run)
    assert images.shape == (N, 3, R, R) and images.is_contiguous()
    assert int(images[7, 0, 0, 0]) == 7  # image k at position k, channels first
    assert peak < 1.5 * set_mb, f"decoding {set_mb:.0f} MB peaked at {peak:.0f} MB"
