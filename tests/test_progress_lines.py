"""Plain CLI progress lines off a terminal, one loss figure, and train status phases."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffmix.progress import LOSS_NAME, LossEMA, ProgressReporter

ROOT = Path(__file__).resolve().parents[1]


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_at_most_every_10_s_or_10_percent(caplog) -> None:
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="diffmix.progress"):
        bar = ProgressReporter(1000, desc="personalize", stream=io.StringIO(), clock=clock)
        for _ in range(1000):
            clock.t += 0.5  # 2 steps/s: 10 s = 20 steps, far under 10 % (100 steps)
            bar.update(1, loss=0.25)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    steps = [int(re.search(r"step (\d+)/1000", line).group(1)) for line in lines]
    assert steps[0] == 1 and steps[-1] == 1000
    assert all(b - a <= 20 for a, b in zip(steps, steps[1:], strict=False))  # every ~10 s
    assert 45 <= len(lines) <= 55  # ... and not more often
    assert re.fullmatch(
        r"personalize: step 21/1000 \(2 %\) · 2 step/s · ETA 8 min · loss \(EMA\) 0\.2500",
        lines[1],
    )


def test_lines_every_10_percent_when_fast(caplog) -> None:
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="diffmix.progress"):
        bar = ProgressReporter(200, desc="train", stream=io.StringIO(), clock=clock)
        for _ in range(200):
            clock.t += 0.01
            bar.update(1)
        bar.close()
    steps = [int(re.search(r"step (\d+)/200", r.getMessage()).group(1)) for r in caplog.records]
    assert steps == [1, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200]


def test_loss_ema_is_bias_corrected_and_named() -> None:
    ema = LossEMA(0.1)
    assert ema.value is None
    assert ema.update(2.0) == pytest.approx(2.0)  # not pulled toward 0 at the start
    for _ in range(200):
        ema.update(1.0)
    assert ema.value == pytest.approx(1.0, abs=1e-6)
    assert "EMA" in LOSS_NAME


def test_cli_progress_lines_when_stderr_is_a_pipe(tmp_path) -> None:
    """A job's log / a redirected run: tqdm drew nothing (or a garble of \\r); now plain lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diffmix", "train", "--out", str(tmp_path / "run"),
           "--arch", "smallcnn", "--resolution", "32", "--epochs", "2", "--shots", "5",
           "--batch-size", "16", "--threads", "1", "--", "demo"]  # fmt: skip
    # stderr is a pipe (not a terminal), as in a job's log or `diffmix train ... 2> log`
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "diffmix.progress" in line]
    assert lines, proc.stderr[-2000:]
    pat = r".*train: step \d+/8 \(\d+ %\) · [\d.e+-]+ step/s · ETA [^·]+ · loss \(EMA\) \d+\.\d{4}"
    assert all(re.fullmatch(pat, line) for line in lines), lines
    assert "step 8/8 (100 %)" in lines[-1]
    assert "\r" not in proc.stderr
    assert re.search(r"train: estimated time about \d+ (s|min)", proc.stderr)  # before it starts


def test_train_status_names_each_phase(tmp_path, monkeypatch) -> None:
    from diffmix.classify import TrainConfig, train
    from diffmix.runs import RunDir

    seen: list[str] = []
    original = RunDir.set_status

    def spy(self, *args, **kw):
        if kw.get("phase"):
            seen.append(kw["phase"])
        return original(self, *args, **kw)

    monkeypatch.setattr(RunDir, "set_status", spy)
    cfg = TrainConfig(dataset="demo", shots=2, epochs=2, arch="smallcnn", resolution=32,
                      batch_size=16, num_threads=1, tensorboard=False)  # fmt: skip
    train(cfg, tmp_path / "run")
    phases = list(dict.fromkeys(seen))  # first appearance order
    assert phases == [
        "loading data", "training epoch 1/2", "evaluating (epoch 1/2)",
        "saving a checkpoint (epoch 1/2)", "training epoch 2/2", "evaluating (epoch 2/2)",
        "saving a checkpoint (epoch 2/2)", "writing the report",
    ]  # fmt: skip


def test_personalize_shows_one_loss_figure(tmp_path, tiny_sd_dir) -> None:
    """Status, progress events, the adapter table's final loss and the CLI's: the same EMA."""
    from diffmix.personalize import PersonalizeConfig, personalize
    from pages.personalize import adapter_rows

    cfg = PersonalizeConfig(dataset="demo", shots=2, seed=0, model=str(tiny_sd_dir), steps=20,
                            batch_size=2, rank=4, checkpoint_every=100)  # fmt: skip
    out = personalize(cfg, tmp_path / "pz")
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    last = [e for e in events if e.get("kind") == "progress"][-1]
    meta = json.loads((out / "adapter.json").read_text())
    status = json.loads((out / "status.json").read_text())
    assert last["step"] == 20
    assert meta["final_loss"] == pytest.approx(last["loss"])
    assert status["loss"] == pytest.approx(last["loss"])
    run = {"name": "pz", "path": str(out), "state": "done", "created": 0, "status": status}
    row = adapter_rows([run]).iloc[0]
    assert row["final loss (EMA)"] == f"{last['loss']:.4f}"
