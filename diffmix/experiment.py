"""Experiments: the paper's comparison tables, end to end (personalize -> generate -> train).

``diffmix experiment fewshot --dataset demo --shots 5 --seeds 0,1,2 --out DIR`` /
:func:`run_experiment` reproduces the few-shot table of Diff-Mix (Wang et al., CVPR 2024,
arXiv 2403.19600, Table 2 style) on any dataset: for every seed it draws one few-shot subset of
the train split, and every *arm* trains a classifier on exactly that subset:

==========  ===================================================================================
arm         what the classifier sees besides the real images
==========  ===================================================================================
baseline    nothing (real images only)
mixup       classic Mixup on each batch (``TrainConfig.mix="mixup"``)
cutmix      classic CutMix on each batch (``TrainConfig.mix="cutmix"``)
real-mix    base-model img2img toward another class, class-*name* prompt (no personalization)
diff-aug    personalized img2img within the source class (label stays one-hot)
diff-mix    personalized img2img toward another class, soft label ``(1 - s^γ)·A + s^γ·B``
==========  ===================================================================================

Synthetic arms replace each real sample with probability ``p``. One adapter per seed is shared
by diff-aug and diff-mix; each (arm, seed) gets its own synthetic set and run. The reported
figure is the *final* epoch's test accuracy (never the best epoch), as mean ± sample standard
deviation over the seeds.

Output folder ``DIR`` (also the experiment's run directory, :mod:`diffmix.runs`)::

    experiment.json            the resolved ExperimentConfig + the stage list (config.json too)
    adapters/seed{S}/          personalize output (adapter folder + its run directory)
    synthetic/{arm}-seed{S}/   generate output (synthetic dataset folder + run directory)
    runs/{arm}-seed{S}/        train run directory (metrics.json, subset.json, ...)
    results.json               {"arms": {arm: {"mean", "std", "runs": [...]}}, "subsets", ...}
    results.md                 the table
    status.json, events.jsonl, log.txt, CANCEL

**Same subset for every arm of a seed.** The stages name the subset seed differently
(``PersonalizeConfig.seed``, ``GenerateConfig.subset_seed``, ``TrainConfig.subset_seed``); the
experiment sets all three to the seed and, after every stage, compares the subset that stage
*recorded* (adapter.json ``subset``, the synthetic folder's config.json ``subset``, the run's
subset.json) with the one drawn here, refusing to go on when they differ.

**Resumable.** A rerun into the same ``DIR`` (``resume`` or not) skips finished stages (an
adapter with adapter.json, a synthetic folder whose generation is ``done``, a run with
metrics.json) without touching their files, and resumes unfinished ones from their own
checkpoints. A rerun with other settings is refused (choose another ``DIR``), except for the
arms and seeds (add some: only the new stages run) and the thread count.

**Progress and cancel.** ``status.json`` holds the overall progress (stages weighted by their
estimated cost), the current stage (``stage``, ``stage_kind``, ``arm``, ``seed``, ``stage_index``
of ``stages``, ``stage_progress``) and an ETA (the estimate, rescaled by how fast the stages run
so far went); ``events.jsonl`` has ``plan``, ``stage_start``, ``stage_skip``, ``stage_done``
(with ``seconds``, and ``test_accuracy`` for runs), ``cancelled`` and ``done`` events.
``RunDir(DIR).request_cancel()`` is forwarded to the running stage, which stops at its next step
with a checkpoint; rerun to continue.

**Defaults** (sized for the demo with nano-SD on 2 CPU cores, see :func:`estimate_seconds`):
the authors' 5-shot recipe (:data:`diffmix.recipes.RECIPES` ``"fewshot"``, from their paper-time
run.sh: ``s = 0.7``, ``γ = 0.5``, ``p = 0.3``, multiplier 5, 5 shots; mixup/cutmix arms mix a
batch with probability 0.5 as their trainer does), 25 sampling steps; 300 personalization
steps (the 5-shot subset has only 60 images: ~40 passes at batch 8); the ``smallcnn`` classifier from scratch at 64 px, 50
epochs at batch 16 (demo, 5-shot, seed 0, real images only: smallcnn 80% test accuracy in 49 s,
ResNet-18 34% in 64 s -- from scratch on 60 images the small network generalizes far better).

Public API: :data:`ARMS`, :class:`ExperimentConfig`, :func:`make_config`, :class:`Stage`,
:func:`plan_stages`, :func:`plan_experiment`, :func:`estimate_seconds`, :func:`format_estimate`,
:func:`run_experiment`, :func:`mean_std`, :func:`summarize_arms`, :func:`format_table`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from diffmix import costs
from diffmix.config import StageConfig
from diffmix.recipes import RECIPES
from diffmix.runs import RunDir, atomic_write

logger = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
FORMAT = "diffmix-experiment/1"

#: Files a fresh experiment folder may already hold (run directory, a job launcher's files).
_RUN_FILES = frozenset(
    {"status.json", "events.jsonl", "log.txt", "CANCEL", "config.json", "job.json", "stdout.log",
     "request.yaml"}
)  # fmt: skip

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

# -- the time estimate: diffmix.costs (one cost model, calibrated on this machine) ------------
#: Seconds to fit the scoring judge once per dataset (see :data:`diffmix.costs.REFERENCE_FIT_S`).
REFERENCE_FIT_S = costs.REFERENCE_FIT_S
#: Images in the test split when the dataset is not loaded yet (the demo's).
_DEFAULT_TEST_IMAGES = 360
#: Seconds between two looks of the watcher at a running stage (cancel, progress).
_WATCH_INTERVAL_S = 0.5


# --------------------------------------------------------------------------- config


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
        seed = self.seeds[0]
        builders: list[tuple[str, Callable[[], Any]]] = []
        if any(a in ADAPTER_ARMS for a in self.arms):
            builders.append(("personalize", lambda: _personalize_config(self, seed)))
        for arm in self.arms:
            if arm in GENERATIVE_ARMS:
                builders.append(
                    (f"generate {arm}", lambda a=arm: _generate_config(self, a, seed, Path("a")))
                )
            builders.append((f"train {arm}", lambda a=arm: _train_config(self, a, seed, Path("s"))))
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


# --------------------------------------------------------------------------- stage configs


def _personalize_config(cfg: ExperimentConfig, seed: int):
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


def _generate_config(cfg: ExperimentConfig, arm: str, seed: int, adapter: Path):
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


def _train_config(cfg: ExperimentConfig, arm: str, seed: int, synthetic: Path, repeat: int = 0):
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


# --------------------------------------------------------------------------- stages


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
                    Stage("personalize", seed, None, adapter, _personalize_config(config, seed))
                )
            synthetic = out / "synthetic" / f"{arm}-seed{seed}"
            if arm in GENERATIVE_ARMS:
                gcfg = _generate_config(config, arm, seed, adapter)
                stages.append(Stage("generate", seed, arm, synthetic, gcfg))
            for k in range(config.train_repeats):
                tcfg = _train_config(config, arm, seed, synthetic, repeat=k)
                name = f"{arm}-seed{seed}" + (f"-run{k + 1}" if k else "")
                stages.append(Stage("train", seed, arm, out / "runs" / name, tcfg, repeat=k))
    _estimate_all(stages, num_classes=None, test_images=test_images)
    return stages


def _estimate_all(
    stages: list[Stage],
    *,
    num_classes: int | None,
    test_images: int | None,
    fingerprint: str | None = None,
    calibrate: bool = False,
) -> None:
    """Set every stage's ``estimate_s`` (+ the one-time judge fit on the first scored set,
    unless the workspace holds a judge for the dataset of ``fingerprint``); ``calibrate``
    measures this machine's rates first where none are stored (:mod:`diffmix.costs`)."""
    for s in stages:
        s.estimate_s = estimate_seconds(
            s, num_classes=num_classes, test_images=test_images, calibrate=calibrate
        )
    scored = [s for s in stages if s.kind == "generate" and s.config.score and not s.finished()]
    if scored and not (fingerprint and _judge_cached(fingerprint)):
        scored[0].estimate_s += REFERENCE_FIT_S


