"""The time a Personalize or Train run will take, shown next to its Start button.

The page's values become the very ``diffmix`` command line the job will run (the page's own
``build_args``); that command line is read back into the stage's config exactly as the CLI
reads it, and :mod:`diffmix.costs` estimates it. So the estimate is of the run that Start
launches, never of a look-alike.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from diffmix.settings import Settings
from pages import common, jobs_ui

logger = logging.getLogger(__name__)


class _Raising(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def config_of(stage: str, args: Sequence[str]):
    """The stage config (PersonalizeConfig / TrainConfig) of ``diffmix <stage> ARGS``."""
    from diffmix import cli

    ns = cli.build_parser(_Raising).parse_args([stage, "--out", "-", *args])
    if stage == "personalize":
        from diffmix.personalize import PersonalizeConfig

        return PersonalizeConfig(**cli._stage_fields(ns, PersonalizeConfig, stage))
    from diffmix.classify import TrainConfig

    return TrainConfig(**cli._stage_fields(ns, TrainConfig, stage))


#: Largest classifier input side measured from the page on a CPU (a few seconds; larger inputs
#: wait for a run or the CLI to measure them).
CHEAP_TRAIN_RESOLUTION = 128


def cheap_to_measure(stage: str, cfg) -> bool:
    """Whether measuring this machine for ``cfg`` takes only seconds (then the page does it):
    nano-SD personalization; classifiers on a GPU or at <= :data:`CHEAP_TRAIN_RESOLUTION` px."""
    from diffmix import costs

    if stage == "personalize":
        return cfg.model == "nano"
    return costs.device_kind(None) != "cpu" or cfg.resolved().resolution <= CHEAP_TRAIN_RESOLUTION


def estimate_line(stage: str, args: Sequence[str], *, calibrate: bool | None = None) -> str:
    """``Estimated time: about 4 min (measured on this machine ...)`` for the run ``args``
    (``calibrate`` None: measure when :func:`cheap_to_measure`)."""
    from diffmix import costs

    cfg = config_of(stage, args)
    if calibrate is None:
        calibrate = cheap_to_measure(stage, cfg)
    if stage == "personalize":
        est = costs.personalize_estimate(cfg, calibrate=calibrate)
    else:
        est = costs.estimate_train_config(cfg, calibrate=calibrate)
    text = f"Estimated time: **{est.text()}**."
    if not est.rates.measured:
        text += " It is measured on this machine the first time a run (or the CLI) starts."
    return text


def estimate_action(stage: str, build, settings: Settings, measuring=None) -> Any:
    """A listener ``(owner, *start values) -> Markdown``: the estimate of the run Start would
    launch with these values (this machine measured first where that is cheap). While
    ``measuring()`` is true (a background measurement of this speed is under way) the estimate
    uses what is known now and says so, rather than waiting or measuring a second time."""

    def estimate(owner: str | None, *values: Any) -> str:
        try:
            args, _ = build(owner, *values)
            if measuring is not None and measuring():
                return estimate_line(stage, args, calibrate=False) + (
                    " This machine's speed is being measured now: change a setting or reopen "
                    "the page in a minute for the measured estimate."
                )
            return estimate_line(stage, args)
        except (*jobs_ui.USER_ERRORS, ImportError) as err:
            return common.error_box(jobs_ui.readable_error(err), settings)

    return estimate
