"""Batch generation: a plan of translations -> a synthetic dataset folder on disk.

Diff-Mix's data-making stage (Wang et al., CVPR 2024, arXiv 2403.19600), in four modules:

- :mod:`~diffmix.generate.config`: :class:`GenerateConfig` (unknown keys rejected, every field
  documented), :func:`command_for` (the equivalent ``diffmix generate`` line), :func:`load_config`.
- :mod:`~diffmix.generate.plan`: the plan as pure data (:func:`plan_tasks`, :func:`make_plan`):
  ``M × |train subset|`` tasks with their target class, strength, seed and plan batch, written
  to ``plan.jsonl`` before any image is made; target rules ``uniform`` / ``confusion`` /
  ``tail`` (:func:`target_weights`), task seeds (:func:`task_seed`), batches
  (:func:`assign_batches`), the faithfulness filter's mask (:func:`bottom_fraction_mask`).
- :mod:`~diffmix.generate.run`: :func:`generate` executes the plan in named steps (prepare,
  start, work, judge, per batch translate + write, finish); one
  :func:`diffmix.translate.translate` call (one shared denoising loop) per plan batch.
  ``grouping="strength"`` sorts each window of ``batch_size × |strengths|`` tasks by strength so
  every UNet call of a batch's loop runs on the whole batch (``benchmarks/generate.py`` measures
  both groupings). :mod:`~diffmix.generate.dist`: the processes of a multi-GPU run;
  :mod:`~diffmix.generate.record`: what ``config.json`` holds and when a rerun may continue.
- :mod:`~diffmix.generate.regen`: :func:`regenerate` makes any row again bit-exactly (same
  machine type, torch version, device and dtype) by re-running the row's whole plan batch, since
  batching changes pixels by float round-off. Because a batch is also the unit of work of a
  resumed run, a resumed folder is bit-identical to an uninterrupted one.

The output folder -- images, ``metadata.jsonl`` (one row per image: source, target, strength,
seed, prompt, soft label and its ``label_rule``, scores, ``kept``, fingerprints), ``config.json``,
``plan.jsonl``, the dataset card -- is the contract with training and the Inspect page; its
format, writer and reader are :mod:`diffmix.synthetic`. A run killed at any moment (even
``kill -9``) loses at most the batch in flight; a rerun continues it.

**Filter**: ``filter_bottom=f`` marks the ``round(f·n)`` least faithful images ``kept: false``
at the end of the run (images stay on disk; :func:`diffmix.classify.read_synthetic` skips them);
rerunning with another ``f`` re-marks without regenerating.

**Scale out**: under ``accelerate launch --multi_gpu --num_processes N -m diffmix generate ...``
(or ``torchrun --nproc_per_node N -m diffmix generate ...``, also on CPUs: gloo; note that
``accelerate launch --cpu`` starts a single process), plan batch ``b`` goes to process
``b mod N`` (whole batches, so the pixels do not depend on N); each writes
``metadata.<rank>.jsonl``; the main process merges them after ``wait_for_everyone``. A cancel
(``RunDir.request_cancel()``, or the UI's button) stops every process after the same round of
batches; rerun to continue.

Other strategies: ``*-aug`` rows have target = source; ``*-gen`` rows have no source
(``source_id`` null, ``source_class`` = target, strength 1); ``mixup``/``cutmix`` rows name a
``partner`` image of the target class, their ``strength`` is the requested pixel share and
their ``soft_label`` the exact one (CutMix: the box area). ``limit`` makes only the first N
tasks: a quick look, best into its own ``--out`` (the plan, hence the folder, differs).

Public API (importable from ``diffmix.generate``): :class:`GenerateConfig`,
:class:`PlannedTask`, :func:`generate`, :func:`make_plan`, :func:`plan_tasks`,
:func:`target_weights`, :func:`task_seed`, :func:`assign_batches`, :func:`bottom_fraction_mask`,
:func:`read_confusion`, :func:`read_plan`, :func:`read_rows`, :func:`regenerate`,
:func:`command_for`, :func:`load_config`, :func:`dataset_card`, :func:`model_fingerprint`,
:func:`adapter_fingerprint`, and the folder's constants (``METADATA_FILE``, ``ROW_FIELDS``, ...).
"""

from diffmix.adapter import adapter_fingerprint
from diffmix.generate.config import RERUN_FREE_FIELDS, GenerateConfig, command_for, load_config
from diffmix.generate.dist import _Dist
from diffmix.generate.plan import (
    PlannedTask,
    assign_batches,
    bottom_fraction_mask,
    make_plan,
    plan_tasks,
    read_confusion,
    read_plan,
    target_weights,
    task_seed,
)
from diffmix.generate.regen import regenerate
from diffmix.generate.run import generate
from diffmix.synthetic import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT,
    GRID_FILE,
    METADATA_FILE,
    PLAN_FILE,
    ROW_FIELDS,
    dataset_card,
    model_fingerprint,
    read_rows,
)
from diffmix.synthetic import save_png as _save_png  # benchmarks/generate.py's import

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "GRID_FILE",
    "METADATA_FILE",
    "PLAN_FILE",
    "RERUN_FREE_FIELDS",
    "ROW_FIELDS",
    "GenerateConfig",
    "PlannedTask",
    "_Dist",
    "_save_png",
    "adapter_fingerprint",
    "assign_batches",
    "bottom_fraction_mask",
    "command_for",
    "dataset_card",
    "generate",
    "load_config",
    "make_plan",
    "model_fingerprint",
    "plan_tasks",
    "read_confusion",
    "read_plan",
    "read_rows",
    "regenerate",
    "target_weights",
    "task_seed",
]