def _judge_cached(fingerprint: str) -> bool:
    """Whether the workspace holds a scoring judge fitted on the dataset (estimate only)."""
    from diffmix import workspace

    folder = workspace.home() / "refclf"
    return folder.is_dir() and any(folder.glob(f"*{fingerprint}*.safetensors"))


def estimate_seconds(
    stage: Stage,
    *,
    num_classes: int | None = None,
    test_images: int | None = None,
    calibrate: bool = False,
) -> float:
    """Seconds a stage takes on this machine, from :mod:`diffmix.costs` (measured rates when
    this machine was calibrated for the stage's setup -- ``calibrate`` measures them now -- else
    rough ones); sets ``stage.estimate_measured``.

    Generation makes ``multiplier × shots × classes`` images, training sees ``shots × classes``
    real images an epoch (12 classes when unknown; ``test_images`` default: the demo's 360).
    """
    c = stage.config
    classes = num_classes or 12
    if stage.kind == "personalize":
        est = costs.personalize_estimate(c, calibrate=calibrate)
    elif stage.kind == "generate":
        est = costs.generate_estimate(c, images=c.multiplier * c.shots * classes,
                                      calibrate=calibrate)  # fmt: skip
    else:
        est = costs.train_estimate(c, train_images=c.shots * classes,
                                   test_images=test_images or _DEFAULT_TEST_IMAGES,
                                   num_classes=classes, calibrate=calibrate)  # fmt: skip
    stage.estimate_measured = est.rates.measured
    return est.seconds


