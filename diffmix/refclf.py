"""Reference classifiers ("judges"): which class a generated image looks like.

Two judges, both with ``forward(x)`` (logits) and ``embed(x)`` (non-negative pooled features)
on images ``x`` (n, 3, H, W) in [0, 1]:

- :class:`SmallCNN` trained from scratch with :func:`fit_judge` -- the judge of the demo's
  64-px drawings (nano-SD's evaluation, the demo's scores), where it is better than ImageNet
  features of 64-px cartoons;
- :class:`Lite0Probe`: the built-in ImageNet EfficientNet-Lite0 (frozen,
  :mod:`diffmix.classify.lite0`) + a linear head fitted with :func:`fit_probe` -- the judge of
  real photos (a few labelled shots suffice).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


class SmallCNN(nn.Module):
    """A 4-stage conv net for small images (any side >= 16 px); logits over ``num_classes``."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        chans = (3, width, width * 2, width * 4, width * 4)
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: mean-pooled post-ReLU activations (n, 4*width), >= 0."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class Lite0Probe(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 features (1280, post-ReLU6 mean-pooled, >= 0) + a
    linear ``head``; inputs in [0, 1] at any side (the weights were trained at 224 px)."""

    def __init__(self, num_classes: int, backbone: nn.Module | None = None):
        super().__init__()
        from diffmix.classify import lite0

        self.backbone = [backbone if backbone is not None else _lite0_backbone()]  # not saved
        self.head = nn.Linear(1280, num_classes)
        self._normalize = lite0.normalize

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        net = self.backbone[0]
        with torch.no_grad():
            f = net.forward_features(self._normalize(x))
            return net.forward_head(f, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


_LITE0: list[nn.Module] = []


def _lite0_backbone() -> nn.Module:
    """The shared frozen Lite0 (built once per process; eval mode, no gradients)."""
    if not _LITE0:
        from diffmix.classify.lite0 import create_lite0

        net = create_lite0(None)
        for p in net.parameters():
            p.requires_grad_(False)
        _LITE0.append(net.eval())
    return _LITE0[0]


def images_to_uint8(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> uint8 tensor (n, 3, size, size) (bicubic resize when needed)."""
    arrs = [
        np.asarray(
            im.convert("RGB").resize((size, size), Image.BICUBIC)
            if im.size != (size, size)
            else im.convert("RGB")
        )
        for im in images
    ]
    if not arrs:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def images_to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> float tensor (n, 3, size, size) in [0, 1] (bicubic resize when needed)."""
    return _unit(images_to_uint8(images, size))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1]: uint8 is divided by 255, floats pass unchanged."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip + random translation by up to 1/8 of the side (reflect padding)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    pad = h // 8
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def fit_judge(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int = 30, seed: int = 0
) -> SmallCNN:
    """Train a :class:`SmallCNN` on images ``x`` (n,3,H,W: uint8, or float in [0,1]) and
    labels ``y`` (uint8 is converted a batch at a time: a quarter of the memory)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes)
    steps_per_epoch = max(1, len(x) // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * 64 : (s + 1) * 64]
            loss = F.cross_entropy(model(_augment(_unit(x[idx]), gen)), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 300,
    seed: int = 0,
    batch: int = 32,
) -> Lite0Probe:
    """Fit a :class:`Lite0Probe`'s head on images ``x`` (n,3,H,W in [0,1]) and labels ``y``.

    Features of each image and of its mirror image are computed once; the head is then
    trained full-batch (AdamW, lr 1e-2, weight decay 1e-3, label smoothing 0.1) for
    ``steps`` steps -- seconds, whatever the dataset size.
    """
    return fit_probe_chunks([x], y, num_classes, steps=steps, seed=seed, batch=batch)[0]


def fit_probe_chunks(
    chunks: Iterable[torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 300,
    seed: int = 0,
    batch: int = 32,
) -> tuple[Lite0Probe, torch.Tensor]:
    """:func:`fit_probe` on images given as consecutive chunks (uint8, or float in [0, 1]):
    only one chunk and the features are in memory at a time. Returns the probe and the
    features of the (unmirrored) images, (n, 1280). Same result as one chunk of all images
    when every chunk but the last holds a multiple of ``batch`` images."""
    torch.manual_seed(seed)
    model = Lite0Probe(num_classes)
    plain, mirrored = [], []
    for chunk in chunks:
        for a in range(0, len(chunk), batch):
            plain.append(model.embed(_unit(chunk[a : a + batch])))
        for a in range(0, len(chunk), batch):
            mirrored.append(model.embed(_unit(chunk[a : a + batch]).flip(-1)))
    feats = torch.cat(plain + mirrored)
    labels = torch.cat([y, y])
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(model.head(feats), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), feats[: len(y)]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Class probabilities (n, C) for images ``x`` (n,3,H,W: uint8, or float in [0,1])."""
    model.eval()
    return torch.cat([model(_unit(x[a : a + batch])).softmax(-1) for a in range(0, len(x), batch)])
