"""The shared-grid sampler: img2img / txt2img for many items in one denoising loop.

Diff-Mix translates each real image at its own strength ``s`` (Wang et al., CVPR 2024,
arXiv 2403.19600, Sec. 3.2). Sampling is exactly diffusers' ``StableDiffusionImg2ImgPipeline``
(``StableDiffusionPipeline`` for text-to-image items): same ``strength`` rule, timestep grid,
classifier-free guidance with an empty negative prompt, the model's own scheduler and the same
random-number consumption per item (VAE posterior sample, then the noise). The difference: items
with different strengths share the UNet. All items walk one grid of ``num_inference_steps``;
item ``i`` joins at index ``num_inference_steps - int(num_inference_steps * s_i)``
(:func:`img2img_start`, diffusers' ``get_timesteps``) and each grid step runs the UNet once on
every active item. Each item keeps its own scheduler copy (multistep solvers keep a
per-trajectory history), so an item's pixels equal a plain single-item diffusers call with the
same seed (up to float round-off of batching).

:func:`denoise_batch` is a composition of named steps, in the order a diffusers pipeline runs
them: :func:`check_inputs`, the pipeline's ``encode_prompt``, :func:`prepare_schedulers`,
:func:`prepare_latents`, :func:`denoise_step` once per grid step, :func:`decode`.

Public API: :func:`denoise_batch`, :func:`img2img_start` (both re-exported by
:mod:`diffmix.translate`); the steps above for readers and tests.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

__all__ = [
    "Grid",
    "check_inputs",
    "decode",
    "denoise_batch",
    "denoise_step",
    "img2img_start",
    "prepare_latents",
    "prepare_schedulers",
]


def img2img_start(num_inference_steps: int, strength: float) -> tuple[int, int]:
    """``(t_start, steps_run)`` of diffusers' img2img ``get_timesteps`` for one strength.

    The item joins the ``num_inference_steps`` grid at index ``t_start`` (times the scheduler
    order) and runs ``steps_run = min(int(num_inference_steps * strength), num_inference_steps)``
    denoising steps. ``steps_run == 0`` (tiny strength) means no step at all.
    """
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    return t_start, num_inference_steps - t_start


@dataclass
class Grid:
    """The shared timestep grid and each item's place on it.

    Attributes:
        schedulers: one fresh scheduler per item (never the pipeline's own).
        begins: grid index (in scheduler steps) at which each item joins.
        steps_run: denoising steps each item runs (0: the item is only encoded and decoded).
        timesteps: the grid's timesteps (the first scheduler's; all are equal).
        accepts_generator: whether the scheduler's ``step`` takes a ``generator``.
    """

    schedulers: list
    begins: list[int]
    steps_run: list[int]
    timesteps: torch.Tensor
    accepts_generator: bool

    def active(self, k: int) -> list[int]:
        """The items that run the UNet at grid index ``k``."""
        pairs = zip(self.begins, self.steps_run, strict=True)
        return [i for i, (begin, run) in enumerate(pairs) if run > 0 and begin <= k]


def check_inputs(
    pipe,
    prompts: Sequence[str],
    images: Sequence[Image.Image | None],
    strengths: Sequence[float],
    generators: Sequence[torch.Generator],
    num_inference_steps: int,
) -> None:
    """``ValueError`` naming the bad value: lengths, strengths in (0, 1] (1 for text-to-image
    items), ``num_inference_steps >= 1``, and no guidance-embedding (LCM-style) UNet."""
    n = len(prompts)
    if not (len(images) == len(strengths) == len(generators) == n):
        raise ValueError(
            f"prompts, images, strengths and generators differ in length: "
            f"{n}, {len(images)}, {len(strengths)}, {len(generators)}"
        )
    for s, im in zip(strengths, images, strict=True):
        if not (math.isfinite(s) and 0.0 < s <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {s!r}")
        if im is None and s != 1.0:
            raise ValueError(f"text-to-image items (no image) need strength 1, got {s!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if pipe.unet.config.time_cond_proj_dim is not None:
        raise ValueError("UNets with guidance embeddings (LCM-style) are not supported")


def prepare_schedulers(
    pipe,
    images: Sequence[Image.Image | None],
    strengths: Sequence[float],
    num_inference_steps: int,
    device,
) -> Grid:
    """One scheduler per item on the shared grid of ``num_inference_steps``.

    Text-to-image items start at index 0 (the pipeline leaves ``begin_index`` unset); img2img
    items at :func:`img2img_start` times the scheduler order, as diffusers' ``get_timesteps``.
    """
    schedulers, begins, steps_run = [], [], []
    for s, im in zip(strengths, images, strict=True):
        sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=device)
        if im is None:  # txt2img: the pipeline leaves begin_index unset (index 0)
            begin, run = 0, num_inference_steps
        else:
            t_start, run = img2img_start(num_inference_steps, s)
            begin = t_start * sched.order
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(begin)
        schedulers.append(sched)
        begins.append(begin)
        steps_run.append(run)
    accepts = "generator" in inspect.signature(schedulers[0].step).parameters
    return Grid(schedulers, begins, steps_run, schedulers[0].timesteps, accepts)


def prepare_latents(
    pipe,
    images: Sequence[Image.Image | None],
    generators: Sequence[torch.Generator],
    grid: Grid,
    dtype: torch.dtype,
    device,
) -> torch.Tensor:
    """The starting latents ``(n, C, h, w)`` of every item, in the pipelines' RNG order.

    Img2img items (in item order): VAE posterior sample (``eps`` from the item's generator),
    then the noise from the same generator, added at the item's first timestep (no noise is
    added when the item runs no step). Then text-to-image items: pure noise times the
    scheduler's ``init_noise_sigma``, at the img2img latents' size (the UNet's ``sample_size``
    when there are none).
    """
    from diffusers.utils.torch_utils import randn_tensor

    from diffmix.pipeline import vae_precision

    unet, vae = pipe.unet, pipe.vae
    n = len(images)
    latents: list[torch.Tensor | None] = [None] * n
    idx_i2i = [i for i in range(n) if images[i] is not None]
    if idx_i2i:
        pix = pipe.image_processor.preprocess([images[i] for i in idx_i2i])
        with vae_precision(vae):  # fp16 SD VAEs run in fp32 (force_upcast), as in diffusers
            dist = vae.encode(pix.to(device=device, dtype=vae.dtype)).latent_dist
        for j, i in enumerate(idx_i2i):
            mean, std = dist.mean[j : j + 1], dist.std[j : j + 1]
            eps = randn_tensor(mean.shape, generator=generators[i], device=device, dtype=mean.dtype)
            z = (mean + std * eps) * vae.config.scaling_factor
            noise = randn_tensor(z.shape, generator=generators[i], device=device, dtype=dtype)
            if grid.steps_run[i] > 0:
                t0 = grid.timesteps[grid.begins[i] : grid.begins[i] + 1]
                z = grid.schedulers[i].add_noise(z, noise, t0)
            latents[i] = z.to(dtype)
    h = w = unet.config.sample_size
    if idx_i2i:
        h, w = latents[idx_i2i[0]].shape[-2:]
    for i in range(n):
        if images[i] is None:
            shape = (1, unet.config.in_channels, h, w)
            z = randn_tensor(shape, generator=generators[i], device=device, dtype=dtype)
            latents[i] = z * grid.schedulers[i].init_noise_sigma
    return torch.cat(latents)


def denoise_step(
    unet,
    lat: torch.Tensor,
    t: torch.Tensor,
    active: Sequence[int],
    grid: Grid,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance_scale: float,
    generators: Sequence[torch.Generator],
) -> None:
    """One grid step at timestep ``t``: one UNet call over the ``active`` items (uncond and
    cond stacked when ``guidance_scale > 1``), then each item's own scheduler step.
    ``lat`` is updated in place."""
    do_cfg = guidance_scale > 1.0
    x = lat[active]
    x_in = torch.cat(
        [grid.schedulers[i].scale_model_input(x[j : j + 1], t) for j, i in enumerate(active)]
    )
    emb = cond[active]
    if do_cfg:
        x_in = torch.cat([x_in, x_in])
        emb = torch.cat([uncond[active], emb])
    eps = unet(x_in, t, encoder_hidden_states=emb, return_dict=False)[0]
    if do_cfg:
        e_u, e_c = eps.chunk(2)
        eps = e_u + guidance_scale * (e_c - e_u)
    for j, i in enumerate(active):
        extra = {"generator": generators[i]} if grid.accepts_generator else {}
        lat[i : i + 1] = grid.schedulers[i].step(
            eps[j : j + 1], t, x[j : j + 1], **extra, return_dict=False
        )[0]


def decode(pipe, lat: torch.Tensor) -> torch.Tensor:
    """Latents to a float tensor ``(n, 3, H, W)`` in [0, 1] on the CPU (the VAE upcast as in
    diffusers)."""
    from diffmix.pipeline import vae_precision

    vae = pipe.vae
    with vae_precision(vae):
        out = vae.decode(lat.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    out = pipe.image_processor.postprocess(out, output_type="pt", do_denormalize=[True] * len(lat))
    return out.float().cpu()


@torch.no_grad()
def denoise_batch(
    pipe,
    prompts: Sequence[str],
    images: Sequence[Image.Image | None],
    strengths: Sequence[float],
    generators: Sequence[torch.Generator],
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """img2img / txt2img for many items in one shared denoising loop.

    Item ``i`` is ``StableDiffusionImg2ImgPipeline(prompt=prompts[i], image=images[i],
    strength=strengths[i], generator=generators[i], ...)``, or ``StableDiffusionPipeline`` when
    ``images[i] is None`` (then ``strengths[i]`` must be 1). Images must already be at the
    model resolution. Every grid step runs the UNet once on all items active at that step.

    Args:
        pipe: a Stable Diffusion pipeline (its unet, vae, text encoder, scheduler are used;
            the pipeline's scheduler itself is never mutated).
        prompts: one prompt per item.
        images: PIL images at the model resolution, or ``None`` (text-to-image).
        strengths: in (0, 1] per item.
        generators: one ``torch.Generator`` per item (consumed as diffusers does).
        num_inference_steps: size of the timestep grid.
        guidance_scale: classifier-free guidance weight (<= 1: no guidance).
        progress: called as ``progress(done, total)`` after each grid step.

    Returns:
        float tensor (n, 3, H, W) in [0, 1], on the CPU.
    """
    check_inputs(pipe, prompts, images, strengths, generators, num_inference_steps)
    if not prompts:
        return torch.empty(0, 3, 0, 0)
    device = pipe._execution_device
    # negative prompt: empty, as the pipelines' default
    cond, uncond = pipe.encode_prompt(list(prompts), device, 1, guidance_scale > 1.0, None)
    grid = prepare_schedulers(pipe, images, strengths, num_inference_steps, device)
    lat = prepare_latents(pipe, images, generators, grid, cond.dtype, device)
    for k, t in enumerate(grid.timesteps):
        active = grid.active(k)
        if active:
            denoise_step(pipe.unet, lat, t, active, grid, cond, uncond, guidance_scale, generators)
        if progress is not None:
            progress(k + 1, len(grid.timesteps))
    return decode(pipe, lat)