def format_estimate(stages: Sequence[Stage], budget_minutes: float | None = None) -> str:
    """One paragraph: stages left per kind and the estimated minutes (a warning over budget)."""
    left = [s for s in stages if not s.finished()]
    by_kind: dict[str, tuple[int, float]] = {}
    for s in left:
        n, t = by_kind.get(s.kind, (0, 0.0))
        by_kind[s.kind] = (n + 1, t + s.estimate_s)
    total = sum(t for _, t in by_kind.values())
    parts = ", ".join(f"{n} {k} ({t / 60:.1f} min)" for k, (n, t) in by_kind.items())
    done = len(stages) - len(left)
    text = (
        f"estimated time: ~{total / 60:.0f} min for {len(left)} stage(s)"
        + (f": {parts}" if parts else "")
        + (f"; {done} already finished" if done else "")
        + (
            " (measured rates on this machine)"
            if left and all(s.estimate_measured for s in left)
            else " (partly a rough guess: not every stage was measured on this machine)"
        )
    )
    if budget_minutes is not None and total / 60 > budget_minutes:
        text += (
            f"\nwarning: that exceeds the {budget_minutes:g}-minute budget; trade with fewer "
            "--seeds, --steps (sampling), --multiplier, --personalize-steps or --epochs"
        )
    return text


