"""The math of classifier training as small pure functions (labels, losses, batch mixing).

Every target here is a *dense* label distribution of shape ``(n, C)`` (rows sum to 1), so
hard labels (smoothed), Diff-Mix soft labels and mixup/cutmix mixtures go through one loss.
The soft label itself lives in :mod:`diffmix.labels`, mixup/cutmix in :mod:`diffmix.mixing`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Hard labels (n,) -> label-smoothed targets (n, C): ``(1 - ε)·onehot + ε / C``.

    The same definition as ``F.cross_entropy(label_smoothing=ε)``; ε in [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    y = F.one_hot(labels.long(), num_classes).float()
    return y * (1.0 - smoothing) + smoothing / num_classes


def synthetic_targets(
    targets: torch.Tensor, scale: float = 1.0, smoothing: float = 0.0
) -> torch.Tensor:
    """Synthetic rows' training targets (m, C): ``(1 - ε)·scale·y + ε / C``.

    ``scale`` in (0, 1] shrinks the soft label (the authors multiply it by 0.9 on CUB and the
    other fine-grained sets: Zhicaiwww/Diff-Mix a81337b:dataset/instance/cub.py:39, used in
    dataset/base.py:232-235; the rows then sum to less than 1). ``smoothing`` ε in [0, 1) is
    the real rows' label smoothing, applied to synthetic rows too as the authors' loss does
    (downstream_tasks/losses.py:105-123 smooths every target). ``scale=1, smoothing=0``: the
    labels as given.
    """
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"synthetic label scale must be in (0, 1], got {scale!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    if scale == 1.0 and smoothing == 0.0:
        return targets
    return (1.0 - smoothing) * scale * targets + smoothing / targets.shape[-1]


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against a label distribution: ``-(y * log_softmax(logits)).sum(-1).mean()``.

    ``logits`` and ``target`` are (n, C). With per-class ``weight`` (C,), each class term is
    scaled by its weight and the sum is divided by ``Σ_i Σ_c w_c·y_ic`` -- for one-hot targets
    exactly ``F.cross_entropy(logits, labels, weight=weight)``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    target = target.to(logp)
    if weight is None:
        return -(target * logp).sum(-1).mean()
    wy = target * weight.to(logp)
    return -(wy * logp).sum() / wy.sum().clamp_min(1e-12)


def balanced_softmax_logits(logits: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax (Ren et al. 2020): training logits shifted by ``log prior(c)``.

    ``class_counts`` (C,) are the training images per class (clamped at 1); test-time logits
    stay unshifted, which removes the label-frequency bias of the long-tailed training set.
    """
    counts = class_counts.to(logits.device, torch.float32).clamp_min(1.0)
    return logits + (counts / counts.sum()).log().to(logits.dtype)


def class_balanced_weights(class_counts: torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights by effective number (Cui et al. 2019), normalised to sum to C.

    ``w_c ∝ (1 - β) / (1 - β^n_c)``; β in [0, 1) (β = 0: uniform weights; β → 1: 1 / n_c).
    Used by DRW (Cao et al. 2019) in the last third of training.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    n = class_counts.double().clamp_min(1.0)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(w)).float()


def drw_start_epoch(epochs: int) -> int:
    """First (0-based) epoch that uses DRW's re-weighting: after 2/3 of training."""
    return (2 * epochs) // 3


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at optimizer ``step`` (0-based): linear warmup, then cosine to 0.

    Warmup ramps ``(step + 1) / warmup_steps`` up to 1; the cosine half-period spans the
    remaining ``total_steps - warmup_steps`` steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * t))
