"""The plan of an experiment: its stages in order, each with its stage config.

Per seed: the seed's adapter (personalize) before the first arm needing it, each generative
arm's synthetic set (generate) before its classifier runs (train). The stage configs all use
the seed as their subset seed, so every arm of a seed sees the same real images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from diffmix.experiment.config import (
    _MIX,
    ADAPTER_ARMS,
    GENERATIVE_ARMS,
    TRAIN_SEED_STRIDE,
    ExperimentConfig,
)
from diffmix.experiment.estimate import _estimate_all

# --------------------------------------------------------------------------- stage configs


def personalize_config(cfg: ExperimentConfig, seed: int):
    """The adapter of ``seed``: its ``seed`` is the subset seed (and the training seed)."""
    from diffmix.personalize import PersonalizeConfig

    return PersonalizeConfig(
        **cfg.personalize_overrides,
        dataset=cfg.dataset,
        shots=cfg.shots,
        seed=seed,
        model=cfg.model,
        steps=cfg.personalize_steps,
        rank=cfg.rank,
        batch_size=cfg.personalize_batch_size,
    ).resolved()


def generate_config(cfg: ExperimentConfig, arm: str, seed: int, adapter: Path):
    """The synthetic set of (arm, seed): same subset (``subset_seed``), plan seed = seed."""
    from diffmix.generate import GenerateConfig

    return GenerateConfig(
        **cfg.generate_overrides,
        dataset=cfg.dataset,
        shots=cfg.shots,
        subset_seed=seed,
        seed=seed,
        strategy=arm,
        model=cfg.model,
        adapter=str(adapter) if arm in ADAPTER_ARMS else None,
        multiplier=cfg.multiplier,
        strengths=[cfg.strength],
        gamma=cfg.gamma,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        batch_size=cfg.generate_batch_size,
    ).resolved()


def classifier_backbone(cfg: ExperimentConfig) -> tuple[str, int]:
    """The classifier's ``(arch, resolution)``: unset fields filled by dataset. The demo keeps
    the small from-scratch SmallCNN at 64 px (the README table's setting); real photos get the
    built-in ImageNet Lite0 at 224 px with head tuning, as ``diffmix train`` does
    (:func:`diffmix.classify.config.default_backbone`)."""
    from diffmix.classify.config import default_backbone, is_demo

    arch = cfg.arch or ("smallcnn" if is_demo(cfg.dataset) else None)
    if arch == "smallcnn":
        return arch, cfg.resolution or 64
    arch, _pretrained, resolution = default_backbone(cfg.dataset, arch, None, cfg.resolution)
    return arch, resolution


def train_config(cfg: ExperimentConfig, arm: str, seed: int, synthetic: Path, repeat: int = 0):
    """Run ``repeat`` of (arm, seed): ``subset_seed`` = seed, training seed
    ``seed + TRAIN_SEED_STRIDE * repeat``, synthetic set and p for generative arms."""
    from diffmix.classify import TrainConfig

    generative = arm in GENERATIVE_ARMS
    fields: dict[str, Any] = {"eval_every": max(1, cfg.epochs // 5), **cfg.train_overrides}
    arch, resolution = classifier_backbone(cfg)
    return TrainConfig(
        **fields,
        dataset=cfg.dataset,
        shots=cfg.shots,
        seed=seed + TRAIN_SEED_STRIDE * repeat,
        subset_seed=seed,
        synthetic=[str(synthetic)] if generative else [],
        p=cfg.p if generative else 0.0,
        gamma=cfg.gamma,
        mix=_MIX.get(arm, "none"),
        arch=arch,
        resolution=resolution,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        num_threads=cfg.num_threads,
    ).resolved()


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Stage:
    """One unit of work of an experiment.

    Attributes:
        kind: ``personalize``, ``generate`` or ``train``.
        seed: the experiment seed (= subset seed of every stage of this seed).
        arm: the arm (None for a seed's adapter).
        out: the stage's output / run directory.
        config: its PersonalizeConfig / GenerateConfig / TrainConfig (resolved).
        estimate_s: estimated seconds (:func:`estimate_seconds`).
        repeat: which classifier run of (arm, seed) a train stage is (0, 1, ...).
    """

    kind: Literal["personalize", "generate", "train"]
    seed: int
    arm: str | None
    out: Path
    config: BaseModel
    estimate_s: float = 0.0
    repeat: int = 0
    estimate_measured: bool = False

    @property
    def name(self) -> str:
        """``personalize seed 0``, ``generate diff-mix seed 1``, ``train baseline seed 2``,
        ``train baseline seed 2 run 2`` (the second classifier of that arm and seed)."""
        arm = f" {self.arm}" if self.arm else ""
        run = f" run {self.repeat + 1}" if self.repeat else ""
        return f"{self.kind}{arm} seed {self.seed}{run}"

    def finished(self) -> bool:
        """Whether the stage's output is complete (then a rerun skips it)."""
        if self.kind == "personalize":
            from diffmix.personalize import ADAPTER_FILE

            return (self.out / ADAPTER_FILE).is_file()
        if self.kind == "generate":
            status = _read_json(self.out / "status.json") or {}
            return (self.out / "config.json").is_file() and status.get("state") == "done"
        from diffmix.classify.train import METRICS_FILE

        return (self.out / METRICS_FILE).is_file()

    def recorded_subset(self) -> dict[str, Any] | None:
        """The subset this stage recorded it used (``None`` before it ran)."""
        if self.kind == "personalize":
            return (_read_json(self.out / "adapter.json") or {}).get("subset")
        if self.kind == "generate":
            return (_read_json(self.out / "config.json") or {}).get("subset")
        return _read_json(self.out / "subset.json")

    def recorded_config(self) -> dict[str, Any] | None:
        """The config a finished stage recorded (to refuse reusing one made otherwise)."""
        if self.kind == "personalize":
            return (_read_json(self.out / "adapter.json") or {}).get("config")
        return _read_json(self.out / "config.json")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "seed": self.seed, "arm": self.arm,
                "repeat": self.repeat, "out": str(self.out),
                "estimate_s": round(self.estimate_s, 1)}  # fmt: skip


def plan_stages(
    config: ExperimentConfig, out: str | os.PathLike, *, test_images: int | None = None
) -> list[Stage]:
    """Every stage of the experiment in execution order, with its estimated cost.

    Seed by seed; within a seed, arm by arm (table order): the seed's adapter right before the
    first arm needing it, each synthetic set right before its ``train_repeats`` runs
    (``runs/<arm>-seed<seed>``, then ``...-run2``, ...). ``test_images`` (the size of
    the test split; default: the demo's 360) only feeds the estimate.
    """
    out = Path(out).expanduser().resolve()
    stages: list[Stage] = []
    for seed in config.seeds:
        adapter = out / "adapters" / f"seed{seed}"
        for arm in config.arms:
            if arm in ADAPTER_ARMS and not any(
                s.kind == "personalize" and s.seed == seed for s in stages
            ):
                stages.append(
                    Stage("personalize", seed, None, adapter, personalize_config(config, seed))
                )
            synthetic = out / "synthetic" / f"{arm}-seed{seed}"
            if arm in GENERATIVE_ARMS:
                gcfg = generate_config(config, arm, seed, adapter)
                stages.append(Stage("generate", seed, arm, synthetic, gcfg))
            for k in range(config.train_repeats):
                tcfg = train_config(config, arm, seed, synthetic, repeat=k)
                name = f"{arm}-seed{seed}" + (f"-run{k + 1}" if k else "")
                stages.append(Stage("train", seed, arm, out / "runs" / name, tcfg, repeat=k))
    _estimate_all(stages, num_classes=None, test_images=test_images)
    return stages


def plan_experiment(
    config: ExperimentConfig, out: str | os.PathLike
) -> tuple[list[Stage], dict[int, dict[str, Any]]]:
    """The stages (estimated with the dataset's real sizes) and each seed's expected subset.

    Loads the dataset (train and test split) and draws each seed's few-shot subset exactly as
    every stage will (:func:`diffmix.data.make_subset`); writes nothing.

    Returns:
        ``(stages, subsets)`` with ``subsets[seed] = {"indices", "fingerprint", "shots",
        "checked": []}``.
    """
    from diffmix.data import load_dataset, make_subset

    config.check_stage_configs()
    train_ds = load_dataset(config.dataset, split="train")
    test_ds = load_dataset(config.dataset, split="test")
    stages = plan_stages(config, out, test_images=len(test_ds))
    _estimate_all(stages, num_classes=train_ds.num_classes, test_images=len(test_ds),
                  fingerprint=train_ds.fingerprint, calibrate=True)  # fmt: skip
    expected: dict[int, dict[str, Any]] = {}
    for seed in config.seeds:
        sub = make_subset(train_ds, shots=config.shots, seed=seed).to_dict()
        expected[seed] = {"indices": sub["indices"], "fingerprint": sub["fingerprint"],
                          "shots": sub["shots"], "checked": []}  # fmt: skip
    return stages, expected
