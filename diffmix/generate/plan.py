"""Planning a generation run as pure data: target rules, strengths, task seeds, batches.

Diff-Mix's data-making stage (Wang et al., CVPR 2024, arXiv 2403.19600): every real training
image is the source of ``M`` (``multiplier``) translations; for the mix strategies the target
class of each is drawn among the *other* classes, its strength fixed or drawn uniformly from a
list. :func:`plan_tasks` makes ``M × |train subset|`` tasks ``(task, batch, source, target,
strength, seed, partner)``. Task ``t`` uses source ``t mod n`` (round ``t div n``), so a
stopped run has covered the sources evenly. Each task's draws come from
``numpy.random.default_rng([seed, t])`` and its image seed is :func:`task_seed` ``(seed, t)``:
the plan is a pure function of the config and the dataset, written to ``plan.jsonl`` before any
image is made (a rerun recomputes and compares it).

Target rules (``targets``): ``uniform`` (among the other classes; the authors draw over all
classes, docs/fidelity.md), ``confusion`` (in proportion to a classifier's confusion with the
source class; rows without confusion fall back to uniform) and ``tail`` (weight
``∝ 1 / count_c`` of the subset: head-class sources carry their backgrounds into tail classes).
Batches (:func:`assign_batches`): cut in task order, but inside each window of ``batch_size ×
|strengths|`` tasks sorted by strength first (``grouping="strength"``), so a batch mostly holds
one strength.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diffmix.generate.config import GenerateConfig
from diffmix.strategies import get_strategy
from diffmix.synthetic import PLAN_FILE, rows_text


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
        # not dataclasses.asdict: it deep-copies every field (10x slower on 60k-task plans)
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


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


# ~90 lines, a quarter of them docstring: steps 1-4 of one pure function over the same draws.
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

    (About 60 lines of code in four numbered steps, kept as one pure function so that the
    plan's determinism is readable in one place.)

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


def plan_text(plan: Sequence[PlannedTask]) -> str:
    """``plan.jsonl``'s text: one task per line, ``json.dumps`` of :meth:`PlannedTask.to_dict`
    (the text a rerun compares: built by :func:`_task_line`, ~2x faster on a 60k-task plan)."""
    return "".join(_task_line(t) for t in plan)


def _task_line(t: PlannedTask) -> str:
    """``json.dumps(t.to_dict()) + "\\n"``, without ``json.dumps``'s per-call overhead: the
    usual field types (int, finite float, str, None partner) formatted as ``json.dumps`` does;
    anything else (a bool, NaN, another type) through ``json.dumps`` itself. Writes
    PlannedTask's fields in their order (``tests/test_plan_text.py`` checks both)."""
    pi, pid = t.partner_index, t.partner_id
    if (
        type(t.task) is type(t.batch) is type(t.source_index) is type(t.seed) is int
        and type(t.strength) is float
        and math.isfinite(t.strength)
        and (pi is None or type(pi) is int)
    ):
        enc = _encode_str
        try:  # (enc refuses a non-str: TypeError)
            return (
                f'{{"task": {t.task:d}, "batch": {t.batch:d}, "source_index": {t.source_index:d}, '
                f'"source_id": {enc(t.source_id)}, "source_class": {enc(t.source_class)}, '
                f'"target_class": {enc(t.target_class)}, '
                f'"strength": {float.__repr__(t.strength)}, "seed": {t.seed:d}, '
                f'"partner_index": {"null" if pi is None else format(pi, "d")}, '
                f'"partner_id": {"null" if pid is None else enc(pid)}}}\n'
            )
        except TypeError:
            pass
    return rows_text([t.to_dict()])


_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii)
