"""The configuration of a personalization run (:class:`PersonalizeConfig`); no torch import.

Saved as the run's ``config.json`` and inside the adapter's ``adapter.json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from diffmix.config import StageConfig

#: Fields that do not change the trained weights: a resume may change them.
RUN_ONLY_FIELDS = ("checkpoint_every", "checkpoint_minutes")
#: Default checkpoint spacing: about ten checkpoints per run, never more than this many steps
#: apart (the former fixed interval). Our choice, so a kill loses at most ~a tenth of a run.
MAX_CHECKPOINT_EVERY = 250


class PersonalizeConfig(StageConfig):
    """Everything a personalization run needs; saved as ``config.json`` and in adapter.json."""

    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    shots: int | None = Field(None, ge=1, description="few-shot: images per class")
    imbalance: float | None = Field(None, gt=0, le=1, description="long-tail factor F in (0, 1]")
    seed: int = Field(0, description="subset and training seed")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps (default: 1500 nano, 5000 SD on a GPU; on a CPU the CLI "
        "and the app size it to ~15 min at this machine's measured speed)",
    )
    rank: int = Field(
        10,
        ge=1,
        description="LoRA rank; 10 = the authors' scripts (4aa0ec8:scripts/finetune.sh:35)",
    )
    lr: float | None = Field(None, gt=0, description="LoRA lr (default: 1e-3 nano, 5e-5 SD)")
    ti_lr: float | None = Field(None, gt=0, description="token lr (default: 5e-3 nano, 5e-5 SD)")
    resolution: int | None = Field(
        None, ge=16, description="training side in px (default: model's)"
    )
    batch_size: int = Field(8, ge=1, description="images per step per process")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    ti_only: bool = Field(False, description="train the class tokens alone (no LoRA)")
    class_balanced: bool | None = Field(
        None,
        description="draw each class equally often; default: on for a long-tail subset "
        "(imbalance set), as the authors always do (a81337b:train_lora.py:825-826), else off",
    )
    superclass: str | None = Field(
        None, description="word after the token (default: dataset's, else 'object')"
    )
    init_from: Literal["superclass", "classname"] = "superclass"
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="steps between resumable checkpoints (default: steps/10, at most 250)",
    )
    checkpoint_minutes: float = Field(
        10.0,
        gt=0,
        description="also checkpoint when this many minutes passed since the last one "
        "(our choice: a kill loses at most ~10 min of work)",
    )
    sample_every: int = Field(
        0, ge=0, description="steps between per-class sample grids (0: never)"
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = Field(None, description="default: on for GPU, off on CPU")

    @model_validator(mode="after")
    def _one_subset_kind(self) -> PersonalizeConfig:
        if self.shots is not None and self.imbalance is not None:
            raise ValueError("choose either shots (few-shot) or imbalance (long-tail), not both")
        return self

    def resolved(self) -> PersonalizeConfig:
        """A copy with model-dependent defaults filled in."""
        nano = self.model == "nano"
        steps = self.steps or (1500 if nano else 5000)
        return self.model_copy(
            update={
                "steps": steps,
                "lr": self.lr or (1e-3 if nano else 5e-5),
                "ti_lr": self.ti_lr or (5e-3 if nano else 5e-5),
                "class_balanced": (
                    self.imbalance is not None
                    if self.class_balanced is None
                    else self.class_balanced
                ),
                "checkpoint_every": self.checkpoint_every
                or max(1, min(MAX_CHECKPOINT_EVERY, steps // 10)),
            }
        )
