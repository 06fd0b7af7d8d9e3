"""The experiment's classifier follows the studio's backbone rule: SmallCNN from scratch at
64 px on the demo (the README table's setting), the built-in ImageNet Lite0 (head tuning, 224 px)
on real photos, as ``diffmix train`` does; explicit values win."""

from __future__ import annotations

from pathlib import Path

from diffmix.experiment import ExperimentConfig, train_config


def _train(tmp_path: Path, **fields):
    cfg = ExperimentConfig(**fields)
    return train_config(cfg, "diff-mix", 1, tmp_path / "syn")


def test_demo_keeps_the_small_cnn_from_scratch(tmp_path: Path) -> None:
    t = _train(tmp_path, dataset="demo")
    assert (t.arch, t.pretrained, t.resolution, t.tune) == ("smallcnn", "scratch", 64, "full")


def test_photos_get_the_built_in_pretrained_backbone(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    t = _train(tmp_path, dataset=str(photos))
    assert (t.arch, t.pretrained, t.resolution, t.tune) == (
        "tf_efficientnet_lite0", "lite0", 224, "head")  # fmt: skip


def test_explicit_classifier_settings_win(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    t = _train(tmp_path, dataset=str(photos), arch="smallcnn")
    assert (t.arch, t.resolution) == ("smallcnn", 64)
    t = _train(tmp_path, dataset=str(photos), resolution=128)
    assert (t.arch, t.resolution) == ("tf_efficientnet_lite0", 128)
    t = _train(tmp_path, dataset="demo", arch="resnet18", resolution=32)
    assert (t.arch, t.pretrained, t.resolution) == ("resnet18", "scratch", 32)