# --------------------------------------------------------------------------- results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def per_seed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classifier runs -> one entry per seed (first-seen order): the runs' mean accuracies.

    ``test_accuracy`` and ``mean_class_accuracy`` are the means over that seed's runs (its
    training repeats); ``repeats`` lists each run's test accuracy; ``run`` is the first run's
    folder and ``runs_dirs`` all of them.
    """
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], []).append(r)
    out = []
    for seed, rs in by_seed.items():
        mca = [r["mean_class_accuracy"] for r in rs if r.get("mean_class_accuracy") is not None]
        out.append({
            "seed": seed,
            "test_accuracy": sum(r["test_accuracy"] for r in rs) / len(rs),
            "mean_class_accuracy": sum(mca) / len(mca) if mca else None,
            "synthetic_images": rs[0].get("synthetic_images"),
            "run": rs[0].get("run"),
            "repeats": [r["test_accuracy"] for r in rs],
            "runs_dirs": [r.get("run") for r in rs],
        })  # fmt: skip
    return out


def summarize_arms(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{arm: [run, ...]}`` -> ``{arm: {"mean", "std", "n", "runs"}}`` (test accuracy in [0, 1]).

    The runs of one seed (its training repeats) are averaged first (:func:`per_seed`); mean
    and std are then over seeds, ``n`` = seeds. Arms without any finished run are left out.
    """
    out = {}
    for arm, records in runs.items():
        if records:
            rs = per_seed(records)
            mean, std = mean_std([r["test_accuracy"] for r in rs])
            out[arm] = {"mean": mean, "std": std, "n": len(rs), "runs": rs}
    return out


def paired_delta(
    base_runs: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]
) -> tuple[float, float | None, int, int] | None:
    """Per-seed accuracy gain of ``runs`` over ``base_runs`` on the seeds both have.

    Each seed is one real subset shared by every arm, so the per-seed difference removes the
    subset-to-subset spread that the arms' own stds carry. Returns ``(mean, std, wins, n)``
    (accuracy points in [-1, 1]; ``std`` with ddof 1, ``None`` for one seed; ``wins`` = seeds
    where ``runs`` scored strictly higher), or ``None`` when no seed is shared.
    """
    base = {r["seed"]: r["test_accuracy"] for r in base_runs}
    diffs = [r["test_accuracy"] - base[r["seed"]] for r in runs if r["seed"] in base]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return mean, (std if len(diffs) > 1 else None), sum(d > 0 for d in diffs), len(diffs)


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table: arm, mean ± std (%), Δ vs baseline (of the means, and
    paired per seed: mean ± std, seeds won), per-seed values."""
    arms = results["arms"]
    base = arms.get("baseline", {}).get("mean")
    base_runs = arms.get("baseline", {}).get("runs", [])
    lines = [
        f"Few-shot ({results['shots']}-shot) on `{results['dataset']}`, "
        f"seeds {results['seeds']}: final-epoch test accuracy, mean ± std over seeds"
        + (
            f" (each seed: the mean of {results['train_repeats']} classifier runs)"
            if results.get("train_repeats", 1) > 1
            else ""
        ),
        "",
        "| arm | accuracy (%) | Δ vs baseline | paired Δ (seeds won) | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    for arm, a in arms.items():
        delta = "-" if base is None or arm == "baseline" else f"{100 * (a['mean'] - base):+.2f}"
        paired = None if arm == "baseline" else paired_delta(base_runs, a["runs"])
        if paired is None:
            pair = "-"
        else:
            m, sd, wins, n = paired
            pair = f"{100 * m:+.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")
            pair += f" ({wins}/{n})"
        seeds = ", ".join(f"{r['seed']}: {100 * r['test_accuracy']:.1f}" for r in a["runs"])
        lines.append(
            f"| {arm} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | {delta} | {pair} | {seeds} |"
        )
    if not results.get("complete", True):
        lines += ["", "_Incomplete: some runs have not finished yet._"]
    return "\n".join(lines) + "\n"


def _run_record(stage: Stage, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": stage.seed,
        "test_accuracy": float(metrics["test_accuracy"]),
        "mean_class_accuracy": metrics.get("mean_class_accuracy"),
        "synthetic_images": metrics.get("synthetic_images"),
        "run": str(stage.out),
    }


# --------------------------------------------------------------------------- progress


class _Progress:
    """The experiment's status: overall progress (stage estimates as weights), ETA, cancel."""

    def __init__(self, run: RunDir, stages: Sequence[Stage]):
        self.run = run
        self.total = sum(s.estimate_s for s in stages) or 1.0
        self.done_est = 0.0  # estimate of the stages finished (or skipped)
        self.spent_est = 0.0  # estimate of the stages run in this call ...
        self.spent_s = 0.0  # ... and the seconds they really took
        self.lock = threading.Lock()

    def set(self, current: Stage | None = None, fraction: float = 0.0, **fields: Any) -> None:
        with self.lock:
            est = self.done_est + (current.estimate_s * fraction if current else 0.0)
            ratio = self.spent_s / self.spent_est if self.spent_est > 0 else 1.0
            self.run.set_status(
                progress=min(1.0, est / self.total),
                eta_s=round(max(0.0, self.total - est) * ratio, 1),
                **fields,
            )

    def finish(self, stage: Stage, seconds: float | None) -> None:
        with self.lock:
            self.done_est += stage.estimate_s
            if seconds is not None:
                self.spent_est += stage.estimate_s
                self.spent_s += seconds


