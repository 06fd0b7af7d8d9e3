"""Mixup and CutMix: the one owner of both, for synthetic folders and for training batches.

One convention everywhere: ``lam`` is the **partner's (target's) share** of the result, in
[0, 1]. Mixup (Zhang et al. 2018) blends ``(1 - lam)·source + lam·partner``; CutMix (Yun et al.
2019) pastes a box of the partner covering ``lam`` of the image. The label of a mixed image is
linear in the share: ``(1 - share)·y_source + share·y_partner``, with ``share`` the *exact*
pasted area for CutMix (box sides are rounded to whole pixels).

Used by :mod:`diffmix.translate` (the ``mixup``/``cutmix`` strategies write a synthetic folder
whose rows carry the share as their label, rule ``pixel-share``) and by
:mod:`diffmix.classify.train` (the batch-level baselines, applied to a batch with probability
``prob``: the authors' ``--mixup_probability`` default 0.5, Zhicaiwww/Diff-Mix
a81337b:downstream_tasks/train_hub.py:117-120 and :410).
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeVar

import torch

T = TypeVar("T")

#: Batch-mixing kinds of :func:`mix_batch`.
MIX_KINDS = ("none", "mixup", "cutmix")


class Box(NamedTuple):
    """A CutMix box in pixels: rows ``top:bottom``, columns ``left:right`` (end exclusive)."""

    top: int
    bottom: int
    left: int
    right: int

    def share(self, height: int, width: int) -> float:
        """The box's area as a fraction of a ``height`` × ``width`` image."""
        return (self.bottom - self.top) * (self.right - self.left) / float(height * width)


def mixup_pixels(source: T, partner: T, lam: float) -> T:
    """Mixup of two images (numpy arrays or tensors, same shape): ``(1-lam)·source + lam·partner``."""
    return (1.0 - lam) * source + lam * partner


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> Box:
    """A box covering ≈ ``lam`` of a ``height`` × ``width`` image, placed uniformly inside it.

    Sides ``round(side·sqrt(lam))``; never clipped by the border, so the pasted share is exactly
    :meth:`Box.share`. ``lam`` is clamped to [0, 1]. Draws the left edge, then the top edge, from
    ``generator`` (a CPU ``torch.Generator``): the same generator state gives the same box.
    """
    r = math.sqrt(max(0.0, min(1.0, float(lam))))
    bw, bh = round(width * r), round(height * r)
    x0 = int(torch.randint(0, width - bw + 1, (1,), generator=generator))
    y0 = int(torch.randint(0, height - bh + 1, (1,), generator=generator))
    return Box(y0, y0 + bh, x0, x0 + bw)


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch with its permutation ``perm``: partner ``x[perm]`` takes share ``lam``."""
    return mixup_pixels(x, x[perm], lam), mixup_pixels(y, y[perm], lam)


def cutmix_batch(
    x: torch.Tensor, y: torch.Tensor, box: Box, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix of a batch (n, C, H, W): paste ``box`` of ``x[perm]`` into every image.

    Returns the mixed images, the mixed labels and the partner's exact share (box area).
    """
    h, w = x.shape[-2:]
    out = x.clone()
    out[..., box.top : box.bottom, box.left : box.right] = x[perm][
        ..., box.top : box.bottom, box.left : box.right
    ]
    share = box.share(h, w)
    return out, mixup_pixels(y, y[perm], share), share


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    alpha: float,
    gen: torch.Generator,
    prob: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``prob``, apply ``kind`` ("none", "mixup", "cutmix") to a batch.

    The partner share ``lam ~ Beta(alpha, alpha)``, the partners a random permutation. All
    randomness comes from ``gen`` (CPU generator): the same state mixes the same way. ``prob``
    in [0, 1]; the coin is drawn only when ``prob < 1``. Returns ``(x, y)`` unchanged when the
    batch is not mixed.
    """
    if kind not in MIX_KINDS:
        raise ValueError(f"unknown mix {kind!r}; one of {', '.join(MIX_KINDS)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mix probability must be in [0, 1], got {prob!r}")
    if kind == "none" or len(x) < 2 or prob == 0.0:
        return x, y
    if prob < 1.0 and float(torch.rand(1, generator=gen)) >= prob:
        return x, y
    g1 = _standard_gamma(alpha, gen)
    g2 = _standard_gamma(alpha, gen)
    lam = g1 / (g1 + g2)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    if kind == "mixup":
        return mixup_batch(x, y, lam, perm)
    out, target, _ = cutmix_batch(x, y, cutmix_box(x.shape[-2], x.shape[-1], lam, gen), perm)
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
