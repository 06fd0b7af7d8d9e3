"""The generation stage's config: :class:`GenerateConfig`, its command line and its saved copy.

A generation folder's ``config.json`` holds the resolved config (:meth:`GenerateConfig.resolved`)
plus what a reader needs (class names, subset, fingerprints; :mod:`diffmix.synthetic`);
:func:`load_config` reads it back and :func:`command_for` writes the equivalent
``diffmix generate`` command line (dataset card, the Generate page).
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from diffmix.adapter import require_adapter
from diffmix.config import Device, Dtype, StageConfig
from diffmix.strategies import STRATEGIES, StrategyName, get_strategy
from diffmix.synthetic import CONFIG_FILE, FORMAT

#: Config fields that may change between runs into the same folder (they change no pixel).
RERUN_FREE_FIELDS = frozenset({"filter_bottom"})


class GenerateConfig(StageConfig):
    """Everything a generation run needs (unknown keys rejected); saved in ``config.json``."""

    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    shots: int | None = Field(None, ge=1, description="few-shot subset: images per class")
    imbalance: float | None = Field(None, gt=0, le=1, description="long-tail factor F in (0, 1]")
    subset_seed: int = Field(0, ge=0, description="seed of the subset draw (as personalize's)")
    strategy: StrategyName = Field("diff-mix", description=f"one of {', '.join(STRATEGIES)}")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    adapter: str | None = Field(None, description="adapter folder (diff-* / ti-* strategies)")
    multiplier: int = Field(
        5, ge=1,
        description="translations per real training image (M); 5 = the authors' "
        "(4aa0ec8:scripts/sample.sh:16)",
    )  # fmt: skip
    strengths: list[float] | None = Field(
        None,
        description="strength(s) in (0, 1]: one value = fixed, several = drawn uniformly per "
        "task (default: 1 for *-gen, else 0.7, the authors' run.sh: 4aa0ec8:run.sh:24/46/64)",
    )
    targets: Literal["uniform", "confusion", "tail"] = Field(
        "uniform", description="how target classes are drawn (mix strategies)"
    )
    confusion: str | None = Field(
        None, description='confusion JSON {"class_names", "matrix"} (targets=confusion)'
    )
    limit: int | None = Field(None, ge=1, description="make only the first N planned tasks")
    filter_bottom: float = Field(
        0.0, ge=0, lt=1, description="fraction of least faithful images marked kept=false"
    )
    score: bool = Field(True, description="compute faithfulness and diversity per image")
    batch_size: int = Field(16, ge=1, description="images per shared denoising loop")
    grouping: Literal["strength", "order"] = Field(
        "strength", description="batch tasks of equal strength together, or in plain task order"
    )
    num_inference_steps: int = Field(
        25, ge=1, le=1000,
        description="timestep grid size (steps at s = 1; at most the schedulers' 1000 training timesteps); 25 = the authors' "
        "(a81337b:augmentation/diff_mix.py:159)",
    )  # fmt: skip
    guidance_scale: float = Field(
        7.5, ge=0,
        description="classifier-free guidance (<= 1: off); 7.5 = the authors' "
        "(a81337b:augmentation/diff_mix.py:86)",
    )  # fmt: skip
    prompt_template: str | None = Field(
        None,
        description="prompt replacing the strategy's own: {token} = the target's token (or "
        "class name for base-model strategies), {superclass}; None = the strategy's prompt",
    )
    gamma: float = Field(
        0.5, gt=0,
        description="soft-label exponent γ written into diff-mix rows (training recomputes "
        "them with its own γ); 0.5 = the authors' run.sh (4aa0ec8:run.sh:23/45/63)",
    )  # fmt: skip
    seed: int = Field(0, ge=0, description="plan seed: target/strength draws and image seeds")
    superclass: str | None = Field(
        None, description="word after class names in base-model prompts (default: dataset's)"
    )
    device: Device = None
    dtype: Dtype = None

    @field_validator("strengths")
    @classmethod
    def _valid_strengths(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("strengths is empty; give at least one strength in (0, 1]")
        for s in v:
            if not (math.isfinite(s) and 0.0 < s <= 1.0):
                raise ValueError(f"strength must be in (0, 1], got {s!r}")
        return [float(s) for s in v]

    @model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        st = get_strategy(self.strategy)
        if self.shots is not None and self.imbalance is not None:
            raise ValueError(f"give shots ({self.shots}) or imbalance ({self.imbalance}), not both")
        if st.generative == "txt2img" and self.strengths not in (None, [1.0]):
            raise ValueError(
                f"{st.name} draws from pure noise: strength must be 1, got {self.strengths}"
            )
        require_adapter(st, self.adapter, how="pass --adapter DIR")
        if self.targets != "uniform" and st.target == "same":
            raise ValueError(
                f"targets={self.targets!r} chooses target classes, but {st.name} keeps the "
                "source class; use a *-mix strategy or targets='uniform'"
            )
        if self.targets == "confusion" and not self.confusion:
            raise ValueError(
                "targets='confusion' needs a confusion matrix file: pass --confusion FILE "
                "(e.g. the confusion.json a `diffmix train` run writes)"
            )
        if self.targets != "confusion" and self.confusion:
            raise ValueError(
                f"a confusion file ({self.confusion}) is only used with targets='confusion', "
                f"got targets={self.targets!r}"
            )
        if self.filter_bottom > 0 and not self.score:
            raise ValueError(
                f"filter_bottom={self.filter_bottom} drops the least faithful images, which "
                "needs the scores: keep score on"
            )
        return self

    def resolved(self) -> GenerateConfig:
        """A copy with the strategy-dependent default strengths filled in."""
        if self.strengths is not None:
            return self
        st = get_strategy(self.strategy)
        return self.model_copy(update={"strengths": [1.0] if st.generative == "txt2img" else [0.7]})

    @property
    def strength_sampling(self) -> str:
        """``"fixed"`` (one strength) or ``"uniform"`` (drawn per task from the list)."""
        return "fixed" if len(self.strengths or [0]) == 1 else "uniform"


def command_for(config: GenerateConfig, out: str | os.PathLike | None = None) -> str:
    """The ``diffmix generate`` command line equivalent to ``config`` (for cards and the UI)."""
    c = config.resolved()
    defaults = GenerateConfig(strategy=c.strategy, adapter=c.adapter)
    parts = ["diffmix", "generate", c.dataset, "--model", c.model, "--strategy", c.strategy]
    if c.adapter:
        parts += ["--adapter", c.adapter]
    parts += ["--multiplier", str(c.multiplier)]
    if len(c.strengths) == 1:
        parts += ["--strength", f"{c.strengths[0]:g}"]
    else:
        parts += ["--strengths", ",".join(f"{s:g}" for s in c.strengths)]
    flags = {
        "shots": "--shots", "imbalance": "--imbalance", "subset_seed": "--subset-seed",
        "targets": "--targets", "confusion": "--confusion", "limit": "--limit",
        "filter_bottom": "--filter-bottom", "batch_size": "--batch-size",
        "grouping": "--grouping", "num_inference_steps": "--steps",
        "guidance_scale": "--guidance-scale", "gamma": "--gamma", "seed": "--seed",
        "superclass": "--superclass", "device": "--device", "dtype": "--dtype",
        "prompt_template": "--prompt-template",
    }  # fmt: skip
    for key, flag in flags.items():
        value = getattr(c, key)
        if value is not None and value != getattr(defaults, key):
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if not c.score:
        parts.append("--no-score")
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


def load_config(out: str | os.PathLike) -> tuple[GenerateConfig, dict[str, Any]]:
    """The :class:`GenerateConfig` of a generation folder and its full ``config.json``."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{str(out)!r} is not a generation folder (no {CONFIG_FILE})")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a generation config (format {FORMAT})")
    cfg = GenerateConfig(**{k: record[k] for k in GenerateConfig.model_fields if k in record})
    return cfg, record
