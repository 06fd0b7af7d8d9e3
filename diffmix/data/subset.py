"""Few-shot and long-tail training subsets, saved so every stage uses the same one.

A :class:`Subset` is a sorted list of indices into the items of a *train* split, with
the options and seed that chose them and the fingerprint of the dataset they index. It is
saved as JSON beside the outputs of each stage; :meth:`Subset.check` refuses a dataset
whose fingerprint differs (other files, another split, another test fraction).

- **Few-shot** (``shots=k``): per class, in class order, one draw of ``k`` images with a
  single ``numpy.random.default_rng(seed)`` (a permutation of the class's images, first
  ``k`` kept). A class with fewer than ``k`` images keeps all (a warning is logged).
- **Long-tail** (``imbalance=F``, ``0 < F <= 1``): class ``i`` of ``C`` keeps
  ``n_i = max(1, floor(n_max * F ** (i / (C - 1))))`` images, capped at what it has, where
  ``n_max`` is the largest class count; drawn the same way. ``F = 1`` keeps everything.
- Neither: the whole train split.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffmix.data.dataset import ImageDataset

logger = logging.getLogger(__name__)

SUBSET_FORMAT = 1
_FIELDS = (
    "format",
    "spec",
    "split",
    "fingerprint",
    "seed",
    "shots",
    "imbalance",
    "indices",
    "counts",
)


class SubsetMismatchError(ValueError):
    """A saved subset used with a dataset it was not drawn from."""


@dataclass(frozen=True)
class Subset:
    """Indices (ascending) into ``ds.items`` of a train split, and how they were chosen.

    ``fingerprint`` is the fingerprint of the dataset the indices point into; ``counts``
    maps every class name (in class order) to the number of images kept.
    """

    indices: tuple[int, ...]
    seed: int
    shots: int | None
    imbalance: float | None
    counts: dict[str, int] = field(default_factory=dict, hash=False)
    fingerprint: str = ""
    spec: str = ""
    split: str = "train"

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what :meth:`save` writes)."""
        return {
            "format": SUBSET_FORMAT,
            "spec": self.spec,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "shots": self.shots,
            "imbalance": self.imbalance,
            "indices": list(self.indices),
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subset:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a ``ValueError``."""
        unknown = sorted(set(data) - set(_FIELDS))
        missing = sorted(set(_FIELDS) - {"format", "spec"} - set(data))
        if unknown or missing:
            raise ValueError(
                f"not a subset record: unknown keys {unknown}, missing keys {missing}; "
                "re-create it with make_subset"
            )
        if data.get("format", SUBSET_FORMAT) != SUBSET_FORMAT:
            raise ValueError(f"subset format {data['format']!r} is not {SUBSET_FORMAT}")
        indices = [int(i) for i in data["indices"]]
        if indices != sorted(set(indices)) or (indices and indices[0] < 0):
            raise ValueError("subset indices must be distinct, non-negative and ascending")
        return cls(
            indices=tuple(indices),
            seed=int(data["seed"]),
            shots=None if data["shots"] is None else int(data["shots"]),
            imbalance=None if data["imbalance"] is None else float(data["imbalance"]),
            counts={str(k): int(v) for k, v in data["counts"].items()},
            fingerprint=str(data["fingerprint"]),
            spec=str(data.get("spec", "")),
            split=str(data["split"]),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the subset as JSON to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Subset:
        """Read a subset written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not a subset JSON file: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{str(path)!r} is not a subset JSON object")
        return cls.from_dict(data)

    def check(self, ds: ImageDataset) -> None:
        """Raise :class:`SubsetMismatchError` unless ``ds`` is the dataset this was drawn from."""
        if ds.fingerprint != self.fingerprint:
            raise SubsetMismatchError(
                f"subset was drawn from dataset {self.spec!r} ({self.split}) with fingerprint "
                f"{self.fingerprint}, but {ds.spec!r} ({ds.split}) has fingerprint "
                f"{ds.fingerprint}; load the same dataset or draw the subset again"
            )
        if self.indices and self.indices[-1] >= len(ds):
            raise SubsetMismatchError(
                f"subset index {self.indices[-1]} is out of range for {len(ds)} items"
            )

    def apply(self, ds: ImageDataset) -> ImageDataset:
        """The dataset restricted to this subset (after :meth:`check`)."""
        self.check(ds)
        return ds.select(self.indices)


def make_subset(
    ds: ImageDataset,
    *,
    shots: int | None = None,
    imbalance: float | None = None,
    seed: int = 0,
) -> Subset:
    """Draw a few-shot (``shots >= 1``) or long-tail (``0 < imbalance <= 1``) subset of a
    train split, deterministically for a given ``seed`` (rules in the module docstring)."""
    # 1. Check inputs.
    if ds.split != "train":
        raise ValueError(
            f"subsets are drawn from the train split only, got split {ds.split!r}; "
            "load the dataset with split='train'"
        )
    if shots is not None and imbalance is not None:
        raise ValueError(
            f"give shots ({shots}) or imbalance ({imbalance}), not both: "
            "a subset is either few-shot or long-tail"
        )
    if shots is not None and (isinstance(shots, bool) or int(shots) != shots or shots < 1):
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    if imbalance is not None and not (0.0 < imbalance <= 1.0):
        raise ValueError(f"imbalance must be in (0, 1], got {imbalance!r}")

    # 2. How many images each class keeps.
    by_class = class_indices(ds)
    available = [len(ix) for ix in by_class]
    if shots is not None:
        wanted = [int(shots)] * len(by_class)
        for name, n in zip(ds.class_names, available, strict=True):
            if n < shots:
                logger.warning(
                    "class %r has %d images, fewer than %d shots: keeping all", name, n, shots
                )
    elif imbalance is not None:
        wanted = long_tail_counts(available, imbalance)
    else:
        wanted = available

    # 3. Draw per class with one seeded generator.
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for ix, k in zip(by_class, wanted, strict=True):
        order = rng.permutation(len(ix))
        chosen.extend(ix[j] for j in order[: min(k, len(ix))])
    chosen.sort()
    counts = dict.fromkeys(ds.class_names, 0)
    for i in chosen:
        counts[ds.class_names[ds.items[i].label]] += 1
    return Subset(
        indices=tuple(chosen),
        seed=int(seed),
        shots=None if shots is None else int(shots),
        imbalance=None if imbalance is None else float(imbalance),
        counts=counts,
        fingerprint=ds.fingerprint,
        spec=ds.spec,
        split=ds.split,
    )


def class_indices(ds: ImageDataset) -> list[list[int]]:
    """Item indices of each class (class order; each list ascending)."""
    out: list[list[int]] = [[] for _ in ds.class_names]
    for i, item in enumerate(ds.items):
        out[item.label].append(i)
    return out


def long_tail_counts(available: Sequence[int], imbalance: float) -> list[int]:
    """Images kept per class for an exponential long tail (Cui et al. 2019 profile).

    ``n_i = max(1, floor(n_max * imbalance ** (i / (C - 1))))`` capped at ``available[i]``
    (0 stays 0), where ``n_max = max(available)``; a tiny epsilon guards the floor against
    float round-off (``100 * 0.29`` is 28.999999999999996 in floats; we keep 29).
    """
    if not available:
        return []
    c = len(available)
    n_max = max(available)
    out = []
    for i, have in enumerate(available):
        exponent = i / (c - 1) if c > 1 else 0.0
        n = max(1, math.floor(n_max * imbalance**exponent + 1e-9))
        out.append(min(n, have))
    return out
