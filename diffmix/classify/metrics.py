"""Evaluation figures: confusion matrix, per-class accuracy, head/medium/tail groups.

Group rule (``TrainConfig.groups``):

- ``"thirds"`` (default): classes sorted by training count (descending; ties by class index)
  and cut into three near-equal parts (head, medium, tail). Works for any dataset size and
  any long-tail factor; on a balanced (few-shot) set the groups are just class-index thirds.
- ``"counts"``: the many/medium/few convention of large long-tail benchmarks (Liu et al.
  2019): more than 100 training images, 20-100, fewer than 20. Groups may be empty on small
  datasets (their accuracy is then ``None``).

Group accuracy is the mean of the per-class accuracies in the group (class-averaged, as the
long-tail literature reports); the headline ``test_accuracy`` is the plain top-1 accuracy
over all test images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

GROUP_NAMES = ("head", "medium", "tail")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(conf: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] from a confusion matrix (0.0 when it is empty)."""
    total = int(conf.sum())
    return float(conf.diagonal().sum()) / total if total else 0.0


def per_class_accuracy(conf: torch.Tensor) -> list[float | None]:
    """Accuracy of each class in [0, 1]; ``None`` for a class without test images."""
    support = conf.sum(1)
    return [float(conf[c, c]) / int(n) if int(n) else None for c, n in enumerate(support)]


def mean_class_accuracy(per_class: Sequence[float | None]) -> float | None:
    """Mean of the defined per-class accuracies (``None`` when none is defined)."""
    vals = [a for a in per_class if a is not None]
    return float(np.mean(vals)) if vals else None


def class_groups(train_counts: Sequence[int], rule: str = "thirds") -> dict[str, list[int]]:
    """Class indices of the head / medium / tail groups (rules in the module docstring)."""
    counts = [int(n) for n in train_counts]
    if rule == "thirds":
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        parts = np.array_split(np.asarray(order, dtype=np.int64), 3)
        return {
            name: sorted(int(c) for c in part)
            for name, part in zip(GROUP_NAMES, parts, strict=True)
        }
    if rule == "counts":
        return {
            "head": [c for c, n in enumerate(counts) if n > 100],
            "medium": [c for c, n in enumerate(counts) if 20 <= n <= 100],
            "tail": [c for c, n in enumerate(counts) if n < 20],
        }
    raise ValueError(f"unknown group rule {rule!r}; one of thirds, counts")


def group_accuracies(
    per_class: Sequence[float | None], groups: dict[str, list[int]]
) -> dict[str, float | None]:
    """``{"head": acc, "medium": acc, "tail": acc}``: class-averaged accuracy per group."""
    return {name: mean_class_accuracy([per_class[c] for c in groups[name]]) for name in groups}
