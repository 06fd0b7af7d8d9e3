"""Classifier training end to end on the demo (tiny: smallcnn, 32 px, a few images per class)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_classify import write_synthetic  # tests/ is on sys.path under pytest

from diffmix.classify import TrainConfig, train
from diffmix.runs import Cancelled, RunDir

TINY = {"arch": "smallcnn", "resolution": 32, "batch_size": 16, "num_threads": 1}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _demo_synthetic(root: Path, n: int = 6, source_split: str = "train") -> Path:
    """A synthetic folder whose rows point at real demo sources (images copied from them)."""
    from diffmix.data import load_dataset

    ds = load_dataset("demo", split=source_split)
    names = ds.class_names
    rows = []
    for k in range(n):
        src = ds.items[(k * 61) % len(ds)]
        rows.append({"source_class": names[src.label], "target_class": names[(src.label + 1) % 12],
                     "strength": 0.5, "source_id": src.id})  # fmt: skip
    return write_synthetic(root, rows, class_names=names, size=32)


def test_tiny_training_writes_a_complete_run_dir(tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(shots=2, epochs=2, **TINY), out)
    for name in ("config.json", "status.json", "events.jsonl", "confusion.json", "metrics.json",
                 "subset.json", "model.safetensors", "classifier.json", "log.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    run = RunDir(out)
    assert run.status()["state"] == "done"
    epochs = run.events("epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert 0.0 <= e["test_accuracy"] <= 1.0 and len(e["per_class_accuracy"]) == 12
        assert e["train_loss"] > 0 and e["lr"] > 0 and e["images_per_s"] > 0
    conf = json.loads((out / "confusion.json").read_text())
    assert len(conf["class_names"]) == 12 and sum(map(sum, conf["matrix"])) == 360
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result
    assert metrics["test_accuracy"] == epochs[-1]["test_accuracy"]  # final epoch, not best
    assert metrics["train_images"] == 24 and metrics["epochs"] == 2
    assert set(metrics["per_class_accuracy"]) == set(conf["class_names"])
    # The saved weights load back as --pretrained of a new run (head of another size too).
    from diffmix.classify import create_classifier

    model = create_classifier(
        "smallcnn", 5, resolution=32, pretrained=str(out / "model.safetensors")
    )
    assert torch.equal(model.features[0].weight, _weights(out)["features.0.weight"])
    # A finished run keeps only its newest checkpoint (resume needs no other) ...
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 1 and torch.load(ckpts[0], weights_only=True)["epoch"] >= 1, ckpts
    # ... and a second run into the same folder still needs --resume.
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(shots=2, epochs=2, **TINY), out)


def test_same_seed_same_weights_and_resume_after_cancel_is_exact(tmp_path, monkeypatch):
    cfg = TrainConfig(shots=4, epochs=3, mix="cutmix", **TINY)  # 48 images: 3 steps per epoch
    full = train(cfg, tmp_path / "full")

    # Cancelled after epoch 1 (at the next step boundary), then resumed.
    def stop_after_first(metrics):
        if metrics["epoch"] == 1:
            RunDir(tmp_path / "cut").request_cancel()

    with pytest.raises(Cancelled):
        train(cfg, tmp_path / "cut", callback=stop_after_first)
    assert RunDir(tmp_path / "cut").status()["state"] == "cancelled"
    assert [e["epoch"] for e in RunDir(tmp_path / "cut").events("epoch")] == [1]
    resumed = train(cfg, tmp_path / "cut", resume=True)

    # Cancelled in the middle of epoch 2 (the 5th step check), then resumed.
    calls = {"n": 0}
    real_check = RunDir.cancel_requested

    def cancel_on_fifth(self):
        calls["n"] += 1
        return calls["n"] == 5 or real_check(self)

    monkeypatch.setattr(RunDir, "cancel_requested", cancel_on_fifth)
    with pytest.raises(Cancelled):
        train(cfg, tmp_path / "mid")
    monkeypatch.setattr(RunDir, "cancel_requested", real_check)
    resumed_mid = train(cfg, tmp_path / "mid", resume=True)

    a = _weights(tmp_path / "full")
    for run, result in (("cut", resumed), ("mid", resumed_mid)):
        b = _weights(tmp_path / run)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (run, k)
        assert result["test_accuracy"] == full["test_accuracy"]
        assert [e["epoch"] for e in RunDir(tmp_path / run).events("epoch")] == [1, 2, 3]
        assert RunDir(tmp_path / run).status()["state"] == "done"
    full_losses = [e["train_loss"] for e in RunDir(tmp_path / "full").events("epoch")]
    mid_losses = [e["train_loss"] for e in RunDir(tmp_path / "mid").events("epoch")]
    assert mid_losses == pytest.approx(full_losses, abs=1e-6)
    # A resume with other settings is refused, naming them.
    with pytest.raises(ValueError, match="epochs"):
        train(cfg.model_copy(update={"epochs": 4}), tmp_path / "cut", resume=True)


def test_training_with_synthetic_data_and_long_tail_options(tmp_path):
    syn = _demo_synthetic(tmp_path / "syn")
    cfg = TrainConfig(shots=2, epochs=1, synthetic=[str(syn)], p=0.5, loss="balanced-softmax",
                      balanced_sampling=True, mix="mixup", **TINY)  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert result["synthetic_images"] == 6 and result["p"] == 0.5
    (epoch,) = RunDir(tmp_path / "run").events("epoch")
    assert 0.2 < epoch["synthetic_fraction"] < 0.8  # 24 draws at p = 0.5
    for key in ("head_accuracy", "medium_accuracy", "tail_accuracy"):
        assert 0.0 <= result[key] <= 1.0


def test_synthetic_images_made_from_test_images_are_refused(tmp_path):
    syn = _demo_synthetic(tmp_path / "syn", n=2, source_split="test")
    with pytest.raises(ValueError, match="test split must never be trained on"):
        train(TrainConfig(shots=1, epochs=1, synthetic=[str(syn)], **TINY), tmp_path / "run")
    assert RunDir(tmp_path / "run").status()["state"] == "failed"


# --------------------------------------------------------------------------- CLI


def test_cli_train_json_last_line(tmp_path, capsys):
    from diffmix.cli import main

    out = tmp_path / "run"
    code = main(["train", "demo", "--shots", "1", "--epochs", "1", "--arch", "smallcnn",
                 "--resolution", "32", "--threads", "1", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("test_accuracy", "epochs", "per_class_accuracy", "head_accuracy",
                "medium_accuracy", "tail_accuracy", "out"):  # fmt: skip
        assert key in last
    assert 0.0 <= last["test_accuracy"] <= 1.0 and last["epochs"] == 1
    assert len(last["per_class_accuracy"]) == 12 and last["out"] == str(out)


def test_cli_train_bad_input_is_one_clear_line(tmp_path, capsys):
    from diffmix.cli import main

    syn = write_synthetic(
        tmp_path / "syn", [{"source_class": "ant", "target_class": "bee", "strength": 0.5}]
    )
    code = main(["train", "demo", "--shots", "1", "--epochs", "1", "--arch", "smallcnn",
                 "--synthetic", str(syn), "--threads", "1", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "other classes" in err[-1] and "corbane" in err[-1]
    code = main(["train", "demo", "--arch", "resnet5o", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "resnet5o" in err[0] and "timm.list_models" in err[0]


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path, workspace_home):
    """``kill -9`` during epoch 3 of 4; ``--resume`` restarts at the saved epoch and ends with
    the same weights and test accuracy as a run that was never interrupted."""
    import os
    import subprocess
    import sys

    from killutil import sigkill_when

    repo = Path(__file__).resolve().parents[1]
    args = ["demo", "--shots", "4", "--epochs", "4", "--arch", "smallcnn", "--resolution", "32",
            "--batch-size", "16", "--threads", "1", "--seed", "3"]  # fmt: skip
    env = {**os.environ, "DIFFMIX_HOME": str(workspace_home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(repo)}  # fmt: skip
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diffmix", "train", *args]

    def two_epochs_logged() -> bool:
        return killed.is_dir() and len(RunDir(killed).events("epoch")) >= 2

    sigkill_when([*cmd, "--out", str(killed)], two_epochs_logged, env=env, cwd=tmp_path,
                 timeout_s=240)  # fmt: skip
    assert not (killed / "model.safetensors").exists()

    resumed = subprocess.run([*cmd, "--out", str(killed), "--resume", "--json"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = subprocess.run([*cmd, "--out", str(tmp_path / "full"), "--json"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-2000:]
    a, b = _weights(tmp_path / "full"), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res_k = json.loads(resumed.stdout.strip().splitlines()[-1])
    res_f = json.loads(full.stdout.strip().splitlines()[-1])
    assert res_k["test_accuracy"] == res_f["test_accuracy"]
    resume_events = RunDir(killed).events("resume")
    assert resume_events and resume_events[-1]["epoch"] >= 2  # restarted where it was saved
    assert [e["epoch"] for e in RunDir(killed).events("epoch")] == [1, 2, 3, 4]


def test_one_class_is_refused_not_reported_as_100_percent(tmp_path, capsys):
    from datautil import write_color_folder

    from diffmix.cli import main

    root = write_color_folder(tmp_path / "one", colors={"red": (255, 0, 0)})
    code = main(["train", str(root), "--arch", "smallcnn", "--epochs", "1", "--threads", "1",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "at least two classes" in err[-1]


@pytest.mark.parametrize("stage", ["personalize", "train", "translate", "generate"])
def test_out_that_is_a_file_is_one_line_before_any_work(stage, tmp_path, capsys):
    from diffmix.cli import main

    taken = tmp_path / "taken"
    taken.write_text("keep me")
    extra = ["--target", "doravik", "--source", "0", "--strength", "0.5"] if stage == "translate" else ["demo"]  # fmt: skip
    assert main([stage, *extra, "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and str(taken) in err[0], err
    assert taken.read_text() == "keep me"
