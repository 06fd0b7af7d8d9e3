"""Sample grids during personalization: one image per class with the current weights.

A grid shows at most :data:`GRID_MAX_CLASSES` classes (:func:`grid_classes`), sampled
:data:`GRID_CHUNK` per UNet call with :data:`GRID_STEPS` steps, so its cost stays bounded on a
dataset of hundreds of classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diffmix.personalize.train import TEMPLATES

#: Sample grids show at most this many classes (evenly spread over the class list, the same
#: ones at every step) and sample them this many per UNet call: a grid of CUB's 200 classes at
#: 512 px was one UNet batch of 400 (with guidance), and a grid every 50 steps cost more than
#: the training. Capped, a grid costs GRID_MAX_CLASSES x GRID_STEPS x 2 UNet image evaluations
#: (12 x 25 x 2 = 600), about as much as 50 training steps at batch 8 (forward + backward).
GRID_MAX_CLASSES = 12
GRID_CHUNK = 4
GRID_STEPS = 25


def grid_classes(num_classes: int, limit: int | None = None) -> list[int]:
    """The classes a sample grid shows: all when ``num_classes <= limit`` (default
    :data:`GRID_MAX_CLASSES`), else ``limit`` indices spread evenly over
    ``0 .. num_classes - 1`` (first and last included)."""
    limit = GRID_MAX_CLASSES if limit is None else limit
    if num_classes <= limit:
        return list(range(num_classes))
    if limit == 1:
        return [0]
    return sorted({round(i * (num_classes - 1) / (limit - 1)) for i in range(limit)})


@torch.no_grad()
def sample_grid(
    pipe, accel, unet, text_encoder, tokens: list[str], superclass: str, path: Path
) -> None:
    """One sample per class (fixed seeds) with the current weights, saved as a grid.

    At most :data:`GRID_MAX_CLASSES` classes (:func:`grid_classes`), :data:`GRID_CHUNK` per
    UNet call, through the studio's batched sampler under the training's autocast; latents
    are decoded in the VAE's own dtype (a bf16/fp16 VAE under mixed precision).
    """
    from PIL import Image

    from diffmix.translate import denoise_batch

    was_training = unet.training
    unet.eval()
    text_encoder.eval()
    pipe.unet, pipe.text_encoder = accel.unwrap_model(unet), accel.unwrap_model(text_encoder)
    try:
        shown = grid_classes(len(tokens))
        images = []
        for k in range(0, len(shown), GRID_CHUNK):
            chunk = shown[k : k + GRID_CHUNK]
            prompts = [TEMPLATES[0].format(token=tokens[c], superclass=superclass) for c in chunk]
            gens = [torch.Generator().manual_seed(c) for c in chunk]  # same grid on any device
            with accel.autocast():
                pix = denoise_batch(
                    pipe, prompts, [None] * len(chunk), [1.0] * len(chunk), gens,
                    num_inference_steps=GRID_STEPS, guidance_scale=7.5,
                )  # fmt: skip
            images += [
                Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                for p in pix.float().clamp(0, 1)
            ]
    finally:
        if was_training:
            unet.train()
            text_encoder.train()
    side = images[0].width
    cols = min(len(images), 12)
    grid = Image.new("RGB", (cols * side, math.ceil(len(images) / cols) * side))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * side, (i // cols) * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
