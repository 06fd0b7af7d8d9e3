"""The built-in ImageNet EfficientNet-Lite0: exact key mapping, ImageNet predictions on photos."""

from __future__ import annotations

import pytest
import torch

from diffmix.classify import lite0


def _photos(folder, names: list[str], per_class: int) -> tuple[torch.Tensor, list[str]]:
    from PIL import Image

    from diffmix.refclf import images_to_tensor

    files, labels = [], []
    for name in names:
        for f in sorted((folder / name).glob("*.jpg"))[:per_class]:
            files.append(f)
            labels.append(name)
    images = [Image.open(f).convert("RGB") for f in files]
    return images_to_tensor(images, lite0.LITE0_RESOLUTION), labels


def test_mapping_is_strict_and_complete():
    state = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    model = lite0.create_lite0()
    assert set(model.state_dict()) == set(lite0._mapped_state())
    assert len(state) == len(model.state_dict()) == 296
    # a key with no counterpart is an error, not silently dropped
    with pytest.raises(ValueError, match="_se_reduce"):
        lite0.map_state_dict({"_blocks.3._se_reduce.weight": torch.zeros(1)}, [(0, 0)] * 16)
    with pytest.raises(ValueError, match="_fc2"):
        lite0.map_state_dict({"_fc2.weight": torch.zeros(1)}, [(0, 0)] * 16)


def test_imagenet_names():
    names = lite0.imagenet_class_names()
    assert len(names) == 1000
    assert names[985] == "daisy" and names[11] == "goldfinch"


def test_flowers17_daisies_are_imagenet_daisies(flowers17):
    """The mapped network reproduces ImageNet predictions on real photos it never saw."""
    torch.set_num_threads(1)
    x, _ = _photos(flowers17, ["daisy"], 6)
    model = lite0.create_lite0()
    with torch.no_grad():
        pred = model(lite0.normalize(x)).argmax(-1).tolist()
    names = lite0.imagenet_class_names()
    assert sum(names[p] == "daisy" for p in pred) >= 5, [names[p] for p in pred]


def test_wrong_architecture_is_refused():
    import timm

    other = timm.create_model("efficientnet_b0", pretrained=False)
    with pytest.raises(ValueError, match="do not fit"):
        lite0.load_lite0(other)
