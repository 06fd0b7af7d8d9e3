"""How long an experiment's stages take: the estimate shown before any work starts, from the
one cost model (:mod:`diffmix.costs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from diffmix import costs

if TYPE_CHECKING:
    from diffmix.experiment.plan import Stage

# -- the time estimate: diffmix.costs (one cost model, calibrated on this machine) ------------
#: Seconds to fit the scoring judge once per dataset (see :data:`diffmix.costs.REFERENCE_FIT_S`).
REFERENCE_FIT_S = costs.REFERENCE_FIT_S
#: Images in the test split when the dataset is not loaded yet (the demo's).
_DEFAULT_TEST_IMAGES = 360


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
