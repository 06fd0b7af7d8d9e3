"""The one config object of a classifier training run (CLI, YAML and UI build it the same way).

Defaults are a CPU-friendly version of the authors' recipe. The backbone depends on the
dataset (:func:`default_backbone`): the demo (12 classes × 60 drawings at 64 px) trains
ResNet-18 from scratch at 64 px (30 epochs: a few minutes on two cores); any other dataset --
real photos -- trains a head on the built-in ImageNet EfficientNet-Lite0
(:mod:`diffmix.classify.lite0`, no download) at 224 px. SGD with momentum 0.9 and weight decay
5e-4, one epoch of linear warmup then a cosine
schedule to 0, label smoothing 0.1 on real (hard) labels, random resized crop + horizontal
flip. The authors' runs train an ImageNet-pretrained ResNet-50 at 448 px for 120 epochs
(4aa0ec8:run.sh:22/35): on a GPU use e.g. ``arch="resnet50"``, ``pretrained=...``,
``resolution=448``, ``epochs=120``. Where training still differs from theirs (0.9 label scaler,
smoothing of synthetic labels, best vs final epoch, ...) and the options that reproduce it:
docs/fidelity.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from diffmix.classify.data import DEFAULT_CACHE_MB
from diffmix.classify.lite0 import LITE0, LITE0_ARCH, LITE0_RESOLUTION
from diffmix.config import StageConfig

#: ``pretrained`` value meaning random initialisation.
SCRATCH = "scratch"
#: Datasets that get the from-scratch defaults (``demo`` and ``demo:SEED``: 64-px drawings).
_DEMO_PREFIX = "demo"

#: Fields that do not change what a run computes; a resume may change them.
RUN_ONLY_FIELDS = ("num_threads", "tensorboard", "cache", "cache_mb")

#: p used when synthetic folders are given and ``p`` is left unset: the authors' conventional
#: setting (4aa0ec8:run.sh:25, synthetic_prob=0.1); the recipes (:mod:`diffmix.recipes`) set
#: 0.3 for few-shot and long-tail.
DEFAULT_P = 0.1


class TrainConfig(StageConfig):
    """Everything a classifier training run needs; saved as ``config.json`` in the run dir."""

    # -- data ------------------------------------------------------------------------------
    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="per-class test share when the dataset has no test split"
    )
    shots: int | None = Field(None, ge=1, description="few-shot: real training images per class")
    imbalance: float | None = Field(
        None, gt=0, le=1, description="long-tail: smallest/largest class ratio F in (0, 1]"
    )
    seed: int = Field(0, description="training seed (init, order, augmentation, p-mixing)")
    subset_seed: int | None = Field(
        None, description="seed of the few-shot/long-tail draw (default: seed, as personalize)"
    )
    # -- synthetic data (Diff-Mix) ---------------------------------------------------------------
    synthetic: list[str] = Field(
        default_factory=list, description="synthetic dataset folders (generate output)"
    )
    p: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"probability that a real sample is replaced by a synthetic one "
        f"(default {DEFAULT_P} with synthetic folders, else 0)",
    )
    gamma: float = Field(
        0.5,
        gt=0,
        description="soft-label power γ: target weight s^γ, for Diff-Mix rows (label_rule "
        "diffmix-gamma); 0.5 = the authors' run.sh (4aa0ec8:run.sh:23/45/63)",
    )
    synthetic_label_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="factor on synthetic soft labels; the authors use 0.9 on CUB "
        "(a81337b:dataset/instance/cub.py:39); 1 = the labels as written",
    )
    synthetic_label_smoothing: bool = Field(
        False,
        description="also smooth synthetic labels by label_smoothing, as the authors' loss does "
        "for every target (a81337b:downstream_tasks/losses.py:105-123); off = as written",
    )
    synthetic_pick: Literal["uniform", "same_source"] = Field(
        "uniform",
        description="replacement drawn from the whole pool, or from the same source image",
    )
    # -- batch mixing baselines ----------------------------------------------------------------
    mix: Literal["none", "mixup", "cutmix"] = Field("none", description="batch mixing baseline")
    mix_alpha: float = Field(
        1.0, gt=0, description="Beta(α, α) of mixup / cutmix (authors: 1.0, train_hub.py:412)"
    )
    mix_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="probability that a batch is mixed (mixup / cutmix); 0.5 = the authors' "
        "--mixup_probability default (a81337b:downstream_tasks/train_hub.py:117-120)",
    )
    # -- model -----------------------------------------------------------------------------
    arch: str | None = Field(
        None,
        description="'smallcnn' or any timm model name. Unset: by dataset -- 'resnet18' "
        "(trained from scratch) for the demo, whose 64-px drawings are far from ImageNet; "
        f"'{LITE0_ARCH}' with the built-in ImageNet weights for any other (real-photo) dataset",
    )
    pretrained: str | None = Field(
        None,
        description=f"'{LITE0}' (the built-in ImageNet EfficientNet-Lite0, no download), "
        f"'{SCRATCH}' (random initialisation), a local checkpoint file, 'timm', or a Hub id "
        f"owner/name (downloads). Unset: '{LITE0}' when arch is {LITE0_ARCH}, else '{SCRATCH}'",
    )
    resolution: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="training/eval side in px. Unset: 224 with pretrained weights (their "
        "training size), 64 from scratch (CPU-sized)",
    )
    tune: Literal["full", "head"] | None = Field(
        None,
        description="'full': train every weight; 'head': a linear probe -- the pretrained "
        "backbone frozen (BatchNorm statistics too), only the classifier layer trained. Unset: "
        f"'head' with the built-in '{LITE0}' weights (the CPU default on photos: no backward "
        "pass through the backbone), 'full' otherwise (from scratch, or weights you chose -- "
        "the authors fine-tune fully)",
    )
    # -- optimisation ------------------------------------------------------------------------
    epochs: int = Field(30, ge=1, description="passes over the real training set")
    batch_size: int = Field(32, ge=1, description="images per step per process")
    lr: float = Field(0.05, gt=0, description="peak SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup length in epochs")
    label_smoothing: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="smoothing of real (hard) labels; the authors smooth by 0.1 "
        "(train_hub.py:329); synthetic labels too with synthetic_label_smoothing",
    )
    augment: Literal["resized_crop", "crop", "flip"] = Field(
        "resized_crop", description="train augmentation (all with horizontal flip)"
    )
    crop_scale_min: float = Field(
        0.35, gt=0, le=1, description="smallest area fraction of the random resized crop"
    )
    # -- long tail --------------------------------------------------------------------------
    balanced_sampling: bool = Field(False, description="draw classes uniformly each epoch")
    loss: Literal["ce", "balanced-softmax", "drw"] = Field(
        "ce", description="cross-entropy, Balanced Softmax, or DRW (re-weighting after 2/3)"
    )
    drw_beta: float = Field(0.9999, ge=0, lt=1, description="effective-number β of DRW weights")
    groups: Literal["thirds", "counts"] = Field(
        "thirds", description="head/medium/tail rule: thirds by count, or >100 / 20-100 / <20"
    )
    # -- run --------------------------------------------------------------------------------
    eval_every: int = Field(
        1, ge=1, description="epochs between test evaluations (the last is always evaluated)"
    )
    eval_batch_size: int = Field(256, ge=1, description="images per evaluation batch")
    cache: bool = Field(True, description="keep decoded real images in the workspace")
    cache_mb: int = Field(
        DEFAULT_CACHE_MB,
        ge=0,
        description="memory budget (MB) for decoded images (3·R² bytes each: 150 KB at 224 px, "
        "602 KB at 448 px); what does not fit is decoded from disk each time (same results, "
        f"slower). {DEFAULT_CACHE_MB} = this project's choice for an 8-16 GB machine",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="autocast on GPU")
    tensorboard: bool = Field(True, description="also log to TensorBoard when it is installed")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads during the run (default: torch's); 1 is often fastest "
        "for small models on a CPU shared with other jobs",
    )

    @field_validator("synthetic", mode="before")
    @classmethod
    def _split_dirs(cls, v):
        """Accept ``"a,b"`` (CLI, YAML) as well as a list; drop empty entries."""
        if v is None:
            return []
        if isinstance(v, str):
            v = v.split(",")
        return [str(d).strip() for d in v if str(d).strip()]

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        from diffmix.classify.models import check_arch

        return None if v is None else check_arch(v)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_source(cls, v: str | None) -> str | None:
        from diffmix.classify.models import check_pretrained

        return None if v is None else check_pretrained(v)

    @model_validator(mode="after")
    def _lite0_arch(self) -> TrainConfig:
        if self.tune == "head" and self.pretrained == SCRATCH:
            raise ValueError(
                "tune='head' trains only the classifier layer on top of a frozen backbone: "
                "a from-scratch backbone would stay random; use pretrained weights or tune='full'"
            )
        if self.pretrained == LITE0 and self.arch not in (None, LITE0_ARCH):
            raise ValueError(
                f"pretrained={LITE0!r} holds weights of {LITE0_ARCH}, not of {self.arch!r}: leave "
                f"arch unset (or {LITE0_ARCH}), or give weights for {self.arch!r}"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.shots is not None and self.imbalance is not None:
            raise ValueError(
                f"give shots ({self.shots}) or imbalance ({self.imbalance}), not both: "
                "a training set is either few-shot or long-tail"
            )
        if self.p and not self.synthetic:
            raise ValueError(
                f"p={self.p} replaces real images by synthetic ones: give synthetic folders"
            )
        return self

    def resolved(self) -> TrainConfig:
        """A copy with run-dependent defaults filled in (``p``, ``subset_seed``, and the
        backbone: ``arch``, ``pretrained``, ``resolution`` -- :func:`default_backbone` -- and
        ``tune``: ``head`` with the built-in ``lite0`` weights, else ``full``)."""
        arch, pretrained, resolution = default_backbone(
            self.dataset, self.arch, self.pretrained, self.resolution
        )
        tune = self.tune or ("head" if pretrained == LITE0 else "full")
        return self.model_copy(
            update={
                "p": self.p if self.p is not None else (DEFAULT_P if self.synthetic else 0.0),
                "subset_seed": self.seed if self.subset_seed is None else self.subset_seed,
                "arch": arch,
                "pretrained": pretrained,
                "resolution": resolution,
                "tune": tune,
            }
        )


def is_demo(dataset: str) -> bool:
    """Whether ``dataset`` is the built-in demo (``demo`` / ``demo:SEED``), not real photos."""
    return dataset.strip() == _DEMO_PREFIX or dataset.strip().startswith(_DEMO_PREFIX + ":")


def default_backbone(
    dataset: str, arch: str | None, pretrained: str | None, resolution: int | None
) -> tuple[str, str, int]:
    """The backbone rule: fill unset ``arch`` / ``pretrained`` / ``resolution``.

    - ``arch``: ``resnet18`` for the demo (64-px drawings, far from ImageNet: from scratch is
      the small setup that works there), ``tf_efficientnet_lite0`` for any other dataset (real
      photos: the built-in ImageNet weights; the paper's gains are with ImageNet backbones).
    - ``pretrained``: ``lite0`` when ``arch`` is ``tf_efficientnet_lite0``, else ``scratch``.
    - ``resolution``: 224 px with pretrained weights (the size they were trained at), 64 px
      from scratch (a few minutes on a CPU).
    """
    if arch is None:
        arch = "resnet18" if is_demo(dataset) else LITE0_ARCH
    if pretrained is None:
        pretrained = LITE0 if arch == LITE0_ARCH else SCRATCH
    if resolution is None:
        resolution = 64 if pretrained == SCRATCH else LITE0_RESOLUTION
    return arch, pretrained, resolution
