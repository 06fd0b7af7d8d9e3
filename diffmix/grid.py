"""Strength × seed grids of one translation, and a download that regenerates every cell.

A *grid* translates one source toward one target class at several strengths (columns) and
several seeds (rows) in one batched :func:`diffmix.translate.translate` call, the way
AUTOMATIC1111's X/Y plot does for img2img. :func:`grid_items` lays the items out row-major
(``cell k`` = row ``k // len(strengths)``, column ``k % len(strengths)``); :func:`write_bundle`
writes the cells as PNGs, one contact sheet and a ``metadata.json`` holding every setting a cell
needs to be made again (:func:`bundle_config`, :func:`bundle_item`).

Public API: :func:`parse_numbers`, :func:`check_grid`, :func:`grid_items`,
:func:`contact_sheet`, :func:`write_bundle`, :func:`read_bundle`, :func:`bundle_config`,
:func:`bundle_item`. No gradio here.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from diffmix.translate import TranslateConfig, TranslationItem

#: ``format`` of a bundle's metadata.json.
BUNDLE_FORMAT = "diffmix-preview/1"
METADATA_NAME = "metadata.json"
SHEET_NAME = "grid.png"


def parse_numbers(text: str | Sequence[float] | None, name: str, *, whole: bool = False) -> list:
    """``"0.3, 0.5 0.7"`` -> ``[0.3, 0.5, 0.7]`` (``whole``: ints); ``ValueError`` naming ``name``.

    Duplicates are dropped (first kept); an empty text gives ``[]``.
    """
    if text is None:
        return []
    parts = (
        [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p.strip()]
        if isinstance(text, str)
        else list(text)
    )
    out: list = []
    for p in parts:
        try:
            value = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers separated by commas, got {p!r}") from None
        if whole:
            if value != int(value) or value < 0:
                raise ValueError(f"{name} must be whole numbers >= 0, got {p!r}")
            value = int(value)
        if value not in out:
            out.append(value)
    return out


def check_grid(strengths: Sequence[float], seeds: Sequence[int], max_images: int) -> None:
    """``ValueError`` unless the grid has a strength and a seed, every strength is in (0, 1]
    and ``len(strengths) * len(seeds) <= max_images`` (``0``: no limit)."""
    if not strengths:
        raise ValueError("give at least one strength in (0, 1] (e.g. 0.3, 0.5, 0.7)")
    if not seeds:
        raise ValueError("give at least one seed (e.g. 0, 1, 2)")
    bad = [s for s in strengths if not 0.0 < float(s) <= 1.0]
    if bad:
        raise ValueError(f"strength must be in (0, 1], got {bad[0]:g}")
    n = len(strengths) * len(seeds)
    if max_images and n > max_images:
        raise ValueError(
            f"a grid of {len(seeds)} seeds × {len(strengths)} strengths is {n} images, over "
            f"this deployment's limit of {max_images} per preview; use fewer seeds or strengths"
        )


def grid_items(
    source: Image.Image | None,
    source_class: str | None,
    target_class: str,
    strengths: Sequence[float],
    seeds: Sequence[int],
    partner: Image.Image | None = None,
) -> list[TranslationItem]:
    """One item per cell, row-major: rows = ``seeds``, columns = ``strengths``."""
    return [
        TranslationItem(source, source_class, target_class, float(s), int(seed), partner)
        for seed in seeds
        for s in strengths
    ]


def contact_sheet(
    images: Sequence[Image.Image],
    rows: int,
    cols: int,
    *,
    side: int = 128,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
) -> Image.Image:
    """The cells on one white sheet (each fitted in ``side`` px), labelled along the edges."""
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill {rows} rows × {cols} columns")
    left, top, pad = (64 if row_labels else 0), (20 if col_labels else 0), 4
    sheet = Image.new("RGB", (left + cols * (side + pad), top + rows * (side + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(col_labels):
        draw.text((left + c * (side + pad) + 4, 4), text, fill="black")
    for r, text in enumerate(row_labels):
        draw.text((4, top + r * (side + pad) + side // 2), text, fill="black")
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        cell = img.convert("RGB")
        scale = side / max(cell.size)
        cell = cell.resize((max(1, round(cell.width * scale)), max(1, round(cell.height * scale))),
                           Image.NEAREST if scale >= 1 else Image.BICUBIC)  # fmt: skip
        x = left + c * (side + pad) + (side - cell.width) // 2
        y = top + r * (side + pad) + (side - cell.height) // 2
        sheet.paste(cell, (x, y))
    return sheet


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_bundle(
    path: str | Path,
    images: Sequence[Image.Image],
    cells: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    *,
    rows: int,
    cols: int,
    source: Image.Image | None = None,
    partner: Image.Image | None = None,
) -> Path:
    """A zip of the cells (``r{row}_c{col}.png``), the contact sheet, the source (and mixing
    partner) as PNG, and ``metadata.json``: ``{"format", "settings", "rows", "cols", "cells"}``.

    ``settings`` holds what all cells share (a :class:`~diffmix.translate.TranslateConfig`'s
    fields under ``"translate"``, the dataset and source); each cell its strength, seed, prompt,
    soft label, scores and ``file``.
    """
    if len(images) != len(cells):
        raise ValueError(f"{len(images)} images but {len(cells)} metadata rows")
    path = Path(path)
    records = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, (img, cell) in enumerate(zip(images, cells, strict=True)):
            r, c = divmod(k, cols)
            name = f"r{r}_c{c}.png"
            zf.writestr(name, _png(img))
            records.append({**cell, "file": name, "row": r, "col": c})
        if source is not None:
            zf.writestr("source.png", _png(source))
        if partner is not None:
            zf.writestr("partner.png", _png(partner))
        zf.writestr(SHEET_NAME, _png(contact_sheet(images, rows, cols)))
        meta = {"format": BUNDLE_FORMAT, "settings": settings, "rows": rows, "cols": cols,
                "cells": records}  # fmt: skip
        zf.writestr(METADATA_NAME, json.dumps(meta, indent=1, default=str))
    return path


def read_bundle(path: str | Path) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """``(metadata, {file name: image})`` of a bundle made by :func:`write_bundle`."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read(METADATA_NAME))
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{Path(path).name} is not a Diff-Mix preview ({BUNDLE_FORMAT})")
        images = {}
        for name in zf.namelist():
            if name.endswith(".png"):
                images[name] = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
    return meta, images


def bundle_config(meta: dict[str, Any], **overrides: Any) -> TranslateConfig:
    """The :class:`~diffmix.translate.TranslateConfig` a bundle's cells were made with
    (``adapter=`` must be given again as a folder when the bundle names it only)."""
    return TranslateConfig(**{**meta["settings"]["translate"], **overrides})


def bundle_item(
    cell: dict[str, Any], source: Image.Image | None, partner: Image.Image | None = None
) -> TranslationItem:
    """The :class:`~diffmix.translate.TranslationItem` of one cell of a bundle."""
    return TranslationItem(source, cell.get("source_class"), cell["target_class"],
                           float(cell["strength"]), int(cell["seed"]), partner)  # fmt: skip
