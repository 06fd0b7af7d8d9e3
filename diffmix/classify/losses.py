"""The math of classifier training as small pure functions (labels, losses, batch mixing).

Every target here is a *dense* label distribution of shape ``(n, C)`` (rows sum to 1), so
hard labels (smoothed), Diff-Mix soft labels and mixup/cutmix mixtures go through one loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def diffmix_soft_label(
    source: int, target: int, strength: float, gamma: float, num_classes: int
) -> torch.Tensor:
    """Diff-Mix soft label (Wang et al. 2024, Eq. 4): ``(1 - s^γ)·onehot(A) + s^γ·onehot(B)``.

    ``source`` A and ``target`` B are class indices in ``[0, num_classes)``, ``strength`` s is
    the img2img strength in [0, 1], ``gamma`` γ > 0. When A == B the two weights add up to a
    one-hot label. Returns a float32 vector of length ``num_classes`` summing to 1.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    for name, c in (("source", source), ("target", target)):
        if not 0 <= c < num_classes:
            raise ValueError(f"{name} class index {c!r} is outside [0, {num_classes})")
    w = float(strength) ** float(gamma)
    y = torch.zeros(num_classes, dtype=torch.float32)
    y[source] += 1.0 - w
    y[target] += w
    return y


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Hard labels (n,) -> label-smoothed targets (n, C): ``(1 - ε)·onehot + ε / C``.

    The same definition as ``F.cross_entropy(label_smoothing=ε)``; ε in [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    y = F.one_hot(labels.long(), num_classes).float()
    return y * (1.0 - smoothing) + smoothing / num_classes


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


# --------------------------------------------------------------------------- batch mixing


def mixup(
    x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): ``lam·x + (1-lam)·x[perm]``, labels mixed the same way."""
    return lam * x + (1.0 - lam) * x[perm], lam * y + (1.0 - lam) * y[perm]


def cutmix_box(
    height: int, width: int, lam: float, cy: float, cx: float
) -> tuple[int, int, int, int]:
    """The CutMix box (Yun et al. 2019) covering ``1 - lam`` of the image, centred at
    (``cy``, ``cx``) given as fractions in [0, 1]; returns ``(y0, y1, x0, x1)`` clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    y, x = int(cy * height), int(cx * width)
    y0, y1 = max(0, y - ch // 2), min(height, y + ch // 2)
    x0, x1 = max(0, x - cw // 2), min(width, x + cw // 2)
    return y0, y1, x0, x1


def cutmix(
    x: torch.Tensor, y: torch.Tensor, box: tuple[int, int, int, int], perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix: paste ``box`` of ``x[perm]`` into ``x``; labels mixed by the pasted area.

    Returns the mixed images, the mixed labels and the actual ``lam`` (kept-area fraction).
    """
    y0, y1, x0, x1 = box
    h, w = x.shape[-2:]
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, lam * y + (1.0 - lam) * y[perm], lam


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``kind`` ("none", "mixup" or "cutmix") to a batch with ``lam ~ Beta(alpha, alpha)``.

    All randomness comes from ``gen`` (a CPU generator), so a batch mixes the same way for the
    same generator state.
    """
    if kind == "none" or len(x) < 2:
        return x, y
    if kind not in ("mixup", "cutmix"):
        raise ValueError(f"unknown mix {kind!r}; one of none, mixup, cutmix")
    g1 = _standard_gamma(alpha, gen)
    g2 = _standard_gamma(alpha, gen)
    lam = g1 / (g1 + g2)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    if kind == "mixup":
        return mixup(x, y, lam, perm)
    cy, cx = torch.rand(2, generator=gen).tolist()
    out, target, _ = cutmix(x, y, cutmix_box(x.shape[-2], x.shape[-1], lam, cy, cx), perm)
    return out, target


def _standard_gamma(alpha: float, gen: torch.Generator) -> float:
    """One Gamma(alpha, 1) draw from ``gen`` (Marsaglia-Tsang; alpha < 1 by boosting)."""
    if alpha <= 0:
        raise ValueError(f"mix alpha must be > 0, got {alpha!r}")
    boost = 1.0
    if alpha < 1.0:
        boost = float(torch.rand(1, generator=gen)) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:  # accepts with probability > 0.95 per try
        z = float(torch.randn(1, generator=gen))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand(1, generator=gen))
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost
