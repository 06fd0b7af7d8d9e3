"""Write a dataset (or a subset of it) as a clean image folder that reloads.

Layout (rule 2 of :mod:`diffmix.data.folder`)::

    <out>/images/<class>/<name>.png    every image re-encoded as an RGB PNG
    <out>/masks/<class>/<name>.png     the foreground mask, when the item has one
    <out>/classes.json                 class -> prompt
    <out>/subset.json                  spec, split, fingerprint, indices, ids, superclass

``<name>`` comes from the item id: the part below the class folder (or the whole id when
it has no class folder, e.g. hub rows ``train/17``) with ``/`` replaced by ``__`` and the
image extension dropped; a name that would collide gets ``~<8 hex of sha1(id)>`` appended.
The folder is written in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from diffmix.data.dataset import ImageDataset, Item
from diffmix.data.images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


def default_prompt(class_name: str, superclass: str | None) -> str:
    """The prompt of a class without one: ``"a photo of a {class} {superclass or 'object'}"``."""
    return f"a photo of a {class_name} {superclass or 'object'}"


def export_dataset(
    ds: ImageDataset, indices: Sequence[int] | None, out_dir: str | os.PathLike
) -> Path:
    """Write items ``indices`` of ``ds`` (all when None) to ``out_dir``; returns ``out_dir``.

    ``out_dir`` must not exist or be empty (``ValueError`` otherwise). Images are decoded
    with the dataset's loader, so odd inputs (CMYK, 16-bit, EXIF-rotated ...) come out as
    plain RGB PNGs; masks are saved as ``L`` PNGs.
    """
    # 1. Check inputs.
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(
            f"export folder {str(out_dir)!r} already exists and is not empty; "
            "choose a new folder or remove it"
        )
    idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < len(ds)]
    if bad:
        raise ValueError(f"indices out of range for {len(ds)} items: {bad[:5]}")
    names = export_names([ds.items[i] for i in idx], ds.class_names)

    # 2. Write everything into a temporary sibling.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for i, name in zip(idx, names, strict=True):
            cls = ds.class_names[ds.items[i].label]
            (tmp / "images" / cls).mkdir(parents=True, exist_ok=True)
            ds.image(i).save(tmp / "images" / cls / name, format="PNG")
            mask = ds.mask(i)
            if mask is not None:
                (tmp / "masks" / cls).mkdir(parents=True, exist_ok=True)
                mask.save(tmp / "masks" / cls / name, format="PNG")
        prompts = {
            c: ds.class_prompts.get(c) or default_prompt(c, ds.superclass) for c in ds.class_names
        }
        _write_json(tmp / "classes.json", prompts)
        _write_json(
            tmp / "subset.json",
            {
                "spec": ds.spec,
                "split": ds.split,
                "fingerprint": ds.fingerprint,
                "indices": idx,
                "ids": [ds.items[i].id for i in idx],
                "superclass": ds.superclass,
            },
        )
        # 3. Move into place.
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %d images to %s", len(idx), out_dir)
    return out_dir


def export_names(items: Sequence[Item], class_names: Sequence[str]) -> list[str]:
    """Unique, stable PNG file names for ``items`` (rule in the module docstring)."""
    names: list[str] = []
    used: set[tuple[int, str]] = set()
    for item in items:
        name = _base_name(item.id, class_names[item.label])
        if (item.label, name) in used:
            stem = name[: -len(".png")]
            name = f"{stem}~{hashlib.sha1(item.id.encode()).hexdigest()[:8]}.png"
        used.add((item.label, name))
        names.append(name)
    return names


def _base_name(item_id: str, class_name: str) -> str:
    parts = list(PurePosixPath(item_id).parts)
    dirs = parts[:-1]
    if class_name in dirs:  # keep only the path below the (last) class folder
        parts = parts[len(dirs) - dirs[::-1].index(class_name) :]
    name = "__".join(p for p in parts if p not in ("", ".", ".."))
    suffix = PurePosixPath(name).suffix
    if suffix.lower() in IMAGE_EXTENSIONS:
        name = name[: -len(suffix)]
    return (name or "image") + ".png"


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
