"""The generation folder's record: what ``config.json`` holds and when a rerun may continue.

:func:`config_record` is the resolved config plus what readers need (class names, subset,
fingerprints, the judge); :func:`check_rerun` refuses a folder that holds another generation
(other settings or plan); :func:`check_filter_judge` refuses a filter whose scores leak labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmix.generate.config import RERUN_FREE_FIELDS, GenerateConfig, command_for
from diffmix.generate.plan import PlannedTask, plan_text
from diffmix.synthetic import CONFIG_FILE, FORMAT, PLAN_FILE, RUN_FILES

logger = logging.getLogger("diffmix.generate")


def check_rerun(out: Path, record: dict, plan: Sequence[PlannedTask], resume: bool) -> None:
    """Refuse a folder that holds a generation with another config or plan."""
    old_path = out / CONFIG_FILE
    if not old_path.is_file():
        other = [p.name for p in out.iterdir()
                 if p.name not in RUN_FILES and not p.name.startswith(".")]  # fmt: skip
        if other:
            raise ValueError(
                f"{str(out)!r} is not empty and holds no generation (found {sorted(other)[:3]}); "
                "choose an empty or new --out"
            )
        if resume:
            logger.info("nothing to resume in %s: starting a new generation", out)
        return
    try:
        old = json.loads(old_path.read_text())
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise ValueError(
            f"{str(out)!r} holds another job's config.json (not a generation); choose an empty "
            "or new --out"
        )
    keys = [k for k in GenerateConfig.model_fields if k not in RERUN_FREE_FIELDS]
    keys += ["model_fingerprint", "adapter_fingerprint", "dataset_fingerprint"]
    diff = [k for k in keys if old.get(k) != record.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {record.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"{str(out)!r} holds a generation made with other settings ({shown}); rerun with "
            "the same settings to continue it, or choose a new --out"
        )
    plan_path = out / PLAN_FILE
    if plan_path.is_file() and plan_path.read_text() != plan_text(plan):
        raise ValueError(
            f"the plan saved in {str(out)!r} differs from the one this config makes now (did "
            "the dataset change?); choose a new --out"
        )


def judge_indices(cfg, subset) -> list[int] | None:
    """The train indices the judge may see: the run's subset (few-shot / long-tail), else all."""
    return None if cfg.shots is None and cfg.imbalance is None else list(subset.indices)


def judge_record(cfg, ds, subset) -> dict[str, Any] | None:
    """What judged the rows (``config.json``'s ``judge``): kind, images seen, diversity metric."""
    if not cfg.score:
        return None
    from diffmix import score

    kind = score.default_judge(ds.spec)
    seen = judge_indices(cfg, subset)
    return {
        "judge": kind,
        "fit_on": "train" if seen is None else "subset",
        "train_images": len(ds) if seen is None else len(seen),
        "size": score.LITE0_JUDGE_SIZE if kind == "lite0" else None,
        "diversity_metric": (
            "lpips" if score.lpips_available()
            else f"{'lite0-imagenet' if kind == 'lite0' else kind}-feature-cosine"
        ),
    }  # fmt: skip


def check_filter_judge(cfg, rows: Sequence[dict[str, Any]]) -> None:
    """Refuse to filter a few-shot / long-tail run by scores of a judge that saw other labels.

    Rows without a ``judge`` were scored by an earlier version whose judge was fitted on the
    whole train split -- labels outside the run's K shots; filtering by them leaks those
    labels into the synthetic set.
    """
    if not cfg.filter_bottom or (cfg.shots is None and cfg.imbalance is None):
        return
    leaky = [r for r in rows if r.get("faithfulness") is not None and not r.get("judge")]
    if leaky:
        raise ValueError(
            f"filter_bottom={cfg.filter_bottom}: {len(leaky)} image(s) were scored by a judge "
            "fitted on the whole train split (labels outside this run's subset); regenerate "
            "into a new --out to score them with a judge fitted on the subset, or use "
            "filter_bottom 0"
        )


def config_record(cfg, ds, subset, plan, fp_model, fp_adapter, out) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved config + what a reader needs."""
    return {
        "format": FORMAT,
        **json.loads(cfg.model_dump_json()),
        "strength_sampling": cfg.strength_sampling,
        "class_names": list(ds.class_names),
        "superclass_resolved": cfg.superclass or ds.superclass,
        "dataset_fingerprint": ds.fingerprint,
        "subset": subset.to_dict(),
        "model_fingerprint": fp_model,
        "adapter_fingerprint": fp_adapter,
        "planned": len(plan),
        "batches": plan[-1].batch + 1 if plan else 0,
        "judge": judge_record(cfg, ds, subset),
        "command": command_for(cfg, out),
    }
