"""Classifier training and evaluation (the paper's downstream task), on real + synthetic data.

``diffmix train SPEC --out DIR`` / :func:`train` trains a timm backbone (or the tiny
``smallcnn``) on the train split -- optionally a few-shot or long-tail subset -- where each
real sample is replaced with probability p by a Diff-Mix synthetic image carrying its soft
label, and reports the final epoch's accuracy on the test split (overall, per class and on
head/medium/tail classes). Baselines: mixup, cutmix, class-balanced sampling, Balanced
Softmax, DRW.

Modules: :mod:`~diffmix.classify.config` (:class:`TrainConfig`), :mod:`~diffmix.classify.data`
(tensor caches, synthetic folders, p-mixing, augmentation), :mod:`~diffmix.classify.losses`
(losses as pure functions; the soft label is :mod:`diffmix.labels`, mixup/cutmix
:mod:`diffmix.mixing`), :mod:`~diffmix.classify.metrics`,
:mod:`~diffmix.classify.models` (backbones and weights), :mod:`~diffmix.classify.train`.
"""

from diffmix.classify.config import TrainConfig
from diffmix.classify.data import EpochPlan, SyntheticSet, plan_epoch, read_synthetic
from diffmix.classify.losses import soft_cross_entropy
from diffmix.classify.models import check_arch, create_classifier
from diffmix.classify.train import train

__all__ = [
    "EpochPlan",
    "SyntheticSet",
    "TrainConfig",
    "check_arch",
    "create_classifier",
    "plan_epoch",
    "read_synthetic",
    "soft_cross_entropy",
    "train",
]
