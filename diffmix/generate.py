"""Batch generation: a plan of translations -> a synthetic dataset folder on disk.

Diff-Mix's data-making stage (Wang et al., CVPR 2024, arXiv 2403.19600): every real
training image is the source of ``M`` (``multiplier``) translations; for the mix strategies the
target class of each is drawn among the *other* classes, its strength fixed or drawn uniformly
from a list. The job is split in two:

1. **Plan** (pure data, :func:`plan_tasks`): ``M × |train subset|`` tasks ``(task, batch,
   source index/id/class, target class, strength, seed, partner)``. Task ``t`` uses source
   ``t mod n`` (round ``t div n``), so a stopped run has covered the sources evenly. Each task's
   draws come from ``numpy.random.default_rng([seed, t])`` and its image seed is
   :func:`task_seed` ``(seed, t)``: the plan is a pure function of the config and the dataset,
   written to ``plan.jsonl`` before any image is made (a rerun recomputes and compares it).
   Target rules (``targets``): ``uniform`` (among the other classes; the authors draw over all
   classes, docs/fidelity.md), ``confusion`` (targets drawn in
   proportion to a classifier's confusion with the source class; rows without confusion fall
   back to uniform) and ``tail`` (weight ``∝ 1 / count_c`` of the subset: head-class sources
   carry their backgrounds into tail classes).
2. **Execute**: one :func:`diffmix.translate.translate` call (one shared denoising loop) per
   plan *batch*. Batches are cut in task order, but inside each window of
   ``batch_size × |strengths|`` tasks the tasks are sorted by strength first (``grouping=
   "strength"``), so a batch mostly holds one strength and every UNet call of its loop runs on
   the whole batch (``grouping="order"`` keeps plain task order; ``benchmarks/generate.py``
   measures both). Each image is written atomically (temp file + ``os.replace``), then the
   batch's metadata rows are appended with one write + flush + fsync. A run killed at any
   moment (even ``kill -9``) loses at most the batch in flight: a rerun (``--resume`` or not)
   drops torn metadata lines and temp files, skips finished tasks (a row *and* its image) and
   never duplicates a row.

Output folder ``out`` (also the job's run directory, :mod:`diffmix.runs`)::

    <target class>/<task:07d>.png   the images (each at its source's size)
    metadata.jsonl     one JSON row per image (see :data:`ROW_FIELDS`): file_name, task,
                       batch, source_index, source_id, source_class, target_class, strength,
                       seed, strategy, prompt, soft_label {class: weight}, label_rule
                       (how training reads the label: diffmix.labels), faithfulness,
                       diversity, kept, model + adapter and their fingerprints, steps, ...
    config.json        the resolved GenerateConfig + class_names, dataset, subset, fingerprints
    plan.jsonl         the plan, one task per line
    README.md          dataset card: counts per target class and strength, command, grid.png
    grid.png           sample images (rows = target classes)
    status.json, events.jsonl, log.txt, CANCEL   run-directory files

``datasets.load_dataset("imagefolder", data_dir=out)`` opens the folder (one row per image, the
metadata as columns; ``soft_label`` becomes a struct over the classes, absent weights null).
**Filter**: ``filter_bottom=f`` marks the ``round(f·n)`` least faithful images ``kept: false``
at the end of the run (images stay on disk; :func:`diffmix.classify.read_synthetic` skips them);
rerunning with another ``f`` re-marks without regenerating.

**Exactness**: any row is regenerated bit-exactly by :func:`regenerate` (same machine type,
torch version, device and dtype): it re-runs the row's whole plan batch, since batching changes
pixels by float round-off. Because a batch is also the unit of work of a resumed run, a resumed
folder is bit-identical to an uninterrupted one.

**Scale out**: under ``accelerate launch --multi_gpu --num_processes N -m diffmix generate ...``
(or ``torchrun --nproc_per_node N -m diffmix generate ...``, also on CPUs: gloo; note that
``accelerate launch --cpu`` starts a single process), plan batch ``b`` goes to process
``b mod N`` (whole batches, so the pixels do not depend on N); each writes
``metadata.<rank>.jsonl``; the main process merges them after ``wait_for_everyone``. Only the
main process writes status and events. A cancel (``RunDir.request_cancel()``, or the UI's
button) stops every process after the same round of batches (they agree on it collectively);
rerun to continue.

Other strategies: ``*-aug`` rows have target = source; ``*-gen`` rows have no source
(``source_id`` null, ``source_class`` = target, strength 1); ``mixup``/``cutmix`` rows name a
``partner`` image of the target class, their ``strength`` is the requested pixel share and
their ``soft_label`` the exact one (CutMix: the box area). ``limit`` makes only the first N
tasks: a quick look, best into its own ``--out`` (the plan, hence the folder, differs).

Public API: :class:`GenerateConfig`, :class:`PlannedTask`, :func:`generate`, :func:`make_plan`,
:func:`plan_tasks`, :func:`target_weights`, :func:`task_seed`, :func:`assign_batches`,
:func:`bottom_fraction_mask`, :func:`read_confusion`, :func:`read_rows`, :func:`regenerate`,
:func:`command_for`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffmix.runs import DISK_FULL, Cancelled, RunDir
from diffmix.translate import STRATEGIES, get_strategy

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
PLAN_FILE = "plan.jsonl"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
GRID_FILE = "grid.png"
FORMAT = "diffmix-synthetic/1"
_TMP_SUFFIX = ".tmp"
#: File name of a task's image (``<class>/<task:07d>.png``).
_TASK_PNG = re.compile(r"^\d{7,}\.png$")
#: Files a run directory may hold before its config is written (a run stopped very early).
_RUN_FILES = frozenset(
    {"log.txt", "status.json", "events.jsonl", "CANCEL", "job.json", "stdout.log"}
)
#: Config fields that may change between runs into the same folder (they change no pixel).
RERUN_FREE_FIELDS = frozenset({"filter_bottom"})
#: Keys of every metadata row, in order.
ROW_FIELDS = (
    "file_name", "task", "batch", "source_index", "source_id", "source_class", "target_class",
    "strength", "seed", "strategy", "prompt", "soft_label", "label_rule", "faithfulness",
    "diversity", "judge", "kept",
    "partner_index", "partner_id", "steps_run", "num_inference_steps", "guidance_scale", "gamma",
    "model", "model_fingerprint", "adapter", "adapter_fingerprint", "dataset_fingerprint",
    "width", "height",
)  # fmt: skip


# --------------------------------------------------------------------------- config


class GenerateConfig(BaseModel):
    """Everything a generation run needs (unknown keys rejected); saved in ``config.json``."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    shots: int | None = Field(None, ge=1, description="few-shot subset: images per class")
    imbalance: float | None = Field(None, gt=0, le=1, description="long-tail factor F in (0, 1]")
    subset_seed: int = Field(0, ge=0, description="seed of the subset draw (as personalize's)")
    strategy: str = Field("diff-mix", description=f"one of {', '.join(STRATEGIES)}")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    adapter: str | None = Field(None, description="adapter folder (diff-* / ti-* strategies)")
    multiplier: int = Field(
        5, ge=1,
        description="translations per real training image (M); 5 = the authors' "
        "(4aa0ec8:scripts/sample.sh:16)",
    )  # fmt: skip
    strengths: list[float] | None = Field(
        None,
        description="strength(s) in (0, 1]: one value = fixed, several = drawn uniformly per "
        "task (default: 1 for *-gen, else 0.7, the authors' run.sh: 4aa0ec8:run.sh:24/46/64)",
    )
    targets: Literal["uniform", "confusion", "tail"] = Field(
        "uniform", description="how target classes are drawn (mix strategies)"
    )
    confusion: str | None = Field(
        None, description='confusion JSON {"class_names", "matrix"} (targets=confusion)'
    )
    limit: int | None = Field(None, ge=1, description="make only the first N planned tasks")
    filter_bottom: float = Field(
        0.0, ge=0, lt=1, description="fraction of least faithful images marked kept=false"
    )
    score: bool = Field(True, description="compute faithfulness and diversity per image")
    batch_size: int = Field(16, ge=1, description="images per shared denoising loop")
    grouping: Literal["strength", "order"] = Field(
        "strength", description="batch tasks of equal strength together, or in plain task order"
    )
    num_inference_steps: int = Field(
        25, ge=1, le=1000,
        description="timestep grid size (steps at s = 1; at most the schedulers' 1000 training timesteps); 25 = the authors' "
        "(a81337b:augmentation/diff_mix.py:159)",
    )  # fmt: skip
    guidance_scale: float = Field(
        7.5, ge=0,
        description="classifier-free guidance (<= 1: off); 7.5 = the authors' "
        "(a81337b:augmentation/diff_mix.py:86)",
    )  # fmt: skip
    gamma: float = Field(
        0.5, gt=0,
        description="soft-label exponent γ written into diff-mix rows (training recomputes "
        "them with its own γ); 0.5 = the authors' run.sh (4aa0ec8:run.sh:23/45/63)",
    )  # fmt: skip
    seed: int = Field(0, ge=0, description="plan seed: target/strength draws and image seeds")
    superclass: str | None = Field(
        None, description="word after class names in base-model prompts (default: dataset's)"
    )
    device: str | None = Field(None, description="cpu, cuda, ... (default: best available)")
    dtype: str | None = Field(None, description="auto, fp32, fp16, bf16 (default: auto)")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        return get_strategy(v).name

    @field_validator("strengths")
    @classmethod
    def _valid_strengths(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("strengths is empty; give at least one strength in (0, 1]")
        for s in v:
            if not (math.isfinite(s) and 0.0 < s <= 1.0):
                raise ValueError(f"strength must be in (0, 1], got {s!r}")
        return [float(s) for s in v]

    @model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        st = get_strategy(self.strategy)
        if self.shots is not None and self.imbalance is not None:
            raise ValueError(f"give shots ({self.shots}) or imbalance ({self.imbalance}), not both")
        if st.generative == "txt2img" and self.strengths not in (None, [1.0]):
            raise ValueError(
                f"{st.name} draws from pure noise: strength must be 1, got {self.strengths}"
            )
        if st.uses_adapter and not self.adapter:
            alt = st.name.replace("diff-", "real-").replace("ti-", "real-")
            raise ValueError(
                f"strategy {st.name!r} needs a personalized adapter folder (made by "
                f"`diffmix personalize`): pass --adapter DIR, or use {alt!r} for the base model"
            )
        if self.targets != "uniform" and st.target == "same":
            raise ValueError(
                f"targets={self.targets!r} chooses target classes, but {st.name} keeps the "
                "source class; use a *-mix strategy or targets='uniform'"
            )
        if self.targets == "confusion" and not self.confusion:
            raise ValueError(
                "targets='confusion' needs a confusion matrix file: pass --confusion FILE "
                "(e.g. the confusion.json a `diffmix train` run writes)"
            )
        if self.targets != "confusion" and self.confusion:
            raise ValueError(
                f"a confusion file ({self.confusion}) is only used with targets='confusion', "
                f"got targets={self.targets!r}"
            )
        if self.filter_bottom > 0 and not self.score:
            raise ValueError(
                f"filter_bottom={self.filter_bottom} drops the least faithful images, which "
                "needs the scores: keep score on"
            )
        return self

    def resolved(self) -> GenerateConfig:
        """A copy with the strategy-dependent default strengths filled in."""
        if self.strengths is not None:
            return self
        st = get_strategy(self.strategy)
        return self.model_copy(update={"strengths": [1.0] if st.generative == "txt2img" else [0.7]})

    @property
    def strength_sampling(self) -> str:
        """``"fixed"`` (one strength) or ``"uniform"`` (drawn per task from the list)."""
        return "fixed" if len(self.strengths or [0]) == 1 else "uniform"


# --------------------------------------------------------------------------- pure planning


@dataclass(frozen=True)
class PlannedTask:
    """One planned translation (a line of ``plan.jsonl``).

    Attributes:
        task: task id in [0, planned); round ``task div n`` of source ``task mod n``.
        batch: plan batch (one shared denoising loop; the unit of work and of exactness).
        source_index: index of the source in the train split; source_id its stable item id.
        source_class, target_class: class names.
        strength: in (0, 1].
        seed: the image's generator seed, :func:`task_seed` ``(config seed, task)``.
        partner_index, partner_id: mixup/cutmix partner image of the target class, else None.
    """

    task: int
    batch: int
    source_index: int
    source_id: str
    source_class: str
    target_class: str
    strength: float
    seed: int
    partner_index: int | None = None
    partner_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def task_seed(seed: int, task: int) -> int:
    """Image seed of a task: ``sha256("diffmix-generate/{seed}/{task}")`` mod 2^32."""
    digest = hashlib.sha256(f"diffmix-generate/{int(seed)}/{int(task)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def target_weights(
    rule: str,
    source: int,
    num_classes: int,
    *,
    exclude_source: bool,
    counts: Sequence[int] | None = None,
    confusion: np.ndarray | None = None,
    allowed: Sequence[bool] | None = None,
) -> np.ndarray:
    """Probabilities over target classes for one source class (float64, sums to 1).

    Rules: ``uniform`` (equal weights); ``confusion`` (row ``source`` of a confusion matrix,
    diagonal removed when ``exclude_source``; a row with no mass falls back to uniform);
    ``tail`` (``1 / max(count_c, 1)`` over the subset's ``counts``). ``exclude_source`` zeroes
    the source class (mix strategies); ``allowed`` zeroes other classes (e.g. classes without
    a partner image). Raises ``ValueError`` when no class is left.
    """
    mask = np.ones(num_classes, dtype=bool) if allowed is None else np.asarray(allowed, bool)
    if exclude_source:
        mask = mask.copy()
        mask[source] = False
    if not mask.any():
        raise ValueError(
            f"no possible target class for source class {source} of {num_classes}: "
            "a strategy that changes the class needs at least two classes"
        )
    if rule == "uniform":
        w = np.ones(num_classes)
    elif rule == "tail":
        if counts is None:
            raise ValueError("rule 'tail' needs the per-class counts")
        w = 1.0 / np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    elif rule == "confusion":
        if confusion is None:
            raise ValueError("rule 'confusion' needs a confusion matrix")
        w = np.clip(np.asarray(confusion, dtype=np.float64)[source], 0.0, None)
        if not (w * mask).sum() > 0:
            w = np.ones(num_classes)  # no confusion recorded for this class: uniform
    else:
        raise ValueError(f"unknown target rule {rule!r}; one of uniform, confusion, tail")
    w = w * mask
    return w / w.sum()


def assign_batches(
    strengths: Sequence[float], batch_size: int, grouping: str = "strength"
) -> list[int]:
    """Plan batch of each task (tasks in id order); batches are numbered in execution order.

    ``order``: consecutive runs of ``batch_size`` tasks. ``strength``: windows of
    ``batch_size × (distinct strengths)`` consecutive tasks, each sorted by strength
    (descending, ties by task id) and cut into batches -- a batch then mostly holds one
    strength, so its UNet calls all run on the full batch, while a stopped run has still
    covered the sources in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grouping not in ("strength", "order"):
        raise ValueError(f"unknown grouping {grouping!r}; one of strength, order")
    n = len(strengths)
    out = [0] * n
    window = batch_size * (len(set(strengths)) if grouping == "strength" else 1)
    batch = 0
    for start in range(0, n, window):
        ids = list(range(start, min(n, start + window)))
        if grouping == "strength":
            ids.sort(key=lambda i: (-strengths[i], i))
        for k in range(0, len(ids), batch_size):
            for i in ids[k : k + batch_size]:
                out[i] = batch
            batch += 1
    return out


def plan_tasks(
    source_labels: Sequence[int],
    *,
    num_classes: int,
    multiplier: int,
    strengths: Sequence[float],
    target_rule: Literal["same", "other", "any"],
    targets: str = "uniform",
    counts: Sequence[int] | None = None,
    confusion: np.ndarray | None = None,
    needs_partner: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    grouping: str = "strength",
    limit: int | None = None,
) -> list[dict[str, int | float | None]]:
    """The plan as pure data over positions in the subset (no dataset, no model).

    Args:
        source_labels: class label of each source (the subset, in order), length ``n >= 1``.
        num_classes: number of classes ``C``.
        multiplier: translations per source ``M >= 1``; the plan has ``M·n`` tasks (or
            ``limit`` if smaller); task ``t`` uses source position ``t mod n``.
        strengths: one (fixed) or several (drawn uniformly per task) values in (0, 1].
        target_rule: ``same`` (target = source class), ``other`` (never the source class) or
            ``any``; ``targets`` weights the allowed classes (:func:`target_weights`).
        counts: per-class subset counts (``tail``; default: counted from ``source_labels``).
        confusion: ``(C, C)`` matrix (``confusion``), row = true class.
        needs_partner: mixup/cutmix: draw a partner position of the target class (not the
            source itself when another exists); targets without any image are excluded.
        seed: plan seed; task ``t`` draws from ``numpy.random.default_rng([seed, t])``.

    Returns:
        one dict per task, in task order: ``task, batch, source_pos, source_label,
        target_label, strength, seed, partner_pos``.
    """
    # 1. Check inputs
    n = len(source_labels)
    if n == 0:
        raise ValueError("the training subset is empty: nothing to translate")
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    if not strengths:
        raise ValueError("give at least one strength in (0, 1]")
    for s in strengths:
        if not (math.isfinite(s) and 0.0 < s <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {s!r}")
    labels = np.asarray(source_labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"source labels must lie in [0, {num_classes})")
    if counts is None:
        counts = np.bincount(labels, minlength=num_classes).tolist()
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    allowed = [len(ix) > 0 for ix in by_class] if needs_partner else None

    # 2. One weight vector per source class (pure function of the class)
    weights: dict[int, np.ndarray] = {}
    if target_rule != "same":
        for c in sorted(set(labels.tolist())):
            weights[c] = target_weights(
                targets, c, num_classes, exclude_source=target_rule == "other",
                counts=counts, confusion=confusion, allowed=allowed,
            )  # fmt: skip

    # 3. Draw each task from its own generator
    total = multiplier * n if limit is None else min(limit, multiplier * n)
    rows: list[dict[str, int | float | None]] = []
    for t in range(total):
        rng = np.random.default_rng([int(seed), t])
        pos = t % n
        src = int(labels[pos])
        tgt = src if target_rule == "same" else int(rng.choice(num_classes, p=weights[src]))
        strength = float(strengths[int(rng.integers(len(strengths)))])
        partner = None
        if needs_partner:
            pool = by_class[tgt]
            if len(pool) > 1:
                pool = pool[pool != pos]
            partner = int(pool[int(rng.integers(len(pool)))])
        rows.append({"task": t, "source_pos": pos, "source_label": src, "target_label": tgt,
                     "strength": strength, "seed": task_seed(seed, t),
                     "partner_pos": partner})  # fmt: skip

    # 4. Batches
    for row, b in zip(
        rows, assign_batches([r["strength"] for r in rows], batch_size, grouping), strict=True
    ):
        row["batch"] = b
    return rows


def bottom_fraction_mask(scores: Sequence[float], fraction: float) -> np.ndarray:
    """Keep-mask dropping the ``round(fraction·n)`` lowest scores (half rounds up).

    Ties are broken by position (the earlier item is dropped first); ``fraction`` in [0, 1).
    ``diffmix.score.filter_least_faithful`` floors the count instead; this stage rounds so
    that e.g. 10% of 25 images drops 3, not 2.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if s.ndim != 1 or np.isnan(s).any():
        raise ValueError("scores must be a 1-D array without NaN")
    keep = np.ones(len(s), dtype=bool)
    drop = min(len(s), math.floor(fraction * len(s) + 0.5))
    if drop:
        keep[np.argsort(s, kind="stable")[:drop]] = False
    return keep


# --------------------------------------------------------------------------- plan io


def read_confusion(path: str | os.PathLike, class_names: Sequence[str]) -> np.ndarray:
    """A confusion matrix JSON ``{"class_names": [...], "matrix": [[...]]}`` in our class order.

    Rows are true classes, columns predictions (counts or rates, non-negative). The file's
    classes must be exactly the dataset's (any order; matched by name).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"confusion file {str(path)!r} not found; give a confusion.json")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"confusion file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "class_names" not in data or "matrix" not in data:
        raise ValueError(
            f'confusion file {str(path)!r} must hold {{"class_names": [...], "matrix": [[...]]}}'
        )
    names = [str(c) for c in data["class_names"]]
    try:
        m = np.asarray(data["matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"confusion file {str(path)!r}: matrix is not numeric") from None
    if m.shape != (len(names), len(names)):
        raise ValueError(
            f"confusion file {str(path)!r}: matrix shape {m.shape} does not match its "
            f"{len(names)} class names"
        )
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"confusion file {str(path)!r}: matrix must be finite and >= 0")
    if sorted(names) != sorted(class_names):
        raise ValueError(
            f"confusion file {str(path)!r} is for other classes: only in the file: "
            f"{sorted(set(names) - set(class_names))}; only in the dataset: "
            f"{sorted(set(class_names) - set(names))}"
        )
    order = [names.index(c) for c in class_names]
    return m[np.ix_(order, order)]


def make_plan(config: GenerateConfig, ds, subset) -> list[PlannedTask]:
    """The plan of ``config`` on train split ``ds`` restricted to ``subset`` (see module doc)."""
    cfg = config.resolved()
    st = get_strategy(cfg.strategy)
    indices = list(subset.indices)
    if not indices:
        raise ValueError(
            f"the training subset of {ds.spec!r} is empty (shots={cfg.shots}, "
            f"imbalance={cfg.imbalance}): nothing to translate; check the dataset"
        )
    labels = [ds.items[i].label for i in indices]
    confusion = (
        read_confusion(cfg.confusion, ds.class_names) if cfg.targets == "confusion" else None
    )
    rows = plan_tasks(
        labels,
        num_classes=ds.num_classes,
        multiplier=cfg.multiplier,
        strengths=cfg.strengths,
        target_rule=st.target,
        targets=cfg.targets,
        counts=[subset.counts.get(c, 0) for c in ds.class_names],
        confusion=confusion,
        needs_partner=st.generative == "none",
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        grouping=cfg.grouping,
        limit=cfg.limit,
    )
    names = ds.class_names
    out = []
    for r in rows:
        i = indices[r["source_pos"]]
        p = None if r["partner_pos"] is None else indices[r["partner_pos"]]
        out.append(
            PlannedTask(
                task=r["task"],
                batch=r["batch"],
                source_index=i,
                source_id=ds.items[i].id,
                source_class=names[r["source_label"]],
                target_class=names[r["target_label"]],
                strength=r["strength"],
                seed=r["seed"],
                partner_index=p,
                partner_id=None if p is None else ds.items[p].id,
            )  # fmt: skip
        )
    return out


def read_plan(out: str | os.PathLike) -> list[PlannedTask]:
    """The plan saved in a generation folder."""
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ValueError(f"{str(out)!r} is not a generation folder (no {PLAN_FILE})")
    return [PlannedTask(**json.loads(line)) for line in path.read_text().splitlines() if line]


def _plan_text(plan: Sequence[PlannedTask]) -> str:
    return "".join(json.dumps(t.to_dict()) + "\n" for t in plan)


# --------------------------------------------------------------------------- files


def _io_error(path: Path, e: OSError, finished: int | None = None) -> OSError:
    """An OSError whose message names the path, the cause and what to do.

    ``finished``: the images finished in the folder (rows whose image is on disk).
    """
    kept = (
        f" The {finished} image(s) already finished there are kept; rerun to continue."
        if finished
        else ""
    )
    where = e.filename or path
    if e.errno in DISK_FULL:
        return OSError(
            e.errno,
            f"no space left on device while writing {str(where)!r}: free some space (or choose "
            f"another --out) and rerun the same command.{kept}",
        )
    return OSError(
        e.errno or errno.EACCES,
        f"cannot write to {str(where)!r} ({e.strerror or e}): make the output folder writable "
        f"(e.g. chmod -R u+w) or choose another --out.{kept}",
    )


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")


def _fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _save_png(image, path: Path) -> None:
    """Save a PIL image as PNG atomically (a half-written image never has the final name)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _fsync_write(path, buf.getvalue())


def _append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append rows to a JSONL file in one write, then flush + fsync."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn or unparsable line (a crash mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "task" in row:
            rows.append(row)
    return rows


def _rank_files(out: Path) -> list[Path]:
    return sorted(out.glob("metadata.*.jsonl"))


def _class_dir(name: str) -> str:
    """A folder name for a class (path separators and leading dots replaced)."""
    safe = name.replace("/", "_").replace("\\", "_").strip()
    safe = safe.lstrip(".") or "class"
    return safe


def _folder_fingerprint(path: Path, files: Iterable[Path]) -> str:
    """sha256 (16 hex) over relative paths, sizes and contents (head+tail of big files)."""
    h = hashlib.sha256()
    for f in sorted(files):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:  # multi-GB weights: the first and last MiB identify them
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def model_fingerprint(model: str) -> str:
    """Fingerprint of a base model: its folder's files (local), ``hub:<id>`` otherwise."""
    from diffmix.pipeline import resolve_model

    ref = resolve_model(model)
    if not ref.local:
        return f"hub:{ref.source}"
    root = Path(ref.source)
    return _folder_fingerprint(root, [p for p in root.rglob("*") if p.is_file()])


def adapter_fingerprint(adapter: str | None) -> str | None:
    """Fingerprint of an adapter folder: adapter.json, the LoRA and the token embeddings."""
    if not adapter:
        return None
    from diffmix.personalize import ADAPTER_FILE, LORA_FILE

    root = Path(adapter).expanduser()
    files = [root / ADAPTER_FILE, root / LORA_FILE, *(root / "embeddings").glob("*.safetensors")]
    return _folder_fingerprint(root, [f for f in files if f.is_file()])


# --------------------------------------------------------------------------- processes


class _Dist:
    """Rank, world size, device and barrier: accelerate's ``PartialState`` or one process."""

    def __init__(self, rank: int = 0, world: int = 1, state=None):
        self.rank, self.world, self.state = rank, world, state

    @classmethod
    def detect(cls) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # launched by accelerate / torchrun
            import torch
            from accelerate import PartialState

            # without a GPU, accelerate sets up gloo (MULTI_CPU) only when asked for the CPU
            st = PartialState(cpu=not torch.cuda.is_available())
            if st.num_processes != world:
                raise RuntimeError(
                    f"launched as {world} processes but accelerate set up {st.num_processes} "
                    f"({st.distributed_type}); check the launcher's settings"
                )
            return cls(st.process_index, st.num_processes, st)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        if self.state is None:
            return None
        dev = self.state.device
        return "cpu" if dev.type == "cpu" else str(dev)

    def barrier(self) -> None:
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()

    def _all_reduce_max(self, value: int) -> int:
        """The largest ``value`` over the processes (one collective; alone: ``value``)."""
        if self.state is None or self.world == 1:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([int(value)], dtype=torch.int64, device=self.state.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any process (every process must call it)."""
        return bool(self._all_reduce_max(int(flag)))

    def max(self, value: int) -> int:
        """The largest ``value`` over the processes (every process must call it)."""
        return self._all_reduce_max(value)


# --------------------------------------------------------------------------- generate


def generate(
    config: GenerateConfig,
    out: str | os.PathLike,
    resume: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
    _dist: _Dist | None = None,
) -> dict[str, Any]:
    """Run the plan of ``config`` into the synthetic dataset folder ``out``; returns a summary.

    A rerun into the same folder (``resume`` or not) continues where the last one stopped;
    ``resume`` only says so in the log. ``progress(done, planned)`` is called after each batch.

    Returns:
        ``{"out", "images" (rows on disk), "planned", "kept", "generated" (this run),
        "seconds", "images_per_s", "per_class" (target -> images), "per_strength"}``.

    Raises:
        ValueError: bad config values, empty dataset/subset, an adapter of the wrong kind or
            classes, a folder holding a generation with another config.
        OSError: an unwritable output folder (finished images are kept).
        Cancelled: a cancel was requested (rerun to continue).
    """
    from diffmix import score
    from diffmix.data import load_dataset, make_subset
    from diffmix.translate import TranslateConfig, _check_adapter_for

    dist = _dist or _Dist.detect()
    t_start = time.time()

    # 1. Check the config, the dataset and the subset
    cfg = config.resolved()
    st = get_strategy(cfg.strategy)
    ds = load_dataset(cfg.dataset, split="train")
    if len(ds) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has no training images; check the spec")
    subset = make_subset(ds, shots=cfg.shots, imbalance=cfg.imbalance, seed=cfg.subset_seed)
    if st.uses_adapter:
        from diffmix.personalize import read_adapter

        meta = read_adapter(cfg.adapter)
        _check_adapter_for(meta, st, cfg.model, ds.class_names)
        theirs = (meta.get("subset") or {}).get("indices")
        if theirs is not None and list(theirs) != list(subset.indices):
            logger.warning(
                "the adapter was personalized on another subset of the data (%d images) than "
                "this generation uses (%d images); pass the same --shots/--imbalance/--subset-seed",
                len(theirs), len(subset),
            )  # fmt: skip
    plan = make_plan(cfg, ds, subset)
    fp_model, fp_adapter = model_fingerprint(cfg.model), adapter_fingerprint(cfg.adapter)

    # 2. The output folder: writable, same config as before, temp files and torn rows cleaned
    out = Path(out).expanduser()
    _prepare_out(out, dist)
    record = _config_record(cfg, ds, subset, plan, fp_model, fp_adapter, out)
    if dist.is_main:
        _check_rerun(out, record, plan, resume)
    run = RunDir(out)
    with run.lifecycle("generate", report=dist.is_main, progress=0.0, message="preparing"):
        if dist.is_main:
            try:
                run.write_config(record)
                if not (out / PLAN_FILE).is_file():
                    _fsync_write(out / PLAN_FILE, _plan_text(plan).encode())
                run.clear_stale_cancel()
                _repair(out, {t.task for t in plan})
            except OSError as e:
                raise _io_error(out, e, _count_done(out)) from e
            run.set_status("running", progress=0.0, step=0, total=len(plan),
                           message="planning done")  # fmt: skip
            run.event("plan", tasks=len(plan), batches=plan[-1].batch + 1,
                      strategy=st.name, strengths=cfg.strengths)  # fmt: skip
        dist.barrier()

        # 3. What is left for this process: whole plan batches b with b mod world == rank
        done = _done_tasks(out)
        done_at_start = len(done)
        by_batch: dict[int, list[PlannedTask]] = {}
        for t in plan:
            by_batch.setdefault(t.batch, []).append(t)
        mine = [b for b in sorted(by_batch) if b % dist.world == dist.rank]
        todo = [b for b in mine if any(t.task not in done for t in by_batch[b])]
        n_mine = sum(len(by_batch[b]) for b in mine)
        n_left = sum(1 for b in todo for t in by_batch[b] if t.task not in done)
        if done:
            logger.info("%s: %d of %d task(s) already finished; %d left for this process",
                        "resuming" if resume else "continuing", len(done), len(plan), n_left)  # fmt: skip

        # 4. Scores: the judge, fitted on this run's own labelled images only (a few-shot or
        #    long-tail subset: no label outside it), once and cached in the workspace. The
        #    first process to take the cache's file lock fits it, the others wait on the lock
        #    and read the file: nobody waits in a collective meanwhile (a long fit on a large
        #    dataset passed the process group's timeout). Every process takes part (even one
        #    with nothing left), so none waits in the collectives below while another fits.
        rounds = dist.max(len(todo))  # the same number of loop rounds on every process
        clf = None
        if cfg.score and rounds:
            clf = score.reference_classifier(ds, indices=_judge_indices(cfg, subset))

        # 5. Execute batch by batch
        tcfg = TranslateConfig(
            strategy=st.name, model=cfg.model, adapter=cfg.adapter,
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
            gamma=cfg.gamma, batch_size=cfg.batch_size, device=cfg.device or dist.device,
            dtype=cfg.dtype,
        )  # fmt: skip
        rows_path = out / (METADATA_FILE if dist.world == 1 else f"metadata.{dist.rank}.jsonl")
        common = {
            "strategy": st.name, "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale, "gamma": cfg.gamma, "model": cfg.model,
            "model_fingerprint": fp_model, "adapter": cfg.adapter,
            "adapter_fingerprint": fp_adapter, "dataset_fingerprint": ds.fingerprint,
            "judge": None if clf is None else clf.judge,
        }  # fmt: skip
        from tqdm.auto import tqdm

        bar = tqdm(total=n_mine, initial=n_mine - n_left, desc="generate", unit="img",
                   disable=None)  # fmt: skip
        made, t_loop = 0, time.time()
        superclass = cfg.superclass or ds.superclass
        # Every process runs the same number of rounds and agrees on a cancel in each:
        # checking the cancel file alone, processes stopped at different batches and the
        # ones still running waited forever at the final barrier.
        for r in range(rounds):
            if dist.any(run.cancel_requested()):
                raise Cancelled(f"cancelled after {made} new image(s)")
            if r >= len(todo):
                continue  # this process is done; it only takes part in the cancel agreement
            b = todo[r]
            tasks = by_batch[b]
            results, sources = _translate_batch(tasks, ds, tcfg, superclass)
            pending = [k for k, t in enumerate(tasks) if t.task not in done]
            images = [results[k].image for k in pending]
            faith = div = None
            if clf is not None:
                faith = score.faithfulness(clf, images, [tasks[k].target_class for k in pending])
                if st.generative != "txt2img":
                    div = score.diversity_from_source(clf, images, [sources[k] for k in pending])
            rows, written = [], []
            try:
                for j, k in enumerate(pending):
                    t, r = tasks[k], results[k]
                    rel = f"{_class_dir(t.target_class)}/{t.task:07d}.png"
                    (out / rel).parent.mkdir(exist_ok=True)
                    _save_png(r.image, out / rel)
                    written.append(out / rel)
                    rows.append(_row(t, r, rel, st, common,
                                     None if faith is None else float(faith[j]),
                                     None if div is None else float(div[j])))  # fmt: skip
                _append_rows(rows_path, rows)
            except OSError as e:
                # the batch in flight is not finished: its images (no row, or a torn one) go,
                # so the count and the folder agree; the finished rows are counted on disk
                for f in written:
                    with contextlib.suppress(OSError):
                        f.unlink()
                raise _io_error(out, e, _count_done(out)) from e
            for row in rows:
                done.add(row["task"])
            made += len(rows)
            bar.update(len(rows))
            rate = made / max(time.time() - t_loop, 1e-9)
            if dist.is_main:  # with N processes: the main process's view (its own + earlier)
                n_done = len(done)
                run.event("progress", done=n_done, total=len(plan), batch=b,
                          images_per_s=round(rate, 4))  # fmt: skip
                run.set_status(step=n_done, progress=n_done / len(plan),
                               images_per_s=round(rate, 4), message="generating",
                               eta_s=(n_left - made) / max(rate, 1e-9))  # fmt: skip
            if progress is not None:
                progress(len(done), len(plan))
        bar.close()

        # 6. Merge, filter, dataset card (main process, once every process is done)
        dist.barrier()
        if dist.is_main:
            try:
                summary = _finish(out, cfg, ds, plan, record)
            except OSError as e:
                raise _io_error(out, e, _count_done(out)) from e
        dist.barrier()
        if not dist.is_main:
            summary = _summary(read_rows(out / METADATA_FILE), out, len(plan))
        seconds = time.time() - t_start
        generated = max(0, summary["images"] - done_at_start)  # by all processes
        summary.update(generated=generated, seconds=round(seconds, 3),
                       images_per_s=round(generated / max(time.time() - t_loop, 1e-9), 4))  # fmt: skip
        if dist.is_main:
            run.set_status("done", progress=1.0, step=len(plan), message="finished",
                           images=summary["images"], kept=summary["kept"])  # fmt: skip
            run.event("done", images=summary["images"], kept=summary["kept"],
                      generated=generated, seconds=round(seconds, 3))  # fmt: skip
        return summary


def _prepare_out(out: Path, dist: _Dist) -> None:
    """Create ``out`` and check that files can be created in it (clear ``OSError`` if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{os.getpid()}{_TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:  # name the folder, not the probe file
        bare = OSError(e.errno, e.strerror)
        raise _io_error(out, bare, _count_done(out) if out.is_dir() else None) from e


def _count_done(out: Path) -> int:
    rows = read_rows(out / METADATA_FILE)
    for p in _rank_files(out):
        rows += read_rows(p)
    return len({r["task"] for r in rows if (out / str(r.get("file_name", ""))).is_file()})


def _check_rerun(out: Path, record: dict, plan: Sequence[PlannedTask], resume: bool) -> None:
    """Refuse a folder that holds a generation with another config or plan."""
    old_path = out / CONFIG_FILE
    if not old_path.is_file():
        other = [p.name for p in out.iterdir()
                 if p.name not in _RUN_FILES and not p.name.startswith(".")]  # fmt: skip
        if other:
            raise ValueError(
                f"{str(out)!r} is not empty and holds no generation (found {sorted(other)[:3]}); "
                "choose an empty or new --out"
            )
        if resume:
            logger.info("nothing to resume in %s: starting a new generation", out)
        return
    try:
        old = json.loads(old_path.read_text())
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise ValueError(
            f"{str(out)!r} holds another job's config.json (not a generation); choose an empty "
            "or new --out"
        )
    keys = [k for k in GenerateConfig.model_fields if k not in RERUN_FREE_FIELDS]
    keys += ["model_fingerprint", "adapter_fingerprint", "dataset_fingerprint"]
    diff = [k for k in keys if old.get(k) != record.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {record.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"{str(out)!r} holds a generation made with other settings ({shown}); rerun with "
            "the same settings to continue it, or choose a new --out"
        )
    if (out / PLAN_FILE).is_file() and (out / PLAN_FILE).read_text() != _plan_text(plan):
        raise ValueError(
            f"the plan saved in {str(out)!r} differs from the one this config makes now (did "
            "the dataset change?); choose a new --out"
        )


def _repair(out: Path, planned: set[int]) -> None:
    """Start-of-run cleanup: temp files removed; metadata rows merged, torn lines and rows
    without an image dropped, duplicates removed (one ``metadata.jsonl``, atomically); task
    images without a row (the batch in flight of a killed run) removed -- they are made again."""
    for tmp in [*out.glob(f".*{_TMP_SUFFIX}"), *out.glob(f"*/.*{_TMP_SUFFIX}")]:
        with contextlib.suppress(OSError):
            tmp.unlink()
    rows = _merge_rows(out, planned)
    listed = {str(r.get("file_name")) for r in rows}
    orphans = [
        p for p in out.glob("*/*.png")
        if _TASK_PNG.match(p.name) and p.relative_to(out).as_posix() not in listed
    ]  # fmt: skip
    for p in orphans:
        with contextlib.suppress(OSError):
            p.unlink()
    if orphans:
        logger.info("removed %d image(s) without a metadata row (a batch in flight)", len(orphans))


def _merge_rows(out: Path, planned: set[int] | None = None) -> list[dict]:
    sources = [out / METADATA_FILE, *_rank_files(out)]
    by_task: dict[int, dict] = {}
    raw = 0
    for p in sources:
        for row in read_rows(p):
            raw += 1
            t = row.get("task")
            if not isinstance(t, int) or (planned is not None and t not in planned):
                continue
            if t not in by_task and (out / str(row.get("file_name", ""))).is_file():
                by_task[t] = row
    rows = [by_task[t] for t in sorted(by_task)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path = out / METADATA_FILE
    current = path.read_text() if path.is_file() else None
    if current != text and (rows or current is not None):
        _fsync_write(path, text.encode())
    for p in _rank_files(out):
        p.unlink()
    if raw != len(rows):
        logger.info("metadata: %d row(s) kept of %d read (torn, duplicate or imageless dropped)",
                    len(rows), raw)  # fmt: skip
    return rows


def _done_tasks(out: Path) -> set[int]:
    """Finished tasks: a metadata row whose image file exists."""
    rows = read_rows(out / METADATA_FILE)
    for p in _rank_files(out):
        rows += read_rows(p)
    return {r["task"] for r in rows if (out / str(r.get("file_name", ""))).is_file()}


def _source_items(tasks: Sequence[PlannedTask], ds, strategy) -> tuple[list, list]:
    from diffmix.translate import TranslationItem

    items, sources = [], []
    for t in tasks:
        if strategy.generative == "txt2img":
            src, src_cls = None, None
        else:
            src, src_cls = ds.image(t.source_index), t.source_class
        partner = ds.image(t.partner_index) if t.partner_index is not None else None
        items.append(TranslationItem(src, src_cls, t.target_class, t.strength, t.seed, partner))
        sources.append(src)
    return items, sources


def _translate_batch(tasks: Sequence[PlannedTask], ds, tcfg, superclass: str | None):
    """One plan batch through :func:`diffmix.translate.translate` (one shared loop)."""
    from diffmix.translate import translate

    st = get_strategy(tcfg.strategy)
    items, sources = _source_items(tasks, ds, st)
    if len(items) > tcfg.batch_size:
        tcfg = tcfg.model_copy(update={"batch_size": len(items)})
    results = translate(items, tcfg, class_names=ds.class_names, superclass=superclass)
    return results, sources


def _row(t: PlannedTask, r, rel: str, st, common: dict, faith, div) -> dict[str, Any]:
    gen = st.generative == "txt2img"
    row = {
        "file_name": rel, "task": t.task, "batch": t.batch,
        "source_index": None if gen else t.source_index,
        "source_id": None if gen else t.source_id,
        # text-to-image has no source: its "source class" is the target (label = one-hot)
        "source_class": t.target_class if gen else t.source_class,
        "target_class": t.target_class, "strength": t.strength, "seed": t.seed,
        "strategy": common["strategy"], "prompt": r.prompt,
        "soft_label": {k: float(v) for k, v in r.soft_label.items()},
        "label_rule": r.label_rule,
        "faithfulness": faith, "diversity": div,
        "judge": None if faith is None else common["judge"], "kept": True,
        "partner_index": t.partner_index, "partner_id": t.partner_id,
        "steps_run": r.steps_run, "num_inference_steps": common["num_inference_steps"],
        "guidance_scale": common["guidance_scale"], "gamma": common["gamma"],
        "model": common["model"], "model_fingerprint": common["model_fingerprint"],
        "adapter": common["adapter"], "adapter_fingerprint": common["adapter_fingerprint"],
        "dataset_fingerprint": common["dataset_fingerprint"],
        "width": r.image.width, "height": r.image.height,
    }  # fmt: skip
    return row


def _judge_indices(cfg, subset) -> list[int] | None:
    """The train indices the judge may see: the run's subset (few-shot / long-tail), else all."""
    return None if cfg.shots is None and cfg.imbalance is None else list(subset.indices)


def _judge_record(cfg, ds, subset) -> dict[str, Any] | None:
    """What judged the rows (``config.json``'s ``judge``): kind, images seen, diversity metric."""
    if not cfg.score:
        return None
    from diffmix import score

    kind = score.default_judge(ds.spec)
    seen = _judge_indices(cfg, subset)
    return {
        "judge": kind,
        "fit_on": "train" if seen is None else "subset",
        "train_images": len(ds) if seen is None else len(seen),
        "size": score.LITE0_JUDGE_SIZE if kind == "lite0" else None,
        "diversity_metric": (
            "lpips" if score.lpips_available()
            else f"{'lite0-imagenet' if kind == 'lite0' else kind}-feature-cosine"
        ),
    }  # fmt: skip


def _check_filter_judge(cfg, rows: Sequence[dict[str, Any]]) -> None:
    """Refuse to filter a few-shot / long-tail run by scores of a judge that saw other labels.

    Rows without a ``judge`` were scored by an earlier version whose judge was fitted on the
    whole train split -- labels outside the run's K shots; filtering by them leaks those
    labels into the synthetic set.
    """
    if not cfg.filter_bottom or (cfg.shots is None and cfg.imbalance is None):
        return
    leaky = [r for r in rows if r.get("faithfulness") is not None and not r.get("judge")]
    if leaky:
        raise ValueError(
            f"filter_bottom={cfg.filter_bottom}: {len(leaky)} image(s) were scored by a judge "
            "fitted on the whole train split (labels outside this run's subset); regenerate "
            "into a new --out to score them with a judge fitted on the subset, or use "
            "filter_bottom 0"
        )


def _config_record(cfg, ds, subset, plan, fp_model, fp_adapter, out) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved config + what a reader needs."""
    return {
        "format": FORMAT,
        **json.loads(cfg.model_dump_json()),
        "strength_sampling": cfg.strength_sampling,
        "class_names": list(ds.class_names),
        "superclass_resolved": cfg.superclass or ds.superclass,
        "dataset_fingerprint": ds.fingerprint,
        "subset": subset.to_dict(),
        "model_fingerprint": fp_model,
        "adapter_fingerprint": fp_adapter,
        "planned": len(plan),
        "batches": plan[-1].batch + 1 if plan else 0,
        "judge": _judge_record(cfg, ds, subset),
        "command": command_for(cfg, out),
    }


# --------------------------------------------------------------------------- finish


def _finish(out: Path, cfg: GenerateConfig, ds, plan, record: dict) -> dict[str, Any]:
    """Merge rank files, mark the filter, write the card and the grid; the summary."""
    rows = _merge_rows(out, {t.task for t in plan})
    _check_filter_judge(cfg, rows)
    scored = [r for r in rows if r.get("faithfulness") is not None]
    keep = bottom_fraction_mask([r["faithfulness"] for r in scored], cfg.filter_bottom)
    for r in rows:
        r["kept"] = True
    for r, k in zip(scored, keep, strict=True):
        r["kept"] = bool(k)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if (out / METADATA_FILE).read_text() != text:
        _fsync_write(out / METADATA_FILE, text.encode())
    summary = _summary(rows, out, len(plan))
    if rows:
        _write_grid(out, rows, ds.class_names)
    _fsync_write(out / CARD_FILE, dataset_card(rows, record, len(plan)).encode())
    return summary


def _summary(rows: Sequence[dict], out: Path, planned: int) -> dict[str, Any]:
    per_class = Counter(r["target_class"] for r in rows)
    per_strength = Counter(str(r["strength"]) for r in rows)
    return {
        "out": str(out),
        "images": len(rows),
        "planned": planned,
        "kept": sum(1 for r in rows if r.get("kept", True)),
        "per_class": dict(sorted(per_class.items())),
        "per_strength": dict(sorted(per_strength.items())),
    }


def _write_grid(out: Path, rows: Sequence[dict], class_names: Sequence[str],
                per_class: int = 6, max_classes: int = 12, thumb: int = 64) -> None:  # fmt: skip
    """``grid.png``: up to ``per_class`` kept images (columns) for up to ``max_classes``
    target classes (rows), each fitted into a ``thumb`` px square."""
    import io

    from PIL import Image, ImageOps

    picks: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("kept", True) and len(picks.setdefault(r["target_class"], [])) < per_class:
            picks[r["target_class"]].append(r)
    classes = [c for c in class_names if picks.get(c)][:max_classes]
    if not classes:
        return
    grid = Image.new("RGB", (per_class * thumb, len(classes) * thumb), (255, 255, 255))
    for y, c in enumerate(classes):
        for x, r in enumerate(picks[c]):
            with Image.open(out / r["file_name"]) as im:
                small = ImageOps.contain(im.convert("RGB"), (thumb, thumb))
            grid.paste(small, (x * thumb + (thumb - small.width) // 2,
                               y * thumb + (thumb - small.height) // 2))  # fmt: skip
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    _fsync_write(out / GRID_FILE, buf.getvalue())


def dataset_card(rows: Sequence[dict], record: dict, planned: int) -> str:
    """The folder's ``README.md``: what it is, counts per target class and strength, how to use."""

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return f"{sum(xs) / len(xs):.3f}" if xs else "-"

    kept = [r for r in rows if r.get("kept", True)]
    lines = [
        f"# Synthetic dataset: {record['strategy']} on `{record['dataset']}`",
        "",
        f"Made by `diffmix generate` (Diff-Mix Studio): {len(rows)} of {planned} planned "
        f"images, {len(kept)} kept. Model `{record['model']}` "
        f"(fingerprint `{record['model_fingerprint']}`)"
        + (
            f", adapter `{record['adapter']}` (`{record['adapter_fingerprint']}`)"
            if record.get("adapter")
            else ""
        )  # fmt: skip
        + f"; {record['num_inference_steps']} steps, guidance {record['guidance_scale']}, "
        f"γ = {record['gamma']}, strengths {record['strengths']} ({record['strength_sampling']}), "
        f"targets {record['targets']}, multiplier {record['multiplier']}.",
        "",
        "```",
        record["command"],
        "```",
        "",
    ]
    j = record.get("judge")
    if j:
        seen = "this run's subset" if j["fit_on"] == "subset" else "the whole train split"
        lines += [
            f"Scores: faithfulness by the `{j['judge']}` judge fitted on {j['train_images']} "
            f"labelled images ({seen}); diversity: `{j['diversity_metric']}`.",
            "",
        ]
    if record.get("filter_bottom"):
        lines += [
            f"The {record['filter_bottom']:.0%} least faithful images are marked `kept: false` "
            "in `metadata.jsonl` (their files stay on disk); `diffmix train` skips them.",
            "",
        ]
    lines += ["## Per target class", "", "| class | images | kept | faithfulness (mean) |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for c in record["class_names"]:
        rc = [r for r in rows if r["target_class"] == c]
        if rc:
            lines.append(f"| {c} | {len(rc)} | {sum(1 for r in rc if r.get('kept', True))} | "
                         f"{mean(r.get('faithfulness') for r in rc)} |")  # fmt: skip
    lines += ["", "## Per strength", "", "| strength | images | faithfulness | diversity |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for s in sorted({r["strength"] for r in rows}):
        rs = [r for r in rows if r["strength"] == s]
        lines.append(f"| {s} | {len(rs)} | {mean(r.get('faithfulness') for r in rs)} | "
                     f"{mean(r.get('diversity') for r in rs)} |")  # fmt: skip
    lines += [
        "",
        "## Samples",
        "",
        f"![samples (rows: target classes)]({GRID_FILE})",
        "",
        "## Files",
        "",
        "- `<target class>/<task>.png`: the images; `metadata.jsonl`: one row per image "
        "(source, target, strength, seed, prompt, soft label, scores, `kept`, fingerprints);",
        "- `config.json`: the resolved settings, class names, dataset and subset; `plan.jsonl`: "
        "every planned task.",
        '- Open it with `datasets.load_dataset("imagefolder", data_dir=...)`; train with '
        "`diffmix train ... --synthetic <this folder>`; any row is reproduced exactly by "
        "`diffmix.generate.regenerate(folder, row)`.",
        "",
    ]
    return "\n".join(lines)


def command_for(config: GenerateConfig, out: str | os.PathLike | None = None) -> str:
    """The ``diffmix generate`` command line equivalent to ``config`` (for cards and the UI)."""
    c = config.resolved()
    defaults = GenerateConfig(strategy=c.strategy, adapter=c.adapter)
    parts = ["diffmix", "generate", c.dataset, "--model", c.model, "--strategy", c.strategy]
    if c.adapter:
        parts += ["--adapter", c.adapter]
    parts += ["--multiplier", str(c.multiplier)]
    if len(c.strengths) == 1:
        parts += ["--strength", f"{c.strengths[0]:g}"]
    else:
        parts += ["--strengths", ",".join(f"{s:g}" for s in c.strengths)]
    flags = {
        "shots": "--shots", "imbalance": "--imbalance", "subset_seed": "--subset-seed",
        "targets": "--targets", "confusion": "--confusion", "limit": "--limit",
        "filter_bottom": "--filter-bottom", "batch_size": "--batch-size",
        "grouping": "--grouping", "num_inference_steps": "--steps",
        "guidance_scale": "--guidance-scale", "gamma": "--gamma", "seed": "--seed",
        "superclass": "--superclass", "device": "--device", "dtype": "--dtype",
    }  # fmt: skip
    for key, flag in flags.items():
        value = getattr(c, key)
        if value is not None and value != getattr(defaults, key):
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if not c.score:
        parts.append("--no-score")
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


# --------------------------------------------------------------------------- regenerate


def load_config(out: str | os.PathLike) -> tuple[GenerateConfig, dict[str, Any]]:
    """The :class:`GenerateConfig` of a generation folder and its full ``config.json``."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{str(out)!r} is not a generation folder (no {CONFIG_FILE})")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a generation config (format {FORMAT})")
    cfg = GenerateConfig(**{k: record[k] for k in GenerateConfig.model_fields if k in record})
    return cfg, record


def regenerate(out: str | os.PathLike, row: dict[str, Any] | int):
    """Make the image of a metadata ``row`` (or task id) again, bit-exactly.

    Re-runs the row's whole plan batch (batch composition changes pixels by float round-off)
    with the folder's config, then returns the row's image (``PIL.Image``, the saved PNG's
    pixels). Needs the same dataset, model and adapter (checked by fingerprint) and, for
    bit-exactness, the same device type, dtype and torch version as the original run.
    """
    from diffmix.data import load_dataset
    from diffmix.translate import TranslateConfig

    # 1. Config, plan and the row's batch
    cfg, record = load_config(out)
    plan = read_plan(out)
    task = row if isinstance(row, int) else int(row["task"])
    by_id = {t.task: t for t in plan}
    if task not in by_id:
        raise ValueError(f"task {task} is not in the plan of {str(out)!r} ({len(plan)} tasks)")
    batch = [t for t in plan if t.batch == by_id[task].batch]

    # 2. Same inputs as the original run
    ds = load_dataset(cfg.dataset, split="train")
    if ds.fingerprint != record["dataset_fingerprint"]:
        raise ValueError(
            f"dataset {cfg.dataset!r} changed since {str(out)!r} was made (fingerprint "
            f"{record['dataset_fingerprint']} -> {ds.fingerprint}); cannot regenerate exactly"
        )
    for what, now, then in (
        ("model", model_fingerprint(cfg.model), record["model_fingerprint"]),
        ("adapter", adapter_fingerprint(cfg.adapter), record["adapter_fingerprint"]),
    ):
        if now != then:
            raise ValueError(
                f"the {what} changed since {str(out)!r} was made (fingerprint {then} -> {now}); "
                "cannot regenerate exactly"
            )

    # 3. The batch, one shared loop, as in generate
    tcfg = TranslateConfig(
        strategy=cfg.strategy, model=cfg.model, adapter=cfg.adapter,
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        gamma=cfg.gamma, batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype,
    )  # fmt: skip
    results, _ = _translate_batch(batch, ds, tcfg, record.get("superclass_resolved"))
    return results[[t.task for t in batch].index(task)].image
