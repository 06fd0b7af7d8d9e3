"""Regenerating one row of a generation folder bit-exactly (its whole plan batch again)."""

from __future__ import annotations

import os
from typing import Any

from diffmix.adapter import adapter_fingerprint
from diffmix.generate.config import load_config
from diffmix.generate.plan import read_plan
from diffmix.generate.run import _translate_batch
from diffmix.synthetic import model_fingerprint


def regenerate(out: str | os.PathLike, row: dict[str, Any] | int):
    """Make the image of a metadata ``row`` (or task id) again, bit-exactly.

    Re-runs the row's whole plan batch (batch composition changes pixels by float round-off)
    with the folder's config, then returns the row's image (``PIL.Image``, the saved PNG's
    pixels). Needs the same dataset, model and adapter (checked by fingerprint) and, for
    bit-exactness, the same device type, dtype and torch version as the original run.
    """
    from diffmix.data import load_dataset
    from diffmix.translate import TranslateConfig

    # 1. Config, plan and the row's batch
    cfg, record = load_config(out)
    plan = read_plan(out)
    task = row if isinstance(row, int) else int(row["task"])
    by_id = {t.task: t for t in plan}
    if task not in by_id:
        raise ValueError(f"task {task} is not in the plan of {str(out)!r} ({len(plan)} tasks)")
    batch = [t for t in plan if t.batch == by_id[task].batch]

    # 2. Same inputs as the original run
    ds = load_dataset(cfg.dataset, split="train")
    if ds.fingerprint != record["dataset_fingerprint"]:
        raise ValueError(
            f"dataset {cfg.dataset!r} changed since {str(out)!r} was made (fingerprint "
            f"{record['dataset_fingerprint']} -> {ds.fingerprint}); cannot regenerate exactly"
        )
    for what, now, then in (
        ("model", model_fingerprint(cfg.model), record["model_fingerprint"]),
        ("adapter", adapter_fingerprint(cfg.adapter), record["adapter_fingerprint"]),
    ):
        if now != then:
            raise ValueError(
                f"the {what} changed since {str(out)!r} was made (fingerprint {then} -> {now}); "
                "cannot regenerate exactly"
            )

    # 3. The batch, one shared loop, as in generate
    tcfg = TranslateConfig(
        strategy=cfg.strategy, model=cfg.model, adapter=cfg.adapter,
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        prompt_template=cfg.prompt_template, gamma=cfg.gamma, batch_size=cfg.batch_size,
        device=cfg.device, dtype=cfg.dtype,
    )  # fmt: skip
    results, _ = _translate_batch(batch, ds, tcfg, record.get("superclass_resolved"))
    return results[[t.task for t in batch].index(task)].image
