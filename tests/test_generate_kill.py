"""A generation killed with SIGKILL mid-run loses at most its batch in flight and resumes cleanly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from killutil import sigkill_when  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix import jobs
from diffmix.generate import GenerateConfig, generate, read_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors") / "colors"
    return write_color_folder(root, seed=1)


def test_sigkill_mid_run_then_resume(colors, tiny_sd_dir, workspace_home, tmp_path):
    out = tmp_path / "killed"
    cfg = GenerateConfig(dataset=str(colors), model=str(tiny_sd_dir), strategy="real-mix",
                         multiplier=12, strengths=[0.5], num_inference_steps=2, batch_size=2,
                         score=False)  # fmt: skip
    argv = [sys.executable, "-m", "diffmix", "generate", str(colors), "--model", str(tiny_sd_dir),
            "--strategy", "real-mix", "--multiplier", "12", "--strength", "0.5", "--steps", "2",
            "--batch-size", "2", "--no-score", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "DIFFMIX_HOME": str(workspace_home), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}  # fmt: skip

    # 1. Start the job, wait until some batches are on disk, kill -9 it
    meta = out / "metadata.jsonl"
    sigkill_when(argv, lambda: meta.is_file() and meta.read_text().count("\n") >= 4,
                 env=env, cwd=tmp_path, timeout_s=45)  # fmt: skip
    before = read_rows(meta)
    planned = 12 * 12
    assert 4 <= len(before) < planned
    # the dead job never wrote a final status: readers show it failed, not running
    st = jobs.job_state(out)
    assert st["state"] == "failed" and "ended without a final status" in st["message"]

    # 2. Resume: only the missing tasks are made
    summary = generate(cfg, out, resume=True)
    assert summary["planned"] == planned and summary["images"] == planned
    assert summary["generated"] == planned - len(before)

    # 3. One row per task, every file opens, no orphans, no temp files
    rows = read_rows(meta)
    tasks = [r["task"] for r in rows]
    assert len(tasks) == len(set(tasks)) == planned and sorted(tasks) == list(range(planned))
    assert len(meta.read_text().splitlines()) == planned  # no torn or extra lines
    for r in rows:
        with Image.open(out / r["file_name"]) as im:
            im.load()
            assert im.size == (24, 24)
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*.png")} == {
        r["file_name"] for r in rows
    }
    assert not list(out.rglob("*.tmp"))
