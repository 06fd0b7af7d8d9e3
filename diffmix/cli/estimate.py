"""The time estimate a long stage logs before it starts, and personalize's hardware-sized steps."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("diffmix.cli")


def sized_personalize_fields(fields: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fill ``steps`` when neither a flag nor the YAML set it: a resumed run keeps its recorded
    steps; a new one gets the hardware-sized default (:func:`diffmix.costs.personalize_defaults`,
    measured once on this machine), and the log says where the number comes from."""
    if fields.get("steps") is not None:
        return fields
    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        try:
            steps = json.loads(saved.read_text()).get("steps")
        except (OSError, ValueError):
            steps = None
        if steps:
            return {**fields, "steps": int(steps)}
    from diffmix import costs

    found = costs.personalize_defaults(
        str(fields.get("model") or "nano"), batch=int(fields.get("batch_size") or 8),
        resolution=fields.get("resolution"), calibrate=True,
    )  # fmt: skip
    logger.info("personalize: --steps not given: %s", found["source"])
    return {**fields, "steps": found["steps"]}


def log_estimate(stage: str, cfg: Any) -> None:
    """Log the stage's estimated time before it starts (:mod:`diffmix.costs`; this machine's
    speed is measured once, the first time, in a few seconds). An estimate that cannot be made
    (a dataset that does not load yet) is skipped: the stage then says what is wrong."""
    from diffmix import costs

    try:
        if stage == "personalize":
            est = costs.personalize_estimate(cfg, calibrate=True)
        elif stage == "train":
            est = costs.estimate_train_config(cfg, calibrate=True)
        else:
            est = costs.estimate_generate_config(cfg, calibrate=True)
    except (ValueError, OSError, RuntimeError) as err:
        logger.debug("no time estimate for %s: %s", stage, err)
        return
    logger.info("%s: estimated time %s", stage, est.text())
