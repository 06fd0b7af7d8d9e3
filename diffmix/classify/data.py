"""Training data for the classifier: decoded-image stores, synthetic folders, p-mixing.

**Decoded images, within a memory budget.** Every image (real train, test and synthetic) is
used at the training resolution R as a uint8 ``(3, R, R)`` array (center square crop +
bicubic resize, ``PIL.ImageOps.fit``): ``3·R²`` bytes each (12 KB at 64 px, 150 KB at 224 px,
602 KB at 448 px -- CUB's 5,994 train + 5,794 test + 30,000 synthetic images at 448 px would be
25 GB). An :class:`ImageStore` holds one set; all the stores of a run share one
:class:`CacheBudget` (``TrainConfig.cache_mb``, default :data:`DEFAULT_CACHE_MB`), taken in the
order train, test, synthetic. A set that fits is decoded once into one tensor; a real set that
fits is also saved in the workspace (``<workspace>/cache/classify/<fingerprint>-<R>px.pt``,
keyed by the fingerprint of the exact (sub)set and the resolution), so a second run starts at
once. A set that does not fit streams from disk: the first images decoded keep the slots the
budget allows, the others are decoded again each time they are drawn (in a small thread pool:
PIL decodes without the GIL). The pixels do not depend on the budget, so neither does the
trained model; only the speed does. A training step gathers a batch
(:func:`gather_batch`) and augments it at once (:func:`augment_batch`).

**Synthetic folders** (generate-stage output, DESIGN.md §3): images under
``DIR/<target class>/<file>.png``, one row per image in ``DIR/metadata.jsonl`` and the job's
``DIR/config.json`` (with ``class_names``). :func:`read_synthetic` reads one or more such
folders; each row's label follows the rule the row names (``label_rule``, see
:mod:`diffmix.labels`): Diff-Mix rows are recomputed from the strength with the training run's
γ, mixup/cutmix rows keep their stored pixel share, ``*-aug``/``*-gen`` rows are one-hot.

**p-mixing** (:func:`plan_epoch`): each position of an epoch holds a real image, replaced
with probability p by a synthetic one that carries its soft label. The synthetic image is
drawn uniformly from the whole pool by default, as the Diff-Mix authors' training code does
(``synthetic_pick="uniform"``); ``"same_source"`` draws among the synthetic images made from
that very real image (falling back to uniform when there are none), as DA-Fusion does.

Over 400 lines because the three parts above are the classifier's one input path (files -> a
labelled uint8 batch), sharing the resize rule (:func:`fit_image`) and the seeds
(:func:`derive_seed`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from diffmix import synthetic
from diffmix.labels import row_label, row_rule
from diffmix.runs import atomic_target

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Decoded-image budget of a training run (MB) unless the config says otherwise: the demo
#: (720 images at 64 px: 9 MB) and CUB's train split at 224 px (5,994 x 150 KB = 0.9 GB) fit
#: whole; at 448 px the rest streams from disk. A choice of this project, sized for a 8-16 GB
#: machine; raise it where memory allows.
DEFAULT_CACHE_MB = 2048
#: Threads decoding the images a batch misses (PIL releases the GIL while decoding).
DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- image caches


def fit_image(im: Image.Image, resolution: int) -> np.ndarray:
    """An RGB image center-cropped to a square and resized to ``resolution`` px: (R, R, 3) uint8."""
    im = im.convert("RGB")
    if im.size != (resolution, resolution):
        im = ImageOps.fit(im, (resolution, resolution), Image.BICUBIC)
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy shares it)


def decode_images(ds, indices: Sequence[int], resolution: int) -> torch.Tensor:
    """Decode ``ds.image(i)`` for each index once: uint8 tensor (n, 3, R, R).

    Each image is written straight into the result, so the peak is the set's own ``3·R²·n``
    bytes plus one image (an HWC array permuted at the end would hold the set twice).
    """
    out = torch.empty((len(indices), 3, resolution, resolution), dtype=torch.uint8)
    for k, i in enumerate(indices):
        out[k] = torch.from_numpy(fit_image(ds.image(int(i)), resolution)).permute(2, 0, 1)
    return out


def decode_paths(paths: Sequence[str | os.PathLike], resolution: int) -> torch.Tensor:
    """Decode image files once (same rules as :func:`decode_images`): uint8 (n, 3, R, R)."""
    from diffmix.data import open_rgb

    out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    for k, p in enumerate(paths):
        out[k] = torch.from_numpy(fit_image(open_rgb(p), resolution)).permute(2, 0, 1)
    return out


def cached_images(
    ds, indices: Sequence[int], resolution: int, cache_dir: Path | None
) -> torch.Tensor:
    """:func:`decode_images`, kept in ``cache_dir`` keyed by (sub)set fingerprint + resolution.

    ``cache_dir=None`` decodes without saving. A cache file that does not load (torn, other
    version) is rebuilt.
    """
    if cache_dir is None:
        return decode_images(ds, indices, resolution)
    key = ds.select(list(indices)).fingerprint
    path = Path(cache_dir) / f"{key}-{resolution}px.pt"
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            images = data["images"]
            if data.get("version") == CACHE_VERSION and tuple(images.shape) == (
                len(indices),
                3,
                resolution,
                resolution,
            ):
                logger.info("image cache hit: %s", path.name)
                return images
        except Exception as e:  # a torn or foreign file: rebuild it
            logger.warning("ignoring unreadable image cache %s (%s)", path, e)
    images = decode_images(ds, indices, resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        torch.save({"version": CACHE_VERSION, "images": images}, tmp)
    return images


class CacheBudget:
    """Bytes of decoded images a run may hold, shared by its stores (``mb`` >= 0)."""

    def __init__(self, mb: float = DEFAULT_CACHE_MB) -> None:
        if not mb >= 0:
            raise ValueError(f"cache budget must be >= 0 MB, got {mb!r}")
        self.total = int(mb * (1 << 20))
        self.left = self.total

    def take(self, n: int, per_item: int) -> int:
        """Reserve room for up to ``n`` images of ``per_item`` bytes; returns how many fit."""
        k = min(n, self.left // max(per_item, 1))
        self.left -= k * per_item
        return k


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _decode_many(decode: Callable[[int], np.ndarray], items: list[int]) -> list[np.ndarray]:
    if len(items) < 2 or DECODE_WORKERS < 2:
        return [decode(i) for i in items]
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="decode"))
    return list(_POOL[0].map(decode, items))


class ImageStore:
    """``n`` images at ``resolution`` px, read by position as uint8 ``(k, 3, R, R)`` batches.

    ``decode(i)`` returns image ``i`` as an ``(R, R, 3)`` uint8 array. The first ``capacity``
    distinct images decoded stay in memory; the others are decoded at every :meth:`get`.
    Build one with :meth:`for_dataset`, :meth:`for_paths` or :meth:`from_tensor`.
    """

    def __init__(
        self, n: int, resolution: int, decode: Callable[[int], np.ndarray], capacity: int
    ) -> None:
        self.n, self.resolution, self.capacity = n, resolution, min(capacity, n)
        self._decode = decode
        self._images = torch.empty((self.capacity, 3, resolution, resolution), dtype=torch.uint8)
        self._slot = torch.full((n,), -1, dtype=torch.long)
        self._filled = 0
        self._complete = n == 0
        self._identity = False  # slot i holds image i (a fully decoded tensor)

    def __len__(self) -> int:
        return self.n

    @property
    def resident(self) -> int:
        """Images held in memory now."""
        return self._filled

    @classmethod
    def from_tensor(cls, images: torch.Tensor) -> ImageStore:
        """A store over an already decoded uint8 tensor ``(n, 3, R, R)``."""
        store = cls(len(images), images.shape[-1], _no_decode, 0)
        store.capacity = store._filled = len(images)
        store._images, store._complete, store._identity = images, True, True
        store._slot = torch.arange(len(images))
        return store

    @classmethod
    def for_dataset(
        cls,
        ds,
        indices: Sequence[int],
        resolution: int,
        budget: CacheBudget,
        cache_dir: Path | None = None,
    ) -> ImageStore:
        """Images ``ds.image(i)`` for ``i`` in ``indices``: decoded at once (and kept in
        ``cache_dir``, see :func:`cached_images`) when the whole set fits ``budget``, else
        streamed."""
        idx = [int(i) for i in indices]
        cap = budget.take(len(idx), 3 * resolution * resolution)
        if cap == len(idx):
            return cls.from_tensor(cached_images(ds, idx, resolution, cache_dir))
        return cls(len(idx), resolution, lambda k: fit_image(ds.image(idx[k]), resolution), cap)

    @classmethod
    def for_paths(
        cls, paths: Sequence[str | os.PathLike], resolution: int, budget: CacheBudget
    ) -> ImageStore:
        """Image files, decoded when first drawn (see :func:`decode_paths` for the rules)."""
        from diffmix.data import open_rgb

        files = list(paths)
        cap = budget.take(len(files), 3 * resolution * resolution)
        return cls(len(files), resolution, lambda k: fit_image(open_rgb(files[k]), resolution), cap)

    def get(self, positions: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The images at ``positions``: a new uint8 tensor ``(k, 3, R, R)``."""
        idx = torch.as_tensor(positions, dtype=torch.long).flatten()
        if self._identity:
            return self._images[idx]
        if self._complete:
            return self._images[self._slot[idx]]
        r = self.resolution
        out = torch.empty((len(idx), 3, r, r), dtype=torch.uint8)
        slot = self._slot[idx]
        hit = slot >= 0
        if bool(hit.any()):
            out[hit] = self._images[slot[hit]]
        miss = torch.nonzero(~hit).flatten()
        if len(miss):
            items = sorted(set(idx[miss].tolist()))
            decoded = dict(zip(items, _decode_many(self._decode, items), strict=True))
            for k in miss.tolist():
                out[k] = torch.from_numpy(decoded[int(idx[k])]).permute(2, 0, 1)
            for item, arr in decoded.items():
                if self._filled >= self.capacity:
                    break
                self._images[self._filled] = torch.from_numpy(arr).permute(2, 0, 1)
                self._slot[item] = self._filled
                self._filled += 1
            self._complete = self._filled == self.n
        return out


