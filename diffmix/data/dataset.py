"""The loaded-dataset object every stage shares.

A :class:`ImageDataset` is one split of a dataset: an ordered list of items (an image and
an integer label each), the class names, a stable fingerprint, and the files skipped while
loading with the reason. Items are addressed by their position (``index``) and carry a
stable string ``id`` (relative path for folders, ``"<split>/<row>"`` for hub datasets)
that provenance records use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from diffmix.data.images import open_rgb


class DatasetError(ValueError):
    """A dataset spec that cannot be loaded, or a dataset that cannot be used.

    The message names the bad value (spec, path, column ...) and says what to do.
    """


@dataclass(frozen=True)
class Skipped:
    """A file left out of a dataset, and why (a short human-readable reason)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Item:
    """One image of a dataset.

    ``id`` is stable across runs and machines (relative path or ``split/row``); ``path`` is
    the file on disk, or ``None`` for images held by a hub dataset; ``mask_path`` is a
    foreground mask (white = foreground) when the dataset ships one.
    """

    id: str
    label: int
    path: str | None = None
    mask_path: str | None = None


@dataclass
class ImageDataset:
    """One split of a dataset, ready for every stage.

    ``loader(item) -> PIL.Image`` returns the decoded RGB image of an item; it is set by the
    source (folder, zip, hub) and is the only way stages read pixels.
    """

    spec: str
    split: str
    class_names: list[str]
    items: list[Item]
    loader: Callable[[Item], Image.Image]
    skipped: list[Skipped] = field(default_factory=list)
    fingerprint: str = ""
    #: Optional plain-word prompt per class (the demo ships one; ``classes.json`` in folders).
    class_prompts: dict[str, str] = field(default_factory=dict)
    #: The dataset's super-class word when known ("bird" for the demo), used in prompts.
    superclass: str | None = None
    #: Folder the dataset was read from (None for hub datasets).
    root: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]

    @property
    def counts(self) -> dict[str, int]:
        """Images per class name, in class order (zero-count classes included)."""
        out = dict.fromkeys(self.class_names, 0)
        for it in self.items:
            out[self.class_names[it.label]] += 1
        return out

    def image(self, index: int) -> Image.Image:
        """The RGB image at position ``index``."""
        return self.loader(self.items[index])

    def mask(self, index: int) -> Image.Image | None:
        """The foreground mask (mode ``L``) at ``index``, or None when the dataset has none."""
        mp = self.items[index].mask_path
        if mp is None:
            return None
        return open_rgb(mp).convert("L")

    def class_index(self, name: str) -> int:
        """Label of a class name; a clear ``ValueError`` naming the known classes otherwise."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown class {name!r}; this dataset has: {', '.join(self.class_names)}"
            ) from None

    def select(self, indices: Sequence[int]) -> ImageDataset:
        """A view holding only ``indices`` (in that order); fingerprint records the subset."""
        idx = list(indices)
        digest = hashlib.sha256(json.dumps([self.fingerprint, idx]).encode()).hexdigest()[:16]
        return ImageDataset(
            spec=self.spec,
            split=self.split,
            class_names=list(self.class_names),
            items=[self.items[i] for i in idx],
            loader=self.loader,
            skipped=list(self.skipped),
            fingerprint=digest,
            class_prompts=dict(self.class_prompts),
            superclass=self.superclass,
            root=self.root,
        )


def fingerprint_of(parts: Sequence[object]) -> str:
    """A short stable hex digest of JSON-serialisable parts (16 hex chars)."""
    return hashlib.sha256(
        json.dumps(list(parts), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def relpath(path: str | Path, root: str | Path) -> str:
    """POSIX relative path of ``path`` under ``root`` (stable item ids across OSes)."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