class _Forward:
    """While a stage runs: forward a cancel of the experiment to it, mirror its progress."""

    def __init__(self, progress: _Progress, stage: Stage, interval: float | None = None):
        self.progress, self.stage = progress, stage
        self.interval = _WATCH_INTERVAL_S if interval is None else interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="experiment-watch", daemon=True)

    def __enter__(self) -> _Forward:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        cancel = self.stage.out / "CANCEL"
        last = -1.0
        while not self.stop.wait(self.interval):
            try:
                if self.progress.run.cancel_requested() and not cancel.exists():
                    self.stage.out.mkdir(parents=True, exist_ok=True)
                    cancel.touch()  # the stage stops at its next check, keeping its work
                status = _read_json(self.stage.out / "status.json") or {}
                fraction = float(status.get("progress") or 0.0)
                if fraction != last and status.get("state") == "running":
                    last = fraction
                    self.progress.set(self.stage, fraction, stage_progress=fraction)
            except OSError:  # a status being replaced; try again next tick
                continue


# --------------------------------------------------------------------------- run


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


def _check_subset(stage: Stage, expected: dict[str, Any]) -> None:
    """Refuse a stage that recorded another real subset than the seed's (indices, dataset)."""
    from diffmix.data import SubsetMismatchError

    got = stage.recorded_subset()
    if got is None:
        raise SubsetMismatchError(
            f"{stage.name}: {stage.out} records no subset; cannot check that it used the "
            "seed's real images"
        )
    for key in ("indices", "fingerprint", "shots"):
        if got.get(key) != expected.get(key):
            raise SubsetMismatchError(
                f"{stage.name} used another real subset than the other arms of seed "
                f"{stage.seed} ({key}: {str(got.get(key))[:80]} vs {str(expected.get(key))[:80]}"
                f"); remove {stage.out} or choose a new --out"
            )


def _check_recorded_config(stage: Stage) -> None:
    """Refuse to reuse a finished stage whose recorded config differs from this one."""
    from diffmix.classify.config import RUN_ONLY_FIELDS
    from diffmix.generate import RERUN_FREE_FIELDS as GEN_FREE

    old = stage.recorded_config()
    new = json.loads(stage.config.model_dump_json())
    if old is None:
        return
    free = set(RUN_ONLY_FIELDS) if stage.kind == "train" else set()
    if stage.kind == "generate":
        free = set(GEN_FREE)
    diff = sorted(k for k in new if k not in free and old.get(k) != new[k])
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff[:4])
        raise ValueError(
            f"{stage.out} holds a finished {stage.kind} made with other settings ({shown}); "
            "use the same settings, remove it, or choose a new --out"
        )