def _no_decode(i: int) -> np.ndarray:
    raise IndexError(f"image {i} is not in this store")


def gather_batch(
    real: ImageStore, synthetic: ImageStore, real_idx: torch.Tensor, syn_idx: torch.Tensor
) -> torch.Tensor:
    """One training batch: real image ``real_idx[k]``, or synthetic ``syn_idx[k]`` where that
    is >= 0 (a replaced position: its real image is not read)."""
    rep = syn_idx >= 0
    if not bool(rep.any()):
        return real.get(real_idx)
    r = real.resolution
    out = torch.empty((len(real_idx), 3, r, r), dtype=torch.uint8)
    keep = ~rep
    if bool(keep.any()):
        out[keep] = real.get(real_idx[keep])
    out[rep] = synthetic.get(syn_idx[rep])
    return out


# --------------------------------------------------------------------------- synthetic folders


@dataclass(frozen=True)
class SyntheticSet:
    """The usable rows of one or more synthetic folders, with labels for one training run.

    ``targets`` (m, C) are the labels by each row's rule (:mod:`diffmix.labels`): Diff-Mix
    rows recomputed with the run's γ, mixup/cutmix rows their stored pixel share, the rest
    one-hot; ``source_ids`` are the real items the images were translated from (``None`` when
    a row does not say).
    """

    paths: list[str]
    source_ids: list[str | None]
    source_labels: torch.Tensor  # (m,) int64
    target_labels: torch.Tensor  # (m,) int64
    strengths: torch.Tensor  # (m,) float32
    targets: torch.Tensor  # (m, C) float32
    dirs: list[str]
    label_rules: list[str] | None = None  # per row: diffmix-gamma, pixel-share or hard
    excluded: int = 0  # rows with kept == false
    missing: int = 0  # rows whose image file is absent or unusable

    def __len__(self) -> int:
        return len(self.paths)


