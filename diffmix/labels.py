"""The label of a synthetic image: the one owner of the Diff-Mix soft label and of label rules.

Diff-Mix (Wang et al., CVPR 2024, arXiv 2403.19600, Sec. 3.2) labels an image translated from
class A toward class B at strength s with ``(1 - s^γ)·onehot(A) + s^γ·onehot(B)``
(:func:`soft_label`; the authors' ``dataset/base.py:get_syn_item``). Generation writes it into
each row of a synthetic folder, and training reads it back through :func:`row_label`.

Every metadata row names the **label rule** its label follows (``label_rule``):

================  ==============================================================================
rule              the label training uses
================  ==============================================================================
diffmix-gamma     ``soft_label(A, B, strength, γ)`` recomputed with the *training run's* γ
                  (diff-mix, real-mix, ti-mix: the label is a modelling choice, γ a knob)
pixel-share       the row's stored ``soft_label`` as written: the exact share of B's pixels
                  (mixup: the blend weight; cutmix: the pasted box's area); never recomputed
hard              ``onehot(target)`` (``*-aug``: target = source; ``*-gen``: no source image)
================  ==============================================================================

Folders written before rows carried the field are read with the rule inferred from the
row's ``strategy`` (:func:`label_rule_for`), and :func:`row_label` says so once per folder.

Pure numpy; importable without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

#: The label rules a metadata row may name.
LABEL_RULES = ("diffmix-gamma", "pixel-share", "hard")

#: The rule of each strategy's rows (see :mod:`diffmix.translate` for the strategies).
STRATEGY_LABEL_RULES = {
    "diff-mix": "diffmix-gamma",
    "real-mix": "diffmix-gamma",
    "ti-mix": "diffmix-gamma",
    "diff-aug": "hard",
    "real-aug": "hard",
    "ti-aug": "hard",
    "diff-gen": "hard",
    "real-gen": "hard",
    "mixup": "pixel-share",
    "cutmix": "pixel-share",
}


def soft_label(
    source: int, target: int, strength: float, gamma: float = 0.5, *, num_classes: int
) -> np.ndarray:
    """Diff-Mix soft label: ``(1 - s^γ)·onehot(source) + s^γ·onehot(target)``.

    Args:
        source, target: class indices in ``[0, num_classes)``; equal indices get weight 1.
        strength: ``s`` in [0, 1] (the img2img strength; the target's pixel share for mixup).
        gamma: ``γ > 0``; 0.5 is the authors' setting (run.sh), 1 the linear (mixup) label.
        num_classes: length of the label.

    Returns:
        float64 vector of length ``num_classes``, non-negative, summing to 1.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, idx in (("source", source), ("target", target)):
        if not 0 <= int(idx) < num_classes:
            raise ValueError(f"{name} class index {idx} outside [0, {num_classes})")
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    w = float(strength) ** float(gamma)
    label = np.zeros(num_classes, dtype=np.float64)
    label[int(source)] += 1.0 - w
    label[int(target)] += w
    return label


def label_rule_for(strategy: str) -> str:
    """The label rule of ``strategy``'s rows; ``ValueError`` for an unknown strategy."""
    try:
        return STRATEGY_LABEL_RULES[str(strategy)]
    except KeyError:
        raise ValueError(
            f"unknown strategy {strategy!r}; its label rule is unknown (known strategies: "
            f"{', '.join(STRATEGY_LABEL_RULES)})"
        ) from None


def row_rule(row: Mapping) -> tuple[str, bool]:
    """``(rule, inferred)``: the row's ``label_rule``, or the one of its ``strategy`` when the
    row predates the field (``inferred=True``). ``ValueError`` for an unknown rule."""
    rule = row.get("label_rule")
    if rule is None:
        return label_rule_for(row.get("strategy", "diff-mix")), True
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label_rule {rule!r}; one of {', '.join(LABEL_RULES)}")
    return str(rule), False


def row_label(row: Mapping, label_of: Mapping[str, int], gamma: float) -> np.ndarray:
    """The training label (float64, one weight per class, sums to 1) of one metadata row.

    ``label_of`` maps class names to indices, ``gamma`` is the training run's γ (used by the
    ``diffmix-gamma`` rule only). Raises ``ValueError`` for an unknown class, a strength outside
    [0, 1] or a stored pixel-share label that is not a distribution over known classes.
    """
    rule, _ = row_rule(row)
    n = len(label_of)
    src, tgt = row.get("source_class"), row.get("target_class")
    for role, c in (("source_class", src), ("target_class", tgt)):
        if c not in label_of:
            raise ValueError(f"{role} {c!r} is not a class of the training dataset")
    if rule == "hard":
        return soft_label(label_of[tgt], label_of[tgt], 1.0, 1.0, num_classes=n)
    s = row.get("strength")
    if s is None:
        raise ValueError("row has no 'strength'; cannot build its soft label")
    s = float(s)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength {s!r} is outside [0, 1]")
    if rule == "diffmix-gamma":
        return soft_label(label_of[src], label_of[tgt], s, gamma, num_classes=n)
    # pixel-share: the stored label is the exact share; a row without one falls back to the
    # requested share (linear, γ = 1).
    stored = row.get("soft_label")
    if not stored:
        return soft_label(label_of[src], label_of[tgt], s, 1.0, num_classes=n)
    vec = np.zeros(n, dtype=np.float64)
    for name, w in dict(stored).items():
        if name not in label_of:
            raise ValueError(f"soft_label names {name!r}, not a class of the training dataset")
        w = float(w)
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"soft_label weight {w!r} of {name!r} is not a non-negative number")
        vec[label_of[name]] += w
    if abs(vec.sum() - 1.0) > 1e-4:
        raise ValueError(f"soft_label weights sum to {vec.sum():.6f}, not 1")
    return vec / vec.sum()
