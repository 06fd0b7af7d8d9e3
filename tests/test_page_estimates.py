"""The time shown before Personalize and Train start (issue 16, item 3) is the estimate of the
very run Start launches: it follows the page's values, says whether it was measured on this
machine, and turns a bad value into a message instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmix import costs
from diffmix.settings import Settings
from pages import estimates, personalize, train

FAKE_TRAIN = {"train_image": 0.02, "eval_image": 0.005, "train_epoch": 0.5, "train_overhead": 3.0}


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty calibration store of this test's own (nothing measured yet)."""
    path = tmp_path / "costs" / "calibration.json"
    monkeypatch.setattr(costs, "_store_path", lambda: path)
    return path


def _train_values(selection: dict, epochs: int) -> tuple:
    # selection, synthetic, p, gamma, arch, epochs, resolution, batch, lr, seed, threads, mix,
    # balanced, loss -- the Train page's start values
    return (selection, [], 0.0, None, "smallcnn", epochs, 32, 16, None, 0, 1, "none", False,
            "ce")  # fmt: skip


def test_train_estimate_follows_the_epochs_and_says_where_it_comes_from(
    store: Path, fewshot: dict, private: Settings
) -> None:
    action = estimates.estimate_action("train", train._build_args(private), private)
    args, _ = train._build_args(private)(None, *_train_values(fewshot, 10))
    cfg = estimates.config_of("train", args)
    assert cfg.epochs == 10 and cfg.arch == "smallcnn" and cfg.resolution == 32
    # uncalibrated: the stated rough rates, and the page says it will be measured
    line = estimates.estimate_line("train", args, calibrate=False)
    assert line.startswith("Estimated time: **") and "rough guess" in line
    assert "measured on this machine the first time" in line
    # measured on this machine: the same setup's rates, named as measured
    key = costs.calibration_key("train", "smallcnn", device=costs.device_kind(None), dtype="fp32",
                                resolution=32, batch=16)  # fmt: skip
    costs.save_calibration(key, FAKE_TRAIN)
    measured = estimates.estimate_line("train", args, calibrate=False)
    assert "measured on this machine" in measured and "first time" not in measured
    # the estimate is of the run Start launches: more epochs, a longer estimate
    ten = costs.estimate_train_config(cfg).seconds
    args20, _ = train._build_args(private)(None, *_train_values(fewshot, 20))
    twenty = costs.estimate_train_config(estimates.config_of("train", args20)).seconds
    assert twenty > 1.5 * ten > 0
    # a bad value: one message, no traceback
    bad = action(None, *_train_values(fewshot, 0))
    assert "dm-error" in bad and "epochs" in bad and "Traceback" not in bad


def test_personalize_estimate_is_of_the_pages_steps(
    store: Path, fewshot: dict, private: Settings
) -> None:
    def args_for(steps: int) -> list[str]:
        return personalize.personalize_args(fewshot, model=private.model, steps=steps, rank=4,
                                            lr=1e-3, seed=0, sample_every=0,
                                            settings=private)  # fmt: skip

    cfg = estimates.config_of("personalize", args_for(40))
    assert cfg.steps == 40 and cfg.model == private.model
    line = estimates.estimate_line("personalize", args_for(40), calibrate=False)
    assert line.startswith("Estimated time: **") and "rough guess" in line
    short = costs.personalize_estimate(cfg).seconds
    long = costs.personalize_estimate(estimates.config_of("personalize", args_for(400))).seconds
    assert long > 5 * short > 0
