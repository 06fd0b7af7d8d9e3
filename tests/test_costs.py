"""The one cost model (diffmix.costs): arithmetic, calibration store, every estimate uses it,
and an estimate measured on this machine agrees with the run it predicts."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from diffmix import costs

FAKE = {
    "personalize_image": 0.25,  # 2 s a step at batch 8
    "personalize_overhead": 10.0,
    "generate_image_step": 0.01,
    "generate_image": 0.1,
    "generate_overhead": 5.0,
    "train_image": 0.02,
    "eval_image": 0.005,
    "train_epoch": 0.5,
    "train_overhead": 3.0,
}


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty calibration store of this test's own (nothing measured yet)."""
    path = tmp_path / "costs" / "calibration.json"
    monkeypatch.setattr(costs, "_store_path", lambda: path)
    return path


def test_arithmetic_on_fake_rates() -> None:
    # 100 steps x 8 images x 0.25 s + 2 grids (at 50, 100) x 300 image-steps x 0.01 s + 10 s
    assert costs.personalize_seconds(FAKE, steps=100, batch=8, sample_every=50) == pytest.approx(
        200 + 6 + 10
    )
    # resumed at step 60: 40 steps left, one grid (at 100) left
    assert costs.personalize_seconds(
        FAKE, steps=100, batch=8, sample_every=50, start=60
    ) == pytest.approx(80 + 3 + 10)
    # img2img runs int(25 * 0.7) = 17 steps: 40 images x (17 x 0.01 + 0.1) + 5
    assert costs.generate_seconds(
        FAKE, images=40, num_inference_steps=25, strengths=[0.7]
    ) == pytest.approx(40 * (0.17 + 0.1) + 5)
    assert costs.steps_run(25, 0.01) == 1 and costs.steps_run(25, 1.0) == 25
    # 3 epochs x (60 x 0.02 + 0.5) + evaluations after epochs 2 and 3 (every 2, and the last)
    assert costs.train_seconds(
        FAKE, epochs=3, train_images=60, test_images=100, eval_every=2
    ) == pytest.approx(3 * 1.7 + 2 * 0.5 + 3)


def test_hardware_sized_defaults_follow_the_measured_speed() -> None:
    # ~15 min at 3 s a step: 300 steps; a fast machine keeps the full default; a very slow
    # one still trains the minimum
    assert costs.sized_steps(1500, 3.0) == 300
    assert costs.sized_steps(1500, 0.01) == 1500
    assert costs.sized_steps(1500, 100.0) == costs.CPU_STEPS_RANGE[0]
    assert costs.sized_sample_every(300) == 100  # about 4 grids a run, on a multiple of 50
    assert costs.sized_sample_every(100) == 50


def test_an_uncalibrated_estimate_says_it_is_a_rough_guess(store) -> None:
    rates = costs.train_rates("smallcnn", device="cpu", resolution=64, batch=32)
    assert not rates.measured and "rough guess" in rates.basis
    assert "rough guess" in costs.describe(10, rates)
    key = costs.calibration_key("train", "smallcnn", device="cpu", dtype="fp32", resolution=64,
                                batch=32)  # fmt: skip
    costs.save_calibration(key, {k: FAKE[k] for k in ("train_image", "eval_image", "train_epoch",
                                                       "train_overhead")})  # fmt: skip
    measured = costs.train_rates("smallcnn", device="cpu", resolution=64, batch=32)
    assert measured.measured and measured["train_image"] == FAKE["train_image"]
    assert "measured on this machine" in costs.describe(10, measured)
    # another resolution / batch / machine is another setup: not measured
    assert not costs.train_rates("smallcnn", device="cpu", resolution=32, batch=32).measured
    assert not costs.train_rates("smallcnn", device="cpu", resolution=64, batch=16).measured
    assert json.loads(store.read_text())[key]["measured_at"]


def test_generate_page_and_experiment_give_the_same_estimate(store) -> None:
    """The Generate page's estimate and the experiment's dry run were ~3x apart (issue 16)."""
    from diffmix import experiment as ex
    from diffmix.generate import GenerateConfig
    from pages import generate as gen_page

    cfg = GenerateConfig(dataset="demo", shots=5, strategy="real-mix", multiplier=2,
                         strengths=[0.7], score=False).resolved()  # fmt: skip
    images = 2 * 5 * 12
    selection = {"num_images": 60}
    page = gen_page.estimate(cfg, selection)
    stage = ex.Stage("generate", 0, "real-mix", Path("unused"), cfg)
    dry_run = ex.estimate_seconds(stage, num_classes=12)
    core = costs.generate_estimate(cfg, images=images).seconds
    assert page["images"] == images
    assert page["seconds"] == pytest.approx(core) and dry_run == pytest.approx(core)
    assert "rough guess" in page["basis"] and not stage.estimate_measured


def test_cli_personalize_sizes_its_default_steps_to_the_machine(store, caplog) -> None:
    from diffmix.cli.estimate import sized_personalize_fields

    dev = costs.device_kind(None)
    key = costs.calibration_key("personalize", "nano", device=dev, dtype="float32",
                                resolution=64, batch=8)  # fmt: skip
    costs.save_calibration(key, {"personalize_image": 3.0 / 8, "generate_image_step": 0.05,
                                 "personalize_overhead": 10.0})  # fmt: skip
    args = argparse.Namespace(out=str(store.parent / "run"), resume=False)
    with caplog.at_level(logging.INFO, logger="diffmix.cli"):
        fields = sized_personalize_fields({"model": "nano"}, args)
    expected = 300 if dev == "cpu" else 1500  # 15 min at 3 s a step; a GPU: the full default
    assert fields["steps"] == expected
    assert any("--steps not given" in r.getMessage() for r in caplog.records)
    # an explicit --steps is kept
    assert sized_personalize_fields({"steps": 42}, args)["steps"] == 42


def test_measured_estimate_agrees_with_the_run(store, tmp_path) -> None:
    """Calibrate, estimate, run: the estimate is measured on this machine, and the finished run
    records its own speed for the next estimate of the same setup."""
    import torch

    from diffmix.classify import TrainConfig, train

    # the calibration key names the process's torch threads: run with the same count
    cfg = TrainConfig(dataset="demo", shots=5, epochs=3, arch="smallcnn", resolution=32,
                      batch_size=16, num_threads=torch.get_num_threads(),
                      tensorboard=False)  # fmt: skip
    est = costs.estimate_train_config(cfg, calibrate=True)
    assert est.rates.measured
    out = tmp_path / "run"
    train(cfg, out)
    status = json.loads((out / "status.json").read_text())
    actual = status["finished"] - status["started"]
    # how close the estimate came is reported, not asserted (speed belongs to benchmarks/, not
    # to timed tests): a loaded machine can slow the run and not the calibration
    logging.getLogger(__name__).info(
        "estimate %.1f s, run %.1f s, ratio %.2f", est.seconds, actual, actual / est.seconds
    )
    # the run recorded its own speed for the next estimate of the same setup
    again = costs.estimate_train_config(cfg)
    assert again.rates.measured and again.rates["train_image"] != est.rates["train_image"]
