"""The backbone defaults by dataset, and training on the built-in ImageNet Lite0 (CPU, flowers17)."""

from __future__ import annotations

import pytest
import torch

from diffmix.classify import TrainConfig
from diffmix.classify.lite0 import LITE0_ARCH


def _backbone(cfg: TrainConfig) -> tuple:
    r = cfg.resolved()
    return r.arch, r.pretrained, r.resolution, r.tune


def test_backbone_defaults_follow_the_dataset():
    assert _backbone(TrainConfig(dataset="demo")) == ("resnet18", "scratch", 64, "full")
    assert _backbone(TrainConfig(dataset="demo:2")) == ("resnet18", "scratch", 64, "full")
    photos = TrainConfig(dataset="../shared/data/flowers17")
    assert _backbone(photos) == (LITE0_ARCH, "lite0", 224, "head")
    # explicit choices win; another architecture without weights trains from scratch
    assert _backbone(TrainConfig(dataset="x", arch="resnet18")) == (
        "resnet18",
        "scratch",
        64,
        "full",
    )
    assert _backbone(TrainConfig(dataset="x", tune="full"))[3] == "full"
    assert _backbone(TrainConfig(dataset="x", pretrained="scratch"))[1:] == ("scratch", 64, "full")
    assert _backbone(TrainConfig(dataset="x", resolution=128))[2] == 128
    # weights the user chose train fully (the authors' setting) unless asked otherwise
    assert _backbone(TrainConfig(dataset="x", arch="resnet50", pretrained="timm"))[1:] == (
        "timm",
        224,
        "full",
    )
    assert (
        _backbone(TrainConfig(dataset="x", arch="resnet50", pretrained="timm", tune="head"))[3]
        == "head"
    )
    with pytest.raises(ValueError, match="weights of tf_efficientnet_lite0, not of 'resnet18'"):
        TrainConfig(dataset="x", arch="resnet18", pretrained="lite0")
    with pytest.raises(ValueError, match="would stay random"):
        TrainConfig(dataset="x", pretrained="scratch", tune="head")
    with pytest.raises(ValueError, match="'lite0' \\(built-in\\)"):
        TrainConfig(dataset="x", pretrained="lite1")


def _run(flowers17, tmp_path, **kw):
    from diffmix.classify import train

    cfg = TrainConfig(dataset=str(flowers17), shots=2, batch_size=12, num_threads=2,
                      tensorboard=False, cache=False, **kw)  # fmt: skip
    return train(cfg, tmp_path / "run")


def _stem(path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path / "run" / "model.safetensors"))["conv_stem.weight"]


def test_linear_probe_on_flowers17(flowers17, tmp_path):
    """The default on photos: frozen ImageNet features + a trained head, far above chance."""
    from diffmix.classify.lite0 import create_lite0

    result = _run(flowers17, tmp_path, resolution=96, epochs=4, eval_every=4)
    assert (result["arch"], result["pretrained"], result["tune"]) == (LITE0_ARCH, "lite0", "head")
    assert result["test_accuracy"] >= 0.4  # 2 shots x 12 classes, 8 steps at 96 px; chance 1/12
    assert torch.equal(_stem(tmp_path), create_lite0().conv_stem.weight)  # backbone untouched


def test_full_fine_tuning_on_flowers17(flowers17, tmp_path):
    """Every weight trains (the paper's setting), from the ImageNet start."""
    from diffmix.classify.lite0 import create_lite0

    result = _run(flowers17, tmp_path, resolution=64, epochs=1, tune="full", lr=0.01)
    assert result["tune"] == "full" and 0 <= result["test_accuracy"] <= 1
    assert not torch.equal(_stem(tmp_path), create_lite0().conv_stem.weight)
