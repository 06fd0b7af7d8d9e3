"""The Personalize page starts at once and sizes its steps with this machine's measured speed.

Issue 16 (first hour): building the page used to measure nano's training speed before the app
answered (60-100 s on a loaded 2-core machine). The measurement now runs in a background thread;
the page opens with the rough sizing and takes the measured one on the next open, unless the
visitor (or a watched run) has set the steps.
"""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pytest

from diffmix.settings import Settings
from pages import personalize


def test_the_page_builds_while_the_speed_is_measured_then_sizes_on_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path))
    monkeypatch.setattr(personalize, "_MEASURING", {})
    started, release = threading.Event(), threading.Event()
    real = personalize._measure

    def held(model: str, batch: int) -> None:  # the measurement, held until the page is built
        started.set()
        assert release.wait(120)
        real(model, batch)

    monkeypatch.setattr(personalize, "_measure", held)
    built = personalize.model_defaults("nano")
    assert not built["measured"] and "rough" in built["source"]
    settings = Settings.from_env({"DIFFMIX_HOME": str(tmp_path), "DIFFMIX_MODEL": "nano"})
    personalize.build(settings)  # returns while the measurement is held
    thread = personalize._MEASURING["nano"]
    assert started.wait(60) and thread.is_alive()
    skip = [gr.skip(), gr.skip()]
    assert personalize.sized_update(built, built["steps"], built["sample_every"], "nano") == skip
    # the estimate answers now, from what is known, and takes no second measurement
    from diffmix import costs
    from pages import dataset, estimates

    def no_second(*a, **kw):
        raise AssertionError("the estimate measured while the background measurement ran")

    sel = dataset.load_selection("demo", subset="few-shot", shots=2, seed=0).selection
    estimate = estimates.estimate_action(
        "personalize", personalize._build_args(settings), settings,
        measuring=lambda: personalize.measuring("nano"),
    )  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(costs, "calibrate_personalize", no_second)
        line = estimate(None, sel, "nano", built["steps"], 10, None, 0, built["sample_every"],
                        8, False, None)  # fmt: skip
    assert "Estimated time" in line and "being measured now" in line, line
    release.set()
    thread.join(300)
    now = personalize.model_defaults("nano")
    assert now["measured"] and "measured" in now["source"]
    steps, every = personalize.sized_update(built, built["steps"], built["sample_every"], "nano")
    assert steps["value"] == now["steps"] and steps["info"] == now["source"]
    assert every["value"] == now["sample_every"]
    # steps the visitor typed (or a watched run's) are kept
    assert personalize.sized_update(built, 77, built["sample_every"], "nano") == skip
    # one measurement per process
    assert personalize.measure_in_background("nano") is None


def test_a_failed_measurement_keeps_the_rough_sizing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path))
    monkeypatch.setattr(personalize, "_MEASURING", {})

    def broken(model: str, batch: int) -> None:
        raise RuntimeError("exit code 1: out of memory")

    monkeypatch.setattr(personalize, "_measure", broken)
    built = personalize.model_defaults("nano")
    personalize.measure_in_background("nano").join(60)
    assert personalize.sized_update(built, built["steps"], built["sample_every"], "nano") == [
        gr.skip(), gr.skip()]  # fmt: skip
    assert not personalize.model_defaults("nano")["measured"]


def test_the_measurement_leaves_models_built_meanwhile_intact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Loading a diffusers model patches torch.nn.Module process-wide while it loads; the
    measurement runs in a child process, so modules built here meanwhile get real weights (a
    background-thread load gave a concurrently built test pipeline meta tensors)."""
    import torch

    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path))
    monkeypatch.setattr(personalize, "_MEASURING", {})
    thread = personalize.measure_in_background("nano")
    built = 0
    while thread.is_alive():
        layer = torch.nn.Linear(64, 64)
        assert layer.weight.device.type == "cpu", "a module built during the measurement"
        built += 1
        thread.join(0.01)
    assert built > 0
    assert personalize.model_defaults("nano")["measured"]  # the child stored the measurement