def read_synthetic(
    dirs: Sequence[str | os.PathLike], class_names: Sequence[str], gamma: float
) -> SyntheticSet:
    """Read synthetic dataset folders for a run on ``class_names`` with soft-label power γ.

    Rows with ``kept == false`` are left out; a row whose file is missing is skipped with a
    warning. Raises ``ValueError`` when a folder is not a synthetic dataset, when its class
    names differ from ``class_names`` (the message names the classes on each side), or
    when a row is inconsistent (unknown class, strength outside [0, 1]).
    """
    # 1. Check inputs.
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    names = list(class_names)
    label_of = {n: i for i, n in enumerate(names)}
    paths, sources, src_labels, tgt_labels, strengths, targets = [], [], [], [], [], []
    rules: list[str] = []
    inferred_dirs: list[Path] = []
    excluded = missing = 0
    for d in dirs:
        root = Path(d).expanduser()
        # 2. The folder's own record: it must be made for the same classes.
        synthetic.check_classes(root, names)
        # 3. One row per image (one read of metadata.jsonl, one listing of the images).
        folder = synthetic.read_folder(root)
        missing += folder.bad_lines
        for row, where in zip(folder.rows, folder.where, strict=True):
            if row.get("kept", True) is False:
                excluded += 1
                continue
            file_name = row.get("file_name")
            path = root / str(file_name)
            if not file_name or not folder.has_image(row):
                logger.warning("%s: image %r not found; row skipped", where, file_name)
                missing += 1
                continue
            src, tgt = row.get("source_class"), row.get("target_class")
            # 4. The label, by the row's rule (diffmix.labels): diff-mix rows recomputed
            #    with this run's gamma, pixel-share rows (mixup/cutmix) as stored, hard rows
            #    one-hot. Rows older than the label_rule field: the rule of their strategy.
            try:
                rule, inferred = row_rule(row)
                vec = row_label(row, label_of, gamma)
            except ValueError as e:
                raise ValueError(f"{where}: {e} (classes: {', '.join(names)})") from None
            if inferred and root not in inferred_dirs:
                inferred_dirs.append(root)
                logger.info(
                    "%s: rows carry no label_rule (written before it existed); inferred from "
                    "each row's strategy (first: %s -> %s)", root, row.get("strategy"), rule
                )  # fmt: skip
            paths.append(str(path))
            sources.append(None if row.get("source_id") is None else str(row["source_id"]))
            src_labels.append(label_of[src])
            tgt_labels.append(label_of[tgt])
            strengths.append(float(row["strength"]) if row.get("strength") is not None else 1.0)
            rules.append(rule)
            targets.append(torch.from_numpy(vec).float())
    if missing:
        logger.warning("synthetic data: %d row(s) skipped (missing or unreadable files)", missing)
    logger.info(
        "synthetic data: %d image(s) from %d folder(s) (%d not kept by the filter)",
        len(paths),
        len(dirs),
        excluded,
    )
    return SyntheticSet(
        paths=paths,
        source_ids=sources,
        source_labels=torch.tensor(src_labels, dtype=torch.long),
        target_labels=torch.tensor(tgt_labels, dtype=torch.long),
        strengths=torch.tensor(strengths, dtype=torch.float32),
        targets=torch.stack(targets)
        if targets
        else torch.zeros(0, len(names), dtype=torch.float32),
        dirs=[str(Path(d)) for d in dirs],
        label_rules=rules,
        excluded=excluded,
        missing=missing,
    )


