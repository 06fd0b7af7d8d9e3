"""Dataset sources, subsets and exports: everything a stage needs to read images.

One string, the *dataset spec*, names a dataset everywhere (CLI, configs, UI):

- ``demo`` or ``demo:SEED`` -- the built-in toy-bird dataset (rendered once into the
  workspace), with masks and class prompts;
- a folder of class subfolders (layouts in :mod:`diffmix.data.folder`); write
  ``./demo`` for a folder literally named ``demo``;
- a ``.zip`` of such a folder (extracted safely, :mod:`diffmix.data.archive`);
- ``hub:<owner>/<name>[:split]`` -- a Hugging Face Hub dataset with image and label
  columns (:mod:`diffmix.data.hub`).

:func:`load_dataset` returns one split as an :class:`ImageDataset`; :func:`make_subset`
draws a few-shot or long-tail :class:`Subset` of a train split; :func:`export_dataset`
writes a (sub)set as a folder that reloads; :func:`summarize` describes one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from diffmix import workspace
from diffmix.data.archive import load_zip
from diffmix.data.dataset import DatasetError, ImageDataset, Item, Skipped
from diffmix.data.export import export_dataset
from diffmix.data.folder import check_split, check_test_fraction, load_folder
from diffmix.data.images import ImageDecodeError, image_size, open_rgb
from diffmix.data.subset import Subset, SubsetMismatchError, make_subset

logger = logging.getLogger(__name__)

ACCEPTED_SPECS = (
    "'demo' (or 'demo:SEED'), a folder of class subfolders, a .zip of such a folder, "
    "or 'hub:<owner>/<name>[:split]'"
)
_DEMO = re.compile(r"^demo(?::(-?\d+))?$")

__all__ = [
    "ACCEPTED_SPECS",
    "DatasetError",
    "ImageDataset",
    "ImageDecodeError",
    "Item",
    "Skipped",
    "Subset",
    "SubsetMismatchError",
    "export_dataset",
    "load_dataset",
    "load_subset",
    "make_subset",
    "open_rgb",
    "summarize",
]


def load_dataset(spec: str, *, split: str = "train", test_fraction: float = 0.2) -> ImageDataset:
    """Load one split (``"train"`` or ``"test"``) of the dataset named by ``spec``.

    ``test_fraction`` in (0, 1) is the per-class share held out as the test split when the
    source has no test split of its own. Raises :class:`DatasetError` for a spec that names
    nothing usable (the message lists the accepted forms).
    """
    spec = spec.strip() if isinstance(spec, str) else spec
    if not isinstance(spec, str) or not spec:
        raise DatasetError(f"empty dataset spec {spec!r}; give {ACCEPTED_SPECS}")
    check_test_fraction(test_fraction)
    demo = _DEMO.match(spec)
    if demo:
        check_split(split)
        return _load_demo(spec, int(demo.group(1) or 0), split, test_fraction)
    if spec.startswith("hub:"):
        from diffmix.data.hub import load_hub, parse_hub_spec

        repo_id, hub_split = parse_hub_spec(spec, split)
        return load_hub(repo_id, split=hub_split, test_fraction=test_fraction, spec=spec)
    check_split(split)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path, split=split, test_fraction=test_fraction, spec=spec)
    if path.is_file() and path.suffix.lower() == ".zip":
        return load_zip(path, split=split, test_fraction=test_fraction, spec=spec)
    if path.is_file():
        raise DatasetError(f"{spec!r} is a file but not a .zip archive; give {ACCEPTED_SPECS}")
    raise DatasetError(f"no dataset named {spec!r} (no such folder or file); give {ACCEPTED_SPECS}")


def _load_demo(spec: str, seed: int, split: str, test_fraction: float) -> ImageDataset:
    from diffmix.data.demo import DemoConfig, write_demo

    root = write_demo(workspace.subdir("datasets"), DemoConfig(seed=seed))
    return load_folder(root, split=split, test_fraction=test_fraction, spec=spec)


def load_subset(
    spec: str,
    *,
    split: str = "train",
    shots: int | None = None,
    imbalance: float | None = None,
    seed: int = 0,
) -> tuple[ImageDataset, Subset]:
    """Load a train split and draw a subset of it in one call (see :func:`make_subset`)."""
    ds = load_dataset(spec, split=split)
    return ds, make_subset(ds, shots=shots, imbalance=imbalance, seed=seed)


def summarize(ds: ImageDataset, subset: Subset | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``ds`` (restricted to ``subset`` when given).

    Keys: spec, split, num_classes, num_images, class_names, counts (class -> images),
    skipped (``[{"path", "reason"}]``), fingerprint (of the dataset), subset_fingerprint
    (of the selection), indices, image_sizes (min/max width and height in px), seed,
    shots, imbalance, superclass.
    """
    if subset is not None:
        subset.check(ds)
        indices = list(subset.indices)
        counts = dict(subset.counts)
    else:
        indices = list(range(len(ds)))
        counts = ds.counts
    return {
        "spec": ds.spec,
        "split": ds.split,
        "num_classes": ds.num_classes,
        "num_images": len(indices),
        "class_names": list(ds.class_names),
        "counts": counts,
        "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped],
        "fingerprint": ds.fingerprint,
        "subset_fingerprint": ds.select(indices).fingerprint if subset is not None else None,
        "indices": indices,
        "image_sizes": _image_sizes(ds, indices),
        "seed": subset.seed if subset is not None else None,
        "shots": subset.shots if subset is not None else None,
        "imbalance": subset.imbalance if subset is not None else None,
        "superclass": ds.superclass,
    }


def _image_sizes(ds: ImageDataset, indices: list[int]) -> dict[str, int | None]:
    """Min/max width and height (px) over ``indices``; file headers only where possible."""
    sizes = []
    for i in indices:
        path = ds.items[i].path
        sizes.append(image_size(path) if path is not None else ds.image(i).size)
    if not sizes:
        return {"min_width": None, "max_width": None, "min_height": None, "max_height": None}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "min_width": min(widths),
        "max_width": max(widths),
        "min_height": min(heights),
        "max_height": max(heights),
    }
