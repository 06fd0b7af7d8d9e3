"""The configuration of an experiment (:class:`ExperimentConfig`, :func:`make_config`) and its
arms; no torch import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from diffmix.config import StageConfig
from diffmix.recipes import RECIPES

#: The few-shot recipe: the experiment's defaults for s, γ, p, the multiplier and the shots.
_FEWSHOT = RECIPES["fewshot"]

#: Every arm, in table order.
ARMS = ("baseline", "mixup", "cutmix", "real-mix", "diff-aug", "diff-mix")
#: Arms that train on a synthetic set (the generate strategy has the arm's name).
GENERATIVE_ARMS = frozenset({"real-mix", "diff-aug", "diff-mix"})
#: Arms whose synthetic set needs the seed's personalized adapter.
ADAPTER_ARMS = frozenset({"diff-aug", "diff-mix"})
#: Batch-mixing arms: the TrainConfig ``mix`` of each arm.
_MIX = {"mixup": "mixup", "cutmix": "cutmix"}

#: Config fields that may change between runs into the same folder (they change no result
#: of a stage that already ran).
RERUN_FREE_FIELDS = frozenset({"seeds", "arms", "train_repeats", "num_threads", "budget_minutes"})
#: Training seed of repeat ``k`` of a seed's classifier: ``seed + TRAIN_SEED_STRIDE * k``.
TRAIN_SEED_STRIDE = 1000

#: Stage-config keys the experiment sets itself (the comparison is only fair when it does);
#: the ``*_overrides`` dicts may not set them, nor the keys that have a field of their own.
_CONTROLLED = {
    "personalize": {"dataset", "shots", "imbalance", "seed", "model", "steps", "rank",
                    "batch_size"},
    "generate": {"dataset", "shots", "imbalance", "subset_seed", "seed", "strategy", "model",
                 "adapter", "limit", "multiplier", "strengths", "gamma", "num_inference_steps",
                 "guidance_scale", "batch_size"},
    "train": {"dataset", "shots", "imbalance", "seed", "subset_seed", "synthetic", "p", "mix",
              "gamma", "arch", "resolution", "epochs", "batch_size", "lr", "num_threads"},
}  # fmt: skip


class ExperimentConfig(StageConfig):
    """Everything an experiment needs (unknown keys rejected); saved in ``experiment.json``."""

    kind: Literal["fewshot"] = Field("fewshot", description="which table: few-shot")
    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    shots: int = Field(
        _FEWSHOT["shots"].value,
        ge=1,
        description=f"real training images per class; default {_FEWSHOT['shots'].source}",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="one subset + adapter + run per arm for each seed; mean ± std over them",
    )
    arms: list[str] = Field(default_factory=lambda: list(ARMS), description=f"of {ARMS}")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    # -- personalization (one adapter per seed) -------------------------------------------------
    personalize_steps: int = Field(300, ge=1, description="optimiser steps per adapter")
    personalize_batch_size: int = Field(8, ge=1, description="images per personalization step")
    rank: int = Field(10, ge=1, description="LoRA rank")
    # -- generation (one synthetic set per generative arm and seed) ------------------------------
    strength: float = Field(
        _FEWSHOT["strength"].value,
        gt=0,
        le=1,
        description=f"img2img strength s; default {_FEWSHOT['strength'].source}",
    )
    gamma: float = Field(
        _FEWSHOT["gamma"].value,
        gt=0,
        description=f"soft-label exponent γ; default {_FEWSHOT['gamma'].source}",
    )
    multiplier: int = Field(
        _FEWSHOT["multiplier"].value,
        ge=1,
        description=f"synthetic images per real image; default {_FEWSHOT['multiplier'].source}",
    )
    num_inference_steps: int = Field(25, ge=1, description="sampling steps (≈ steps·s run)")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance")
    generate_batch_size: int = Field(16, ge=1, description="images per shared denoising loop")
    # -- classifier (one run per arm and seed) -------------------------------------------------
    p: float = Field(
        _FEWSHOT["p"].value,
        ge=0,
        le=1,
        description=f"probability of replacing a real sample; default {_FEWSHOT['p'].source}",
    )
    arch: str | None = Field(
        None,
        description="classifier: 'smallcnn' or a timm model; default: smallcnn on the demo (from "
        "scratch), tf_efficientnet_lite0 on real photos (the built-in ImageNet weights, head "
        "tuning: the backbone rule of diffmix.classify.config.default_backbone)",
    )
    resolution: int | None = Field(
        None, ge=16, le=1024,
        description="classifier image side in px; default: 64 from scratch, 224 with pretrained "
        "weights",
    )  # fmt: skip
    epochs: int = Field(50, ge=1, description="passes over the real training subset")
    batch_size: int = Field(16, ge=1, description="classifier batch size")
    lr: float = Field(0.05, gt=0, description="peak SGD learning rate")
    train_repeats: int = Field(
        3, ge=1, le=20,
        description="classifier runs per (arm, seed) on the seed's subset, with training seeds "
        "seed + 1000·k; the seed's accuracy is their mean (a small net trained from scratch on "
        "a few shots varies as much between training seeds as between subsets)",
    )  # fmt: skip
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    # -- extra stage settings (any other key of the stage's config) -------------------------------
    personalize_overrides: dict[str, Any] = Field(
        default_factory=dict, description="other PersonalizeConfig keys (e.g. ti_lr)"
    )
    generate_overrides: dict[str, Any] = Field(
        default_factory=dict, description="other GenerateConfig keys (e.g. filter_bottom)"
    )
    train_overrides: dict[str, Any] = Field(
        default_factory=dict, description="other TrainConfig keys (e.g. weight_decay)"
    )
    budget_minutes: float = Field(
        45.0, gt=0, description="warn before starting when the estimate exceeds this"
    )

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds is empty; give at least one seed, e.g. 0,1,2")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be distinct, got {v} (repeated: {dup})")
        bad = [s for s in v if s < 0]
        if bad:
            raise ValueError(f"seeds must be >= 0, got {bad}")
        return list(v)

    @field_validator("arms")
    @classmethod
    def _valid_arms(cls, v: list[str]) -> list[str]:
        v = [a.strip() for a in v if a.strip()]
        if not v:
            raise ValueError(f"arms is empty; give some of {', '.join(ARMS)}")
        unknown = [a for a in v if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
        dup = sorted({a for a in v if v.count(a) > 1})
        if dup:
            raise ValueError(f"arms must be distinct, got repeated {dup}")
        return [a for a in ARMS if a in v]  # table order

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        from diffmix.classify import check_arch

        return None if v is None else check_arch(v)

    @field_validator("personalize_overrides", "generate_overrides", "train_overrides")
    @classmethod
    def _free_keys_only(cls, v: dict[str, Any], info) -> dict[str, Any]:
        stage = info.field_name.removesuffix("_overrides")
        taken = sorted(set(v) & _CONTROLLED[stage])
        if taken:
            raise ValueError(
                f"{info.field_name} may not set {taken}: the experiment sets them (use its "
                "own fields, e.g. --strength, --epochs) so that every arm stays comparable"
            )
        return dict(v)

    def check_stage_configs(self) -> None:
        """Build every stage config once (first seed) so a bad setting fails before any work.

        Raises ``ValueError`` naming the stage and the bad keys.
        """
        from diffmix.experiment.plan import generate_config, personalize_config, train_config

        seed = self.seeds[0]
        builders: list[tuple[str, Callable[[], Any]]] = []
        if any(a in ADAPTER_ARMS for a in self.arms):
            builders.append(("personalize", lambda: personalize_config(self, seed)))
        for arm in self.arms:
            if arm in GENERATIVE_ARMS:
                builders.append(
                    (f"generate {arm}", lambda a=arm: generate_config(self, a, seed, Path("a")))
                )
            builders.append((f"train {arm}", lambda a=arm: train_config(self, a, seed, Path("s"))))
        for name, build in builders:
            try:
                build()
            except ValidationError as e:
                raise ValueError(f"{name} settings: {_readable(e)}") from None


def make_config(**fields: Any) -> ExperimentConfig:
    """An :class:`ExperimentConfig` whose problems are one readable ``ValueError`` line each.

    Also builds the stage configs once, so that an override a stage rejects fails here.
    """
    try:
        cfg = ExperimentConfig(**fields)
    except ValidationError as e:
        raise ValueError(_readable(e)) from None
    cfg.check_stage_configs()
    return cfg


def _readable(e: ValidationError) -> str:
    """pydantic's several-lines-per-problem layout as one line: ``key: message; ...``."""
    return "; ".join(
        (f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "")
        + str(err["msg"]).removeprefix("Value error, ")
        for err in e.errors()
    )