# --------------------------------------------------------------------------- p-mixing sampler


@dataclass(frozen=True)
class EpochPlan:
    """What each position of one epoch shows: a real image, or a synthetic one in its place.

    ``real[k]`` indexes the real training cache; ``synthetic[k]`` indexes the synthetic pool,
    ``-1`` where the real image is kept.
    """

    real: torch.Tensor  # (n,) int64
    synthetic: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return len(self.real)

    @property
    def replaced(self) -> torch.Tensor:
        """Boolean mask of the positions showing a synthetic image."""
        return self.synthetic >= 0


def plan_epoch(
    real_labels: torch.Tensor,
    *,
    num_synthetic: int = 0,
    p: float = 0.0,
    seed: int = 0,
    epoch: int = 0,
    balanced: bool = False,
    synthetic_sources: torch.Tensor | None = None,
    pick: str = "uniform",
) -> EpochPlan:
    """The order of one epoch and which real samples synthetic ones replace.

    1. Order: a permutation of the ``n`` real samples, or with ``balanced`` ``n`` draws with
       replacement where each class is equally likely (class-balanced sampling).
    2. Each position is replaced with probability ``p`` in [0, 1] (when ``num_synthetic > 0``).
    3. The replacement: uniform over the pool (``pick="uniform"``), or among the synthetic
       images whose source is that real sample (``pick="same_source"``;
       ``synthetic_sources[j]`` is the real index image j was made from, -1 if none), falling
       back to uniform when it has none.

    Deterministic for (``seed``, ``epoch``): a dedicated generator, no global RNG.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if pick not in ("uniform", "same_source"):
        raise ValueError(f"unknown synthetic pick {pick!r}; one of uniform, same_source")
    n = len(real_labels)
    gen = torch.Generator().manual_seed(derive_seed("plan", seed, epoch))
    # 1. Order.
    if balanced:
        counts = torch.bincount(real_labels, minlength=int(real_labels.max()) + 1).double()
        weights = 1.0 / counts[real_labels]
        order = torch.multinomial(weights, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    synthetic = torch.full((n,), -1, dtype=torch.long)
    if num_synthetic <= 0 or p <= 0.0:
        return EpochPlan(order, synthetic)
    # 2. Which positions are replaced.
    replace = torch.rand(n, generator=gen) < p
    # 3. By which synthetic image.
    uniform = torch.randint(0, num_synthetic, (n,), generator=gen)
    synthetic = torch.where(replace, uniform, synthetic)
    if pick == "same_source" and synthetic_sources is not None:
        by_source: dict[int, list[int]] = {}
        for j, src in enumerate(synthetic_sources.tolist()):
            if src >= 0:
                by_source.setdefault(src, []).append(j)
        u = torch.rand(n, generator=gen)
        for k in torch.nonzero(replace).flatten().tolist():
            pool = by_source.get(int(order[k]))
            if pool:
                synthetic[k] = pool[min(int(u[k] * len(pool)), len(pool) - 1)]
    return EpochPlan(order, synthetic)


# --------------------------------------------------------------------------- augmentation

#: ImageNet normalisation, used when a model does not declare its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def augment_batch(
    x: torch.Tensor,
    kind: str,
    gen: torch.Generator,
    *,
    scale_min: float = 0.35,
) -> torch.Tensor:
    """Random crop + horizontal flip of a float batch (n, 3, H, W), all in one ``grid_sample``.

    ``kind``: ``"resized_crop"`` (area fraction in [``scale_min``, 1], aspect ratio in
    [3/4, 4/3], resized back to H×W, bilinear), ``"crop"`` (shift by up to H/8 px with
    reflection padding, the CIFAR recipe) or ``"flip"`` (flip only). Random draws come from
    ``gen`` (CPU generator), so the same generator state gives the same batch.
    """
    n, _, h, w = x.shape
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    if kind == "resized_crop":
        area = scale_min + (1.0 - scale_min) * torch.rand(n, generator=gen)
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=gen)
        ratio = log_r.exp()
        sw = (area * ratio).sqrt().clamp(max=1.0)
        sh = (area / ratio).sqrt().clamp(max=1.0)
        tx = (1.0 - sw) * (2.0 * torch.rand(n, generator=gen) - 1.0)
        ty = (1.0 - sh) * (2.0 * torch.rand(n, generator=gen) - 1.0)
        theta[:, 0, 0], theta[:, 0, 2] = sw * flip, tx
        theta[:, 1, 1], theta[:, 1, 2] = sh, ty
        padding = "border"
    elif kind == "crop":
        pad = max(1, h // 8)
        dx = torch.randint(-pad, pad + 1, (n,), generator=gen).float()
        dy = torch.randint(-pad, pad + 1, (n,), generator=gen).float()
        theta[:, 0, 0], theta[:, 0, 2] = flip, 2.0 * dx / w
        theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2.0 * dy / h
        padding = "reflection"
    elif kind == "flip":
        theta[:, 0, 0], theta[:, 1, 1] = flip, 1.0
        padding = "border"
    else:
        raise ValueError(f"unknown augmentation {kind!r}; one of resized_crop, crop, flip")
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def normalize(
    x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype=torch.float32
) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float, scaled to [0, 1] then ``(x - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=dtype, device=x_uint8.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.to(dtype) / 255.0 - m) / s
