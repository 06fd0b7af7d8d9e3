"""The training step of personalization: class tokens, parameter groups, batches, the loss.

Textual inversion (one new CLIP token per class) trained jointly with a LoRA on the UNet
attention projections, with the denoising loss of Stable Diffusion (epsilon or v target).
Small functions, each one step of the math; :mod:`diffmix.personalize.run` strings them
together into a run. The random draws of a micro-step happen in a fixed order from one
per-step generator (batch indices, flips, VAE posterior sample, noise, timesteps), so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffmix.adapter import AdapterError

#: Training captions; the first is the adapter's prompt template.
TEMPLATES = (
    "a photo of a {token} {superclass}",
    "a close-up photo of a {token} {superclass}",
    "a picture of a {token} {superclass}",
    "a photo of the {token} {superclass}",
)
#: The UNet attention projections the LoRA adapts (the authors': to_q/k/v/out).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


# --------------------------------------------------------------------------- tokens


def class_token(index: int) -> str:
    """The placeholder token of class ``index`` (``<class_0>``, ``<class_1>``, ...)."""
    return f"<class_{index}>"


def add_class_tokens(
    tokenizer, text_encoder, class_names: list[str], init_words: list[str]
) -> list[int]:
    """Add one token per class, initialised to the mean embedding of its init word's tokens.

    Returns the new token ids. Raises :class:`AdapterError` when a token already exists.
    """
    tokens = [class_token(i) for i in range(len(class_names))]
    clash = [t for t in tokens if t in tokenizer.get_vocab()]
    if clash:
        raise AdapterError(
            f"tokens {clash} already exist in the tokenizer; load a fresh base model"
        )
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for tid, word in zip(ids, init_words, strict=True):
            word_ids = (
                tokenizer(word, add_special_tokens=False).input_ids
                or tokenizer("object", add_special_tokens=False).input_ids
            )
            emb[tid] = emb[word_ids].mean(0)
    return ids


# --------------------------------------------------------------------------- parameters


@dataclass
class FrozenRows:
    """The token-embedding rows that must not move: all but the new class tokens.

    ``keep`` marks them (bool, vocabulary size), ``values`` holds their original vectors.
    """

    keep: torch.Tensor
    values: torch.Tensor

    def restore(self, text_encoder) -> None:
        """Put the frozen rows back (after an optimiser step; weight decay moves them)."""
        with torch.no_grad():
            w = text_encoder.get_input_embeddings().weight
            w[self.keep] = self.values[self.keep]


def parameter_groups(
    tokenizer,
    text_encoder,
    unet,
    token_ids: list[int],
    *,
    ti_lr: float,
    lr: float,
    rank: int,
    ti_only: bool,
) -> tuple[list[dict], FrozenRows]:
    """AdamW parameter groups: the token embeddings (lr ``ti_lr``, no weight decay) and, unless
    ``ti_only``, a new rank-``rank`` LoRA on the UNet attention (lr ``lr``, weight decay 1e-2).

    Everything else is frozen. Gradients reach only the new token rows (so clipping and Adam
    see only them); :meth:`FrozenRows.restore` after each step makes "only the new tokens
    move" exact. The LoRA init draws from the global torch RNG: seed it first.
    """
    for m in (unet, text_encoder):
        m.requires_grad_(False)
    emb = text_encoder.get_input_embeddings()
    emb.weight.requires_grad_(True)
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[token_ids] = False
    frozen = FrozenRows(keep=keep, values=emb.weight.detach().clone())
    grad_mask = (~keep).float().unsqueeze(1)
    emb.weight.register_hook(lambda g: g * grad_mask.to(g))
    groups = [{"params": [emb.weight], "lr": ti_lr, "weight_decay": 0.0}]
    if not ti_only:
        from peft import LoraConfig

        unet.add_adapter(
            LoraConfig(
                r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
            )
        )
        lora_params = [p for p in unet.parameters() if p.requires_grad]
        groups.append({"params": lora_params, "lr": lr, "weight_decay": 1e-2})
    return groups, frozen


# --------------------------------------------------------------------------- batches


def images_tensor(ds, indices: list[int], size: int) -> torch.Tensor:
    """Decode the chosen images once: uint8 tensor (n, 3, size, size), center-crop resized."""
    from PIL import Image, ImageOps

    arr = np.empty((len(indices), size, size, 3), np.uint8)
    for k, i in enumerate(indices):
        im = ImageOps.fit(ds.image(i), (size, size), Image.BICUBIC)
        arr[k] = np.asarray(im)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image draw weights making each class equally likely: ``1 / count(class)``."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return (1.0 / counts[labels]).double()


def step_generators(seed: int, step: int, process: int) -> tuple[torch.Generator, random.Random]:
    """The per-step random sources (tensor draws, caption choice) of one process: a function
    of (seed, step, process) alone, so a resumed run draws the same batches."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + process)
    return gen, random.Random(f"{seed}-{step}-{process}")


def sample_batch(
    images: torch.Tensor,
    batch_size: int,
    gen: torch.Generator,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, pixels)``: ``batch_size`` images drawn with replacement (by ``weights`` when
    given, else uniformly), in [-1, 1], each flipped horizontally with probability 0.5."""
    if weights is not None:
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
    else:
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
    x = images[idx].float().div(127.5).sub(1.0)
    flip = torch.rand(len(idx), generator=gen) < 0.5
    return idx, torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_prompts(
    idx: torch.Tensor, labels: torch.Tensor, tokens: list[str], superclass: str, rnd
) -> list[str]:
    """One caption per drawn image: a random template with its class token."""
    return [
        rnd.choice(TEMPLATES).format(token=tokens[int(labels[i])], superclass=superclass)
        for i in idx
    ]


# --------------------------------------------------------------------------- loss


def noisy_and_target(
    z: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM forward noising ``sqrt(ᾱ)·z + sqrt(1-ᾱ)·ε`` and the UNet's regression target:
    ``ε`` (``epsilon``) or ``v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·z`` (``v_prediction``)."""
    noisy = alpha_bar.sqrt() * z + (1 - alpha_bar).sqrt() * noise
    if prediction_type == "epsilon":
        return noisy, noise
    return noisy, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z


def diffusion_loss(
    unet,
    text_encoder,
    vae,
    input_ids: torch.Tensor,
    pixels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    scheduler_config,
    gen: torch.Generator,
    accel,
) -> torch.Tensor:
    """The denoising loss (MSE) of one batch: encode ``pixels`` (posterior sample), noise them
    at a uniform random timestep and regress the UNet's prediction onto the target."""
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        z = (
            dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
        ) * vae.config.scaling_factor
    z = z.float()
    noise = torch.randn(z.shape, generator=gen).to(z)
    t = torch.randint(0, scheduler_config.num_train_timesteps, (len(pixels),), generator=gen).to(
        accel.device
    )
    ac = alphas_cumprod[t].view(-1, 1, 1, 1).float()
    noisy, target = noisy_and_target(z, noise, ac, scheduler_config.prediction_type)
    with accel.autocast():
        ctx = text_encoder(input_ids)[0]
        pred = unet(noisy, t, ctx).sample
    return F.mse_loss(pred.float(), target.float())