def _check_rerun(out: Path, record: dict[str, Any]) -> None:
    """Refuse a folder holding another experiment, or this one with other settings."""
    old = _read_json(out / EXPERIMENT_FILE)
    if old is None:
        if (out / EXPERIMENT_FILE).exists():
            raise ValueError(f"{out / EXPERIMENT_FILE} is not valid JSON; choose a new --out")
        other = [p.name for p in out.iterdir() if p.name not in _RUN_FILES
                 and not p.name.startswith(".")] if out.is_dir() else []  # fmt: skip
        if other:
            raise ValueError(
                f"{str(out)!r} is not empty and holds no experiment (found {sorted(other)[:3]}); "
                "choose an empty or new --out"
            )
        return
    if old.get("format") != FORMAT:
        raise ValueError(f"{out / EXPERIMENT_FILE} is not an experiment record; choose a new --out")
    before, now = old.get("config", {}), record["config"]
    diff = sorted(
        k
        for k in set(before) | set(now)
        if k not in RERUN_FREE_FIELDS and before.get(k) != now.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"{str(out)!r} holds an experiment with other settings ({shown}); rerun with the "
            "same settings to continue it (arms and seeds may change), or choose a new --out"
        )


def run_experiment(
    config: ExperimentConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    callback: Callable[[Stage, str], None] | None = None,
    on_plan: Callable[[list[Stage]], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment of ``config`` in ``out``; returns the results.

    ``resume`` only changes the log: a plain rerun also skips finished stages and resumes
    unfinished ones. ``on_plan(stages)`` is called once the folder is checked, before any work
    (e.g. to show :func:`format_estimate`); ``callback(stage, what)`` with ``what`` in
    ``start``, ``skip``, ``done`` (in-process progress).

    Returns:
        ``{"format", "kind", "dataset", "shots", "seeds", "train_repeats", "arms": {arm:
        {"mean", "std", "n", "runs": [{"seed", "test_accuracy", "mean_class_accuracy",
        "synthetic_images", "run", "repeats", "runs_dirs"}]}}, "subsets": {seed: {"indices",
        "fingerprint", "shots", "checked"}}, "complete", "seconds", "out"}`` (accuracies in
        [0, 1], a seed's the mean of its ``repeats``; also ``results.json``).

    Raises:
        ValueError: bad settings, a folder holding other work, a stage that used another subset.
        Cancelled: a cancel was requested (rerun to continue).
    """
    import torch

    # 1. Check the folder and the settings; draw each seed's subset once.
    t_start = time.time()
    cfg = config
    out = Path(out).expanduser().resolve()
    stages, expected = plan_experiment(cfg, out)
    record = {"format": FORMAT, "config": json.loads(cfg.model_dump_json()),
              "stages": [s.to_dict() for s in stages]}  # fmt: skip
    _check_rerun(out, record)
    if on_plan is not None:
        on_plan(stages)

    # 2. The run directory.
    run = RunDir(out)
    run.clear_stale_cancel()
    atomic_write(out / EXPERIMENT_FILE, json.dumps(record, indent=2) + "\n")
    run.write_config(record["config"])
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    progress = _Progress(run, stages)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in cfg.arms}
    # The one run lifecycle (diffmix.runs): a cancel, Ctrl-C, SIGTERM or an error leaves an
    # honest final status and event; the log goes to log.txt while inside.
    try:
        with run.lifecycle("experiment", progress=0.0, stages=len(stages), message="starting"):
            left = [s for s in stages if not s.finished()]
            if resume and len(left) == len(stages):
                logger.info("nothing to resume in %s: starting the experiment", out)
            logger.info("%s", format_estimate(stages, cfg.budget_minutes))
            run.event("plan", stages=[s.to_dict() for s in stages], left=len(left),
                      estimate_s=round(sum(s.estimate_s for s in left), 1))  # fmt: skip

            # 3. Stage by stage: skip the finished, run (or resume) the others.
            for i, stage in enumerate(stages):
                info = {"stage": stage.name, "stage_kind": stage.kind, "arm": stage.arm,
                        "seed": stage.seed, "stage_index": i + 1, "stages": len(stages)}  # fmt: skip
                if stage.finished():
                    _check_recorded_config(stage)
                    seconds = None
                    run.event("stage_skip", **info, reason="finished")
                    logger.info("[%d/%d] %s: finished earlier, skipped", i + 1, len(stages),
                                stage.name)  # fmt: skip
                    what = "skip"
                else:
                    run.check_cancel()
                    logger.info("[%d/%d] %s -> %s", i + 1, len(stages), stage.name, stage.out)
                    run.event("stage_start", **info, out=str(stage.out))
                    progress.set(stage, 0.0, message=f"running {stage.name}", stage_progress=0.0,
                                 **info)  # fmt: skip
                    if callback is not None:
                        callback(stage, "start")
                    t0 = time.time()
                    _run_stage(stage, progress)
                    seconds = time.time() - t0
                    what = "done"
                _check_subset(stage, expected[stage.seed])
                expected[stage.seed]["checked"].append(str(stage.out.relative_to(out)))
                extra: dict[str, Any] = {}
                if stage.kind == "train":
                    metrics = _read_json(stage.out / "metrics.json")
                    runs[stage.arm].append(_run_record(stage, metrics))
                    extra["test_accuracy"] = metrics["test_accuracy"]
                progress.finish(stage, seconds)
                if what == "done":
                    run.event("stage_done", **info, seconds=round(seconds, 2), **extra)
                    logger.info("[%d/%d] %s: done in %.0f s%s", i + 1, len(stages), stage.name,
                                seconds, f", test accuracy {extra['test_accuracy']:.4f}"
                                if extra else "")  # fmt: skip
                progress.set(
                    None, message=f"{stage.name} {'done' if what == 'done' else 'skipped'}"
                )
                if stage.kind == "train":
                    _write_results(out, cfg, runs, expected, complete=False, t_start=t_start)
                if callback is not None:
                    callback(stage, what)

            # 4. The table.
            results = _write_results(out, cfg, runs, expected, complete=True, t_start=t_start)
            logger.info("results:\n%s", format_table(results))
            run.event("done", arms={a: {"mean": r["mean"], "std": r["std"]}
                                    for a, r in results["arms"].items()},
                      seconds=results["seconds"])  # fmt: skip
            run.set_status("done", progress=1.0, eta_s=0.0, message="finished", stage=None,
                           stage_kind=None, arm=None, seed=None, stage_progress=None)  # fmt: skip
            return results
    finally:
        torch.set_num_threads(threads)


def _run_stage(stage: Stage, progress: _Progress) -> None:
    """Run or resume one stage, forwarding a cancel of the experiment to it."""
    (stage.out / "CANCEL").unlink(missing_ok=True)  # left by an earlier cancelled experiment
    with _Forward(progress, stage):
        if stage.kind == "personalize":
            from diffmix.personalize import personalize

            personalize(stage.config, stage.out, resume=True)
        elif stage.kind == "generate":
            from diffmix.generate import generate

            generate(stage.config, stage.out, resume=True)
        else:
            from diffmix.classify import train

            train(stage.config, stage.out, resume=True)


def _write_results(
    out: Path,
    cfg: ExperimentConfig,
    runs: dict[str, list[dict[str, Any]]],
    subsets: dict[int, dict[str, Any]],
    *,
    complete: bool,
    t_start: float,
) -> dict[str, Any]:
    """Write results.json and results.md (atomically); returns the results dict."""
    results = {
        "format": FORMAT,
        "kind": cfg.kind,
        "dataset": cfg.dataset,
        "shots": cfg.shots,
        "seeds": list(cfg.seeds),
        "train_repeats": cfg.train_repeats,
        "arms": summarize_arms(runs),
        "subsets": {str(k): v for k, v in subsets.items()},
        "complete": complete,
        "seconds": round(time.time() - t_start, 1),
        "out": str(out),
    }
    for name, text in ((RESULTS_FILE, json.dumps(results, indent=1) + "\n"),
                       (TABLE_FILE, format_table(results))):  # fmt: skip
        atomic_write(out / name, text)
    return results
