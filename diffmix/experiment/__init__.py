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
steps (the 5-shot subset has only 60 images: ~40 passes at batch 8); on the demo the
``smallcnn`` classifier from scratch at 64 px, 50 epochs at batch 16 (demo, 5-shot, seed 0,
real images only: smallcnn 80% test accuracy in 49 s, ResNet-18 34% in 64 s -- from scratch on
60 images the small network generalizes far better); on real photos the backbone rule of
``diffmix train`` (:func:`classifier_backbone`: built-in ImageNet Lite0, head tuning, 224 px).

Modules: :mod:`~diffmix.experiment.config` (:class:`ExperimentConfig`, the arms),
:mod:`~diffmix.experiment.plan` (:class:`Stage`, the per-arm stage configs, the stage list),
:mod:`~diffmix.experiment.estimate` (the time estimate), :mod:`~diffmix.experiment.run`
(running and resuming the stages, results files), :mod:`~diffmix.experiment.table` (mean ± std
over seeds, paired deltas, the Markdown table).

Public API: :data:`ARMS`, :class:`ExperimentConfig`, :func:`make_config`, :class:`Stage`,
:func:`plan_stages`, :func:`plan_experiment`, :func:`estimate_seconds`, :func:`format_estimate`,
:func:`run_experiment`, :func:`mean_std`, :func:`summarize_arms`, :func:`format_table`.
"""

from diffmix.experiment.config import (
    ADAPTER_ARMS,
    ARMS,
    GENERATIVE_ARMS,
    RERUN_FREE_FIELDS,
    TRAIN_SEED_STRIDE,
    ExperimentConfig,
    make_config,
)
from diffmix.experiment.estimate import (
    REFERENCE_FIT_S,
    estimate_seconds,
    format_estimate,
)
from diffmix.experiment.plan import (
    Stage,
    classifier_backbone,
    generate_config,
    personalize_config,
    plan_experiment,
    plan_stages,
    train_config,
)
from diffmix.experiment.run import (
    EXPERIMENT_FILE,
    FORMAT,
    RESULTS_FILE,
    TABLE_FILE,
    run_experiment,
)
from diffmix.experiment.table import (
    format_mean_std,
    format_table,
    mean_std,
    paired_delta,
    per_seed,
    summarize_arms,
)

__all__ = [
    "ADAPTER_ARMS",
    "ARMS",
    "EXPERIMENT_FILE",
    "FORMAT",
    "GENERATIVE_ARMS",
    "REFERENCE_FIT_S",
    "RERUN_FREE_FIELDS",
    "RESULTS_FILE",
    "TABLE_FILE",
    "TRAIN_SEED_STRIDE",
    "ExperimentConfig",
    "Stage",
    "classifier_backbone",
    "estimate_seconds",
    "format_estimate",
    "format_mean_std",
    "format_table",
    "generate_config",
    "make_config",
    "mean_std",
    "paired_delta",
    "per_seed",
    "personalize_config",
    "plan_experiment",
    "plan_stages",
    "run_experiment",
    "summarize_arms",
    "train_config",
]
