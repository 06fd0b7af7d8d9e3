"""Faults leave every run honest: a full disk, a corrupt checkpoint, a process that vanished.

Each long stage (personalize, generate, train) is driven through the CLI entry function with a
fault injected in-process -- a write that raises ``ENOSPC`` part-way, a truncated checkpoint --
and must then: print one ``error:`` line (no traceback), leave status.json ``failed`` with the
reason, keep what was finished, and resume to the same result as an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from PIL import Image
from safetensors.torch import load_file

from diffmix import jobs, runs
from diffmix.cli import main
from diffmix.runs import Cancelled, RunDir, load_newest_checkpoint, save_checkpoint

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full_after(monkeypatch, n_ok: int) -> dict:
    """Make the (n_ok + 1)-th ``torch.save`` of a checkpoint write part of its file, then fail
    with ENOSPC (other saves, e.g. the decoded-image cache, are left alone)."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if "checkpoints" not in str(getattr(f, "name", f)):
            return real(obj, f, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= n_ok:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + bytes(200))  # a torn start of a zip file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    return calls


def _one_error_line(err: str) -> str:
    """The CLI's stderr: an ``error:`` line and no traceback; returns that line."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# --------------------------------------------------------------------------- runs.py


def test_lifecycle_leaves_an_honest_status_for_every_ending(tmp_path):
    cases = [
        (ValueError("shots must be >= 1, got 0"), "failed", "shots must be >= 1, got 0"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/ckpt.pt"), "failed",
         "no space left on device while writing /x/ckpt.pt"),
        (RuntimeError("CUDA out of memory"), "failed", "RuntimeError: CUDA out of memory"),
        (Cancelled("cancelled at step 3"), "cancelled", "cancelled; resume to continue"),
        (KeyboardInterrupt(), "cancelled", "interrupted"),
    ]  # fmt: skip
    for k, (err, state, message) in enumerate(cases):
        run = RunDir(tmp_path / f"r{k}")
        with pytest.raises(type(err)), run.lifecycle("train", total=10):
            assert run.status()["state"] == "running" and run.status()["pid"] == os.getpid()
            raise err
        st = run.status()
        assert st["state"] == state and message in st["message"], (err, st)
        assert "\n" not in st["message"]
        assert run.events(state)[-1]["message"] == st["message"]
    # SIGTERM (e.g. the app's cancel after its grace period) is recorded, then propagates
    before = signal.getsignal(signal.SIGTERM)
    run = RunDir(tmp_path / "term")
    with pytest.raises(runs.Terminated), run.lifecycle("generate"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted: the handler raises at once
    assert run.status()["state"] == "failed" and "SIGTERM" in run.status()["message"]
    assert signal.getsignal(signal.SIGTERM) == before
    # a fresh start clears the reason of the last failure
    with run.lifecycle("generate"):
        assert run.status()["state"] == "running" and run.status()["error"] is None


def test_status_is_written_even_when_the_disk_is_full(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    run.set_status("running", message="training", step=5, total=10)

    def full(path, data, **kw):
        Path(path).write_bytes(data[:7])  # the temp file got a few bytes, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runs, "_write_file", full)
    run.set_status("failed", message="no space left on device")  # rewritten in place
    assert run.status()["state"] == "failed" and run.status()["step"] == 5
    _no_temp_files(tmp_path)
    with pytest.raises(OSError):  # other files are never rewritten in place
        run.write_config({"a": 1})
    _no_temp_files(tmp_path)


def test_a_vanished_process_reads_as_failed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = RunDir(tmp_path / "killed")
    run.set_status("running", pid=dead.pid, message="training", step=3, total=10)
    assert run.status()["state"] == "running"  # the record as written...
    for st in (run.live_status(), jobs.job_state(run.path)):  # ...and as readers show it
        assert st["state"] == "failed" and st["crashed"]
        assert st["message"] == f"process {dead.pid} ended without a final status"
    assert main(["status", str(run.path)]) == 1
    out = capsys.readouterr().out
    assert "state:    failed" in out and f"process {dead.pid} ended without a final status" in out
    assert main(["status", str(run.path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["state"] == "failed"
    # a live process is running; the same pid with another start time is a reused pid: gone
    ticks = runs.process_start_ticks(os.getpid())
    alive = RunDir(tmp_path / "alive")
    alive.set_status("running", pid=os.getpid(), pid_start=ticks)
    assert alive.live_status()["state"] == "running"
    assert main(["status", str(alive.path)]) == 3
    capsys.readouterr()
    if ticks is not None:  # Linux: /proc tells the start time
        reused = RunDir(tmp_path / "reused")
        reused.set_status("running", pid=os.getpid(), pid_start=ticks + 1)
        assert reused.live_status()["state"] == "failed"
        job = jobs.Job("train", str(reused.path), os.getpid(), None, [], 0.0, ticks + 1)
        assert not jobs.is_alive(job)
    # a finished run stays finished whatever happened to its process
    run.set_status("done", message="finished")
    assert jobs.job_state(run.path)["state"] == "done"


def test_checkpoint_writer_and_newest_good_fallback(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2, 3):
        save_checkpoint({"step": step, "w": torch.full((4,), float(step))},
                        folder / f"step-{step:06d}.pt", keep=2)  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002.pt", "step-000003.pt"]
    # a full disk mid-write: the error names the file, no temp file, the older ones intact
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(OSError) as info:
        save_checkpoint({"step": 4}, folder / "step-000004.pt", keep=2)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("step-000004.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002.pt", "step-000003.pt"]
    # the newest is corrupt: fall back to the older one, say so, set the bad one aside
    _truncate(folder / "step-000003.pt")
    with caplog.at_level(logging.WARNING, logger="diffmix.runs"):
        path, state = load_newest_checkpoint(sorted(folder.glob("step-*.pt")))
    assert path.name == "step-000002.pt" and state["step"] == 2
    assert (
        "step-000003.pt does not load" in caplog.text
        and "resuming from step-000002.pt" in caplog.text
    )
    assert (folder / "step-000003.pt.corrupt").is_file()
    # none loads: one clear line
    _truncate(folder / "step-000002.pt")
    with pytest.raises(ValueError, match=r"none of the 1 checkpoint\(s\) in .* loads") as info:
        load_newest_checkpoint(sorted(folder.glob("step-*.pt")))
    assert "\n" not in str(info.value)
    assert load_newest_checkpoint([]) is None


# --------------------------------------------------------------------------- personalize


def _pz_args(tiny_sd_dir, out: Path, *extra: str) -> list[str]:
    return ["personalize", "demo", "--model", str(tiny_sd_dir), "--steps", "6", "--shots", "2",
            "--seed", "0", "--batch-size", "2", "--rank", "4", "--lr", "1e-3", "--ti-lr", "1e-2",
            "--checkpoint-every", "2", "--out", str(out), *extra]  # fmt: skip


def _adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors = dict(load_file(out / "pytorch_lora_weights.safetensors"))
    for f in sorted((out / "embeddings").glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def pz_reference(tiny_sd_dir, tmp_path_factory):
    """An uninterrupted 6-step personalization (the result every resume must reproduce)."""
    out = tmp_path_factory.mktemp("pz") / "ref"
    assert main(_pz_args(tiny_sd_dir, out)) == 0
    return _adapter_tensors(out)


def test_personalize_disk_full_then_corrupt_checkpoint_then_resume(
    pz_reference, tiny_sd_dir, tmp_path, monkeypatch, capsys, caplog
):
    out = tmp_path / "pz"
    # 1. The disk fills while the step-4 checkpoint is written: one line, status failed
    _disk_full_after(monkeypatch, 1)
    assert main(_pz_args(tiny_sd_dir, out)) == 2
    monkeypatch.undo()
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device while writing" in line and "step-000004.pt" in line
    st = RunDir(out).status()
    assert st["state"] == "failed" and "no space left on device" in st["message"]
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["step-000002.pt"]
    _no_temp_files(out)
    assert not (out / "adapter.json").exists()

    # 2. Resume: from step 2, said in the log; the disk fills again at the final save
    from diffmix.personalize import run as pz  # where the run saves the token embeddings

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "embeddings"))

    monkeypatch.setattr(pz, "save_embeddings", full)
    with caplog.at_level(logging.INFO, logger="diffmix"):
        assert main(_pz_args(tiny_sd_dir, out, "--resume")) == 2
    monkeypatch.undo()
    assert "resuming from step 2 of 6" in caplog.text
    assert "no space left on device" in _one_error_line(capsys.readouterr().err)
    assert RunDir(out).status()["state"] == "failed"
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "step-000002.pt", "step-000004.pt"
    ]  # fmt: skip

    # 3. The newest checkpoint is truncated: resume falls back to step 2, says so, and ends
    #    with the same adapter as the uninterrupted run
    _truncate(out / "checkpoints" / "step-000004.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffmix"):
        assert main(_pz_args(tiny_sd_dir, out, "--resume")) == 0
    assert "step-000004.pt does not load" in caplog.text
    assert "resuming from step 2 of 6" in caplog.text
    assert RunDir(out).status()["state"] == "done"
    _assert_same(_adapter_tensors(out), pz_reference)
    steps = [e["step"] for e in RunDir(out).events("progress")]
    assert steps == sorted(set(steps))  # the redone steps are logged once

    # 4. No checkpoint loads at all: one line, nothing started over silently
    fresh = tmp_path / "nothing-loads"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / "step-000002.pt").write_bytes(b"PK\x03\x04 torn")
    capsys.readouterr()
    assert main(_pz_args(tiny_sd_dir, fresh, "--resume")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "none of the 1 checkpoint(s)" in line
    assert RunDir(fresh).status()["state"] == "failed"


def test_personalize_default_checkpoints_scale_with_the_run_and_resume_says_where(
    pz_reference, tiny_sd_dir, tmp_path, monkeypatch, caplog
):
    """Issue 19.4: a 200-step run used to checkpoint every 250 steps (never), so a run killed
    at step 110 resumed from 0 without a word."""
    from diffmix.personalize import PersonalizeConfig, personalize

    assert PersonalizeConfig(steps=200).resolved().checkpoint_every == 20
    assert PersonalizeConfig(steps=1500).resolved().checkpoint_every == 150
    assert PersonalizeConfig(steps=35_000).resolved().checkpoint_every == 250
    assert PersonalizeConfig(steps=200, checkpoint_every=7).resolved().checkpoint_every == 7

    def cfg(**kw):  # the reference's settings, with the default checkpoint interval
        return PersonalizeConfig(dataset="demo", shots=2, seed=0, model=str(tiny_sd_dir),
                                 batch_size=2, rank=4, lr=1e-3, ti_lr=1e-2, **kw)  # fmt: skip

    # A 20-step run crashes in step 12: it checkpointed at step 10 by default
    out = tmp_path / "p"
    real_mse = torch.nn.functional.mse_loss
    calls = {"n": 0}

    def crash_in_step_12(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:
            raise RuntimeError("simulated crash")
        return real_mse(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "mse_loss", crash_in_step_12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        personalize(cfg(steps=20), out)
    monkeypatch.undo()
    assert RunDir(out).status()["state"] == "failed"
    assert "RuntimeError: simulated crash" in RunDir(out).status()["message"]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt"))[-1] == "step-000010.pt"
    with caplog.at_level(logging.INFO, logger="diffmix"):
        personalize(cfg(steps=20), out, resume=True)
    assert "resuming from step 10 of 20" in caplog.text
    assert RunDir(out).events("resume")[-1]["step"] == 10

    # Time-based checkpoints too: a long interval in steps, but minutes passed (the run crashes
    # in step 3, so none is pruned: a finished run keeps only its newest checkpoint)
    timed = tmp_path / "timed"
    calls["n"] = 9
    monkeypatch.setattr(torch.nn.functional, "mse_loss", crash_in_step_12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        personalize(cfg(steps=3, checkpoint_every=100, checkpoint_minutes=1e-9), timed)
    monkeypatch.undo()
    assert sorted(p.name for p in (timed / "checkpoints").glob("*.pt")) == [
        "step-000001.pt", "step-000002.pt"
    ]  # fmt: skip

    # A resume with nothing to resume from warns that it starts from the beginning
    empty = tmp_path / "empty"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffmix"):
        personalize(cfg(steps=6), empty, resume=True)
    assert "no checkpoint in" in caplog.text and "starting from step 0" in caplog.text
    assert any(r.levelno == logging.WARNING and "starting from step 0" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    _assert_same(_adapter_tensors(empty), pz_reference)  # the default interval changes nothing


# --------------------------------------------------------------------------- train


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "demo", "--shots", "2", "--epochs", "3", "--arch", "smallcnn",
            "--resolution", "32", "--batch-size", "16", "--threads", "1", "--out", str(out),
            *extra]  # fmt: skip


def test_train_disk_full_and_corrupt_checkpoint_resume_exactly(
    tmp_path, monkeypatch, capsys, caplog
):
    ref = tmp_path / "ref"
    assert main(_train_args(ref)) == 0
    capsys.readouterr()
    out = tmp_path / "t"
    # 1. The disk fills while the epoch-2 checkpoint is written
    _disk_full_after(monkeypatch, 1)
    assert main(_train_args(out)) == 2
    monkeypatch.undo()
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device while writing" in line and "ckpt-" in line
    st = RunDir(out).status()
    assert st["state"] == "failed" and "no space left on device" in st["message"]
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 1  # epoch 1, intact
    _no_temp_files(out)
    assert [e["epoch"] for e in RunDir(out).events("epoch")] == [1]

    # 2. Resume to the end of epoch 2, then stop (cancel) so two checkpoints exist
    def stop_after_2(metrics):
        if metrics["epoch"] == 2:
            RunDir(out).request_cancel()

    from diffmix.classify import TrainConfig, train

    cfg = TrainConfig(shots=2, epochs=3, arch="smallcnn", resolution=32, batch_size=16,
                      num_threads=1)  # fmt: skip
    with pytest.raises(Cancelled):
        train(cfg, out, resume=True, callback=stop_after_2)
    assert RunDir(out).status()["state"] == "cancelled"
    ckpts = sorted((out / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 2

    # 3. The newest is truncated: resume from epoch 1's, say so, same weights as uninterrupted
    _truncate(ckpts[-1])
    with caplog.at_level(logging.INFO, logger="diffmix"):
        assert main(_train_args(out, "--resume")) == 0
    assert f"{ckpts[-1].name} does not load" in caplog.text
    assert f"resuming from epoch 2 of 3, step 0 (checkpoints/{ckpts[0].name})" in caplog.text
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    _assert_same(a, b)
    assert [e["epoch"] for e in RunDir(out).events("epoch")] == [1, 2, 3]  # epoch 2 once
    assert RunDir(out).status()["state"] == "done"


# --------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return write_color_folder(tmp_path_factory.mktemp("colors") / "colors")


def _gen_args(colors, tiny_sd_dir, out: Path) -> list[str]:
    return ["generate", str(colors), "--model", str(tiny_sd_dir), "--strategy", "real-mix",
            "--multiplier", "2", "--strength", "0.5", "--steps", "2", "--batch-size", "4",
            "--no-score", "--out", str(out)]  # fmt: skip


def _pixels(out: Path) -> dict[int, np.ndarray]:
    from diffmix.generate import read_rows

    res = {}
    for r in read_rows(out / "metadata.jsonl"):
        with Image.open(out / r["file_name"]) as im:
            res[r["task"]] = np.asarray(im.convert("RGB"))
    return res


def test_generate_disk_full_counts_the_rows_on_disk_and_resumes(
    colors, tiny_sd_dir, tmp_path, monkeypatch, capsys
):
    from diffmix import generate as gen
    from diffmix import synthetic as syn

    ref = tmp_path / "ref"
    assert main(_gen_args(colors, tiny_sd_dir, ref)) == 0
    capsys.readouterr()
    out = tmp_path / "g"
    # 1. The disk fills at the 2nd image of the 3rd batch of 4 (8 rows finished)
    real = syn.fsync_write
    pngs = {"n": 0}

    def write(path, data):
        if str(path).endswith(".png"):
            pngs["n"] += 1
            if pngs["n"] == 10:
                Path(syn.tmp_path(path)).write_bytes(data[:10])  # a torn temp file...
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(syn, "fsync_write", write)
    assert main(_gen_args(colors, tiny_sd_dir, out)) == 2
    monkeypatch.undo()
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device" in line and "The 8 image(s) already finished" in line
    rows = gen.read_rows(out / "metadata.jsonl")
    assert len(rows) == 8
    # the 9th image (saved, no row) is not left behind: the folder and the count agree
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*.png")} == {
        r["file_name"] for r in rows
    }
    st = RunDir(out).status()
    assert st["state"] == "failed" and "8 image(s) already finished" in st["message"]

    # 2. Images without a row (a kill between an image and its row) are cleaned on resume,
    #    a torn temp file too; the result equals the uninterrupted run
    last = max(gen.read_rows(ref / "metadata.jsonl"), key=lambda r: r["task"])
    orphans = [out / last["file_name"], out / Path(last["file_name"]).with_name("0000999.png")]
    for p in orphans:
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (24, 24), "white").save(p)
    assert main([*_gen_args(colors, tiny_sd_dir, out), "--resume"]) == 0
    assert not orphans[1].exists()
    capsys.readouterr()
    got, want = _pixels(out), _pixels(ref)
    assert got.keys() == want.keys() and len(got) == 24
    assert all(np.array_equal(got[t], want[t]) for t in want)
    _no_temp_files(out)
    assert RunDir(out).status()["state"] == "done"
