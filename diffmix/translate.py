"""Inter-class image translation: strategies, strength, soft labels -- one batched call.

Diff-Mix's second operation (Wang et al., CVPR 2024, arXiv 2403.19600, Sec. 3.2): run img2img
on a real image of class A with the personalized prompt of class B at strength ``s``; label the
result ``(1 - s^γ)·onehot(A) + s^γ·onehot(B)``. The paper's baselines are the same call with
another model / prompt / target rule, so every method is one :class:`Strategy` row of
:data:`STRATEGIES` (data, not code paths):

==========  =======  ============  ======  ========  =============================================
name        adapter  adapter kind  target  sampling  what it is
==========  =======  ============  ======  ========  =============================================
diff-mix    yes      full          other   img2img   personalized (TI + LoRA) translation A -> B
diff-aug    yes      full          same    img2img   personalized translation A -> A
diff-gen    yes      full          any     txt2img   personalized text-to-image of B (s = 1)
real-mix    no       none          other   img2img   base model, prompt with B's class *name*
real-aug    no       none          same    img2img   base model, A's name
real-gen    no       none          any     txt2img   base model text-to-image of B's name
ti-mix      yes      ti            other   img2img   token-only adapter (DA-Fusion-style), A -> B
ti-aug      yes      ti            same    img2img   token-only adapter, A -> A
mixup       no       none          any     none      classic pixel blend with a real image of B
cutmix      no       none          any     none      classic box paste from a real image of B
==========  =======  ============  ======  ========  =============================================

Sampling is exactly diffusers' ``StableDiffusionImg2ImgPipeline`` (``StableDiffusionPipeline``
for ``*-gen``): same ``strength`` rule, ``num_inference_steps`` (default 25), ``guidance_scale``
(default 7.5, classifier-free guidance with an empty negative prompt), the model's own scheduler
(DPM-Solver multistep for our models) and the same random-number consumption per item
(``torch.Generator`` seeded with the item's seed: VAE posterior sample, then the noise). The
difference: items with *different strengths* share the UNet. All items of a chunk walk the one
timestep grid of ``num_inference_steps``; item ``i`` joins at grid index
``num_inference_steps - int(num_inference_steps * s_i)`` (diffusers' ``get_timesteps``), and each
grid step runs the UNet once on every active item (uncond + cond stacked). Each item keeps its
own scheduler copy (DPM-Solver multistep keeps a per-trajectory history), so an item's pixels
equal a plain single-item diffusers call with the same seed (up to float round-off of batching).

Sources of any size and aspect are **padded** to a square (edge pixels replicated, centred),
resized to the model resolution (bicubic), translated, resized back and un-padded: every source
pixel is translated and the result has the source's exact size. (Centre-cropping would lose the
borders, and stretching would distort the object the model has to redraw.) A source already at
the model resolution is used as is.

Public API: :class:`Strategy`, :data:`STRATEGIES`, :func:`get_strategy`, :class:`TranslateConfig`,
:class:`TranslationItem`, :class:`Translation`, :func:`translate`, :func:`denoise_batch`,
:func:`img2img_start`, :func:`build_prompt` (:func:`prompt_word`, :func:`template_from_prompt`
for a user's prompt), :func:`load_adapted_pipeline`. The soft label is
:func:`diffmix.labels.soft_label` (re-exported here as :func:`soft_label`); mixup/cutmix are
:mod:`diffmix.mixing`. Each :class:`Translation` names its ``label_rule``.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import AfterValidator, ConfigDict, Field

from diffmix.adapter import (
    ADAPTER_FILE,
    AdapterError,
    attach_adapter,
    check_adapter_for,
    check_prompt_template,
    read_adapter,
    require_adapter,
)
from diffmix.config import StageConfig
from diffmix.labels import label_rule_for, soft_label
from diffmix.mixing import cutmix_box, mixup_pixels

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """One translation method, as data.

    Attributes:
        name: the strategy's name (``diff-mix``, ``real-aug``, ...).
        uses_adapter: whether a personalized adapter folder is required.
        adapter_kind: ``"full"`` (tokens + LoRA), ``"ti"`` (tokens only, ``ti_only: true``),
            or ``"none"`` (base model / no model).
        target: ``"other"`` (target class must differ from the source class), ``"same"``
            (target must be the source class) or ``"any"``.
        generative: ``"img2img"`` (source pixels + strength), ``"txt2img"`` (pure noise,
            strength 1, no source pixels) or ``"none"`` (classic pixel mixing, no model).
        prompt: ``"adapter"`` (the adapter's template with the target's token),
            ``"class-name"`` (``"a photo of a {class name} {superclass}"``) or ``"none"``.
        summary: one line for menus and tables.
    """

    name: str
    uses_adapter: bool
    adapter_kind: Literal["full", "ti", "none"]
    target: Literal["same", "other", "any"]
    generative: Literal["img2img", "txt2img", "none"]
    prompt: Literal["adapter", "class-name", "none"]
    summary: str

    def __post_init__(self) -> None:
        if self.uses_adapter != (self.adapter_kind != "none"):
            raise ValueError(f"strategy {self.name!r}: uses_adapter contradicts adapter_kind")
        if (self.prompt == "adapter") != self.uses_adapter:
            raise ValueError(f"strategy {self.name!r}: adapter prompts need an adapter")
        if (self.generative == "none") != (self.prompt == "none"):
            raise ValueError(f"strategy {self.name!r}: only generative strategies have prompts")


_TABLE = (
    Strategy("diff-mix", True, "full", "other", "img2img", "adapter",
             "personalized translation to another class (Diff-Mix)"),
    Strategy("diff-aug", True, "full", "same", "img2img", "adapter",
             "personalized translation within the source class (Diff-Aug)"),
    Strategy("diff-gen", True, "full", "any", "txt2img", "adapter",
             "personalized text-to-image of the target class (Diff-Gen)"),
    Strategy("real-mix", False, "none", "other", "img2img", "class-name",
             "base model translation to another class, class-name prompt (Real-Mix)"),
    Strategy("real-aug", False, "none", "same", "img2img", "class-name",
             "base model translation within the class, class-name prompt (Real-Aug)"),
    Strategy("real-gen", False, "none", "any", "txt2img", "class-name",
             "base model text-to-image, class-name prompt (Real-Gen)"),
    Strategy("ti-mix", True, "ti", "other", "img2img", "adapter",
             "token-only adapter translation to another class (TI-Mix)"),
    Strategy("ti-aug", True, "ti", "same", "img2img", "adapter",
             "token-only adapter translation within the class (TI-Aug, DA-Fusion-like)"),
    Strategy("mixup", False, "none", "any", "none", "none",
             "pixel blend with a real image of the target class (Mixup)"),
    Strategy("cutmix", False, "none", "any", "none", "none",
             "box pasted from a real image of the target class (CutMix)"),
)  # fmt: skip

#: Every strategy by name, in table order.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _TABLE}


def get_strategy(name: str | Strategy) -> Strategy:
    """The :class:`Strategy` called ``name``; ``ValueError`` naming the known ones otherwise."""
    if isinstance(name, Strategy):
        return name
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


# --------------------------------------------------------------------------- pure math


def img2img_start(num_inference_steps: int, strength: float) -> tuple[int, int]:
    """``(t_start, steps_run)`` of diffusers' img2img ``get_timesteps`` for one strength.

    The item joins the ``num_inference_steps`` grid at index ``t_start`` (times the scheduler
    order) and runs ``steps_run = min(int(num_inference_steps * strength), num_inference_steps)``
    denoising steps. ``steps_run == 0`` (tiny strength) means no step at all.
    """
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    return t_start, num_inference_steps - t_start


def prompt_word(
    strategy: str | Strategy, target_class: str, *, adapter_meta: dict | None = None
) -> str:
    """What ``{token}`` stands for in a prompt of ``target_class``: the class's token for
    personalized strategies (``<demo-3>``), its name (underscores as spaces) otherwise."""
    st = get_strategy(strategy)
    if st.prompt == "adapter":
        require_adapter(st, adapter_meta, how="pass adapter_meta (its adapter.json)")
        tokens = adapter_meta.get("class_tokens", {})
        if target_class not in tokens:
            raise ValueError(
                f"unknown class {target_class!r}; the adapter knows: {', '.join(tokens)}"
            )
        return str(tokens[target_class])
    return target_class.replace("_", " ").strip()


def template_from_prompt(prompt: str, word: str) -> str:
    """A prompt template of a typed prompt: braces escaped, ``word`` (the target's token or
    name, :func:`prompt_word`) made ``{token}``, so that ``template.format(token=word)`` gives
    ``prompt`` back and other target classes get their own token."""
    escaped = prompt.replace("{", "{{").replace("}", "}}")
    return escaped.replace(word, "{token}") if word else escaped


def build_prompt(
    strategy: str | Strategy,
    target_class: str,
    *,
    adapter_meta: dict | None = None,
    superclass: str | None = None,
    template: str | None = None,
) -> str:
    """The prompt a strategy uses for ``target_class``.

    Personalized strategies: ``adapter_meta["prompt_template"].format(token=class_tokens[target])``.
    Base-model strategies: ``"a photo of a {class name} {superclass}"`` (underscores in the name
    become spaces; no superclass word when unknown), as the paper's Real-* baselines.
    Classic mixing strategies have no prompt (``""``). ``template`` (a user's prompt, checked by
    :func:`~diffmix.adapter.check_prompt_template` with ``{token}`` optional) replaces the
    strategy's own: ``{token}`` is :func:`prompt_word`, ``{superclass}`` the superclass word.
    """
    st = get_strategy(strategy)
    if st.prompt == "none":
        return ""
    if template is not None:
        template = check_prompt_template(template, require_token=False)
        word = prompt_word(st, target_class, adapter_meta=adapter_meta)
        return template.format(token=word, superclass=superclass or "object").strip()
    if st.prompt == "adapter":
        word = prompt_word(st, target_class, adapter_meta=adapter_meta)
        template = check_prompt_template(adapter_meta.get("prompt_template"))
        return template.format(token=word, superclass=superclass or "object")
    name = target_class.replace("_", " ").strip()
    return f"a photo of a {name} {superclass}" if superclass else f"a photo of a {name}"


# --------------------------------------------------------------------------- config & items


def _strategy_name(name: str) -> str:
    return get_strategy(name).name


#: A config's strategy field: a name :func:`get_strategy` knows, kept as the strategy's own
#: spelling (``ValueError`` naming the choices otherwise).
StrategyName = Annotated[str, AfterValidator(_strategy_name)]
#: A config's device and precision fields (``None``: the best available device / automatic).
Device = Annotated[str | None, Field(description="cpu, cuda, ... (default: best available)")]
Dtype = Annotated[str | None, Field(description="auto, fp32, fp16, bf16 (default: auto)")]


class TranslateConfig(StageConfig):
    """How to translate: strategy, model, adapter and sampling settings (unknown keys rejected)."""

    model_config = ConfigDict(frozen=True)  # and StageConfig's extra="forbid"

    strategy: StrategyName = Field("diff-mix", description=f"one of {', '.join(STRATEGIES)}")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    adapter: str | None = Field(None, description="adapter folder (diff-* / ti-* strategies)")
    num_inference_steps: int = Field(
        25,
        ge=1,
        le=1000,
        description="timestep grid size (steps at s = 1; the SD schedulers "
        "have 1000 training timesteps, so at most 1000)",
    )
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance (<= 1: off)")
    prompt_template: str | None = Field(
        None,
        description="prompt replacing the strategy's own: {token} = the target's token (or "
        "name for base-model strategies), {superclass}; None = the strategy's prompt",
    )
    gamma: float = Field(
        0.5, gt=0, description="soft-label exponent γ; 0.5 = the authors' (4aa0ec8:run.sh:23)"
    )
    batch_size: int = Field(16, ge=1, description="items per shared denoising loop")
    device: Device = None
    dtype: Dtype = None


@dataclass(frozen=True)
class TranslationItem:
    """One requested translation.

    Attributes:
        source: the real source image (any size/aspect); ``None`` is allowed for ``*-gen``.
        source_class: the source's class name (needed for the soft label and the target rule;
            may be ``None`` for ``*-gen``).
        target_class: the class to translate to.
        strength: ``s`` in (0, 1]; ``*-gen`` requires 1. For mixup/cutmix: the target's share.
        seed: seeds this item's ``torch.Generator`` (same seed and inputs -> same pixels).
        partner: mixup/cutmix only: the real image of the target class to mix in.
    """

    source: Image.Image | None
    source_class: str | None
    target_class: str
    strength: float
    seed: int = 0
    partner: Image.Image | None = None


@dataclass
class Translation:
    """One result, in the order of the request.

    Attributes:
        image: RGB result at the source's size (model resolution for ``*-gen`` sources).
        pixels: the float result in [0, 1], shape (H, W, 3), as produced before resizing back
            (model resolution for generative strategies, source size for mixup/cutmix).
        soft_label: class name -> weight (non-zero weights only, summing to 1); for
            mixup/cutmix the exact pixel share of the target (:attr:`label_rule` "pixel-share").
        label_vector: the same label over all classes (float64, length = number of classes).
        steps_run: denoising steps actually run (``int(num_inference_steps * s)``; 0 for
            mixup/cutmix). A strength too small for one step returns the VAE reconstruction.
    """

    image: Image.Image
    pixels: np.ndarray
    source_class: str | None
    target_class: str
    strength: float
    seed: int
    strategy: str
    prompt: str
    soft_label: dict[str, float]
    label_vector: np.ndarray = field(repr=False)
    steps_run: int = 0

    @property
    def label_rule(self) -> str:
        """How training reads this label (:mod:`diffmix.labels`): ``diffmix-gamma``
        (recomputed with the run's γ), ``pixel-share`` (used as stored) or ``hard``."""
        return label_rule_for(self.strategy)

    def record(self) -> dict[str, Any]:
        """A JSON-ready provenance row (no pixels)."""
        return {
            "strategy": self.strategy,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "strength": self.strength,
            "seed": self.seed,
            "prompt": self.prompt,
            "soft_label": dict(self.soft_label),
            "label_rule": self.label_rule,
            "steps_run": self.steps_run,
        }


# --------------------------------------------------------------------------- pipelines

_ADAPTED: OrderedDict[tuple, Any] = OrderedDict()
_ADAPTED_SIZE = 2
_ADAPTED_LOCK = threading.RLock()


def load_adapted_pipeline(
    model: str,
    adapter_dir: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
):
    """A ``StableDiffusionPipeline`` of ``model`` with the adapter in ``adapter_dir`` attached.

    Never the shared base pipeline of :func:`diffmix.pipeline.load_pipeline` (a second attach
    would clash on the class tokens): a fresh load of the base folder per (model, adapter),
    kept in a thread-safe LRU cache of two. Rewriting the adapter (its ``adapter.json``)
    invalidates its entry.
    """
    from diffmix.pipeline import load_base, pick_device, pick_dtype, resolve_model

    ref = resolve_model(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    adir = Path(adapter_dir).expanduser().resolve()
    meta_path = adir / ADAPTER_FILE
    if not meta_path.is_file():
        raise AdapterError(f"{adapter_dir} is not an adapter folder (no {ADAPTER_FILE})")
    key = (ref.source, str(adir), meta_path.stat().st_mtime_ns, str(dev), str(dt))
    with _ADAPTED_LOCK:
        pipe = _ADAPTED.get(key)
        if pipe is None:
            logger.info("loading %s with adapter %s on %s (%s)", ref.name, adir, dev, dt)
            pipe = load_base(ref, dev, dt)
            attach_adapter(pipe, adir)
            _ADAPTED[key] = pipe
            while len(_ADAPTED) > _ADAPTED_SIZE:
                _ADAPTED.popitem(last=False)
        _ADAPTED.move_to_end(key)
    return pipe


def clear_adapter_cache() -> None:
    """Drop the cached adapter pipelines."""
    with _ADAPTED_LOCK:
        _ADAPTED.clear()


# --------------------------------------------------------------------------- image geometry


def _to_canvas(image: Image.Image, side: int) -> tuple[Image.Image, tuple[int, ...] | None]:
    """Pad ``image`` to a centred square (edge replicated) and resize it to ``side`` px.

    Returns the canvas and the layout ``(left, top, width, height, square)`` to undo it
    (``None`` when the image is already ``side`` x ``side``).
    """
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) == (side, side):
        return image, None
    sq = max(w, h)
    top, left = (sq - h) // 2, (sq - w) // 2
    arr = np.pad(
        np.asarray(image), ((top, sq - h - top), (left, sq - w - left), (0, 0)), mode="edge"
    )
    canvas = Image.fromarray(arr)
    if sq != side:
        canvas = canvas.resize((side, side), Image.BICUBIC)
    return canvas, (left, top, w, h, sq)


def _from_canvas(image: Image.Image, layout: tuple[int, ...] | None) -> Image.Image:
    """Undo :func:`_to_canvas`: resize back to the padded square and crop the source box."""
    if layout is None:
        return image
    left, top, w, h, sq = layout
    if image.size != (sq, sq):
        image = image.resize((sq, sq), Image.BICUBIC)
    return image.crop((left, top, left + w, top + h))


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _to_pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop resize (partners of mixup/cutmix take the source's size)."""
    from PIL import ImageOps

    image = image.convert("RGB")
    return image if image.size == size else ImageOps.fit(image, size, Image.BICUBIC)


# --------------------------------------------------------------------------- denoising core


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
    from diffusers.utils.torch_utils import randn_tensor

    from diffmix.pipeline import vae_precision

    # 1. Check inputs
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
    unet, vae = pipe.unet, pipe.vae
    if unet.config.time_cond_proj_dim is not None:
        raise ValueError("UNets with guidance embeddings (LCM-style) are not supported")
    if n == 0:
        return torch.empty(0, 3, 0, 0)
    device = pipe._execution_device
    do_cfg = guidance_scale > 1.0

    # 2. Encode the prompts (negative prompt: empty, as the pipelines' default)
    cond, uncond = pipe.encode_prompt(list(prompts), device, 1, do_cfg, None)
    dtype = cond.dtype

    # 3. One scheduler per item on the shared grid
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
    grid = schedulers[0].timesteps
    accepts_generator = "generator" in inspect.signature(schedulers[0].step).parameters

    # 4. Prepare latents (per item RNG: posterior sample, then noise -- the pipelines' order)
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
            if steps_run[i] > 0:
                t0 = grid[begins[i] : begins[i] + 1]
                z = schedulers[i].add_noise(z, noise, t0)
            latents[i] = z.to(dtype)
    h = w = unet.config.sample_size
    if idx_i2i:
        h, w = latents[idx_i2i[0]].shape[-2:]
    for i in range(n):
        if images[i] is None:
            shape = (1, unet.config.in_channels, h, w)
            z = randn_tensor(shape, generator=generators[i], device=device, dtype=dtype)
            latents[i] = z * schedulers[i].init_noise_sigma

    # 5. Denoising loop: one UNet call per grid step over the active items
    lat = torch.cat(latents)
    extra = [({"generator": g} if accepts_generator else {}) for g in generators]
    for k, t in enumerate(grid):
        active = [i for i in range(n) if steps_run[i] > 0 and begins[i] <= k]
        if active:
            x = lat[active]
            x_in = torch.cat(
                [schedulers[i].scale_model_input(x[j : j + 1], t) for j, i in enumerate(active)]
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
                lat[i : i + 1] = schedulers[i].step(
                    eps[j : j + 1], t, x[j : j + 1], **extra[i], return_dict=False
                )[0]
        if progress is not None:
            progress(k + 1, len(grid))

    # 6. Decode
    with vae_precision(vae):
        out = vae.decode(lat.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    out = pipe.image_processor.postprocess(out, output_type="pt", do_denormalize=[True] * n)
    return out.float().cpu()


# --------------------------------------------------------------------------- translate


def _check_items(
    items: Sequence[TranslationItem], st: Strategy, class_names: Sequence[str]
) -> None:
    known = ", ".join(class_names)
    for k, it in enumerate(items):
        for what, name in (("target", it.target_class), ("source", it.source_class)):
            if name is not None and name not in class_names:
                raise ValueError(
                    f"unknown {what} class {name!r} (item {k}); known classes: {known}"
                )
        s = it.strength
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 < s <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {s!r} (item {k})")
        if st.generative == "txt2img":
            if s != 1.0:
                raise ValueError(
                    f"{st.name} draws from pure noise: strength must be 1, got {s!r} (item {k})"
                )
            continue
        if it.source is None:
            raise ValueError(f"{st.name} needs a source image (item {k})")
        if it.source_class is None:
            raise ValueError(
                f"{st.name} needs the source class (soft label, target rule) (item {k})"
            )
        if st.target == "other" and it.target_class == it.source_class:
            raise ValueError(
                f"{st.name} translates to another class, but target {it.target_class!r} is the "
                f"source class (item {k}); use {st.name.split('-')[0]}-aug for same-class"
            )
        if st.target == "same" and it.target_class != it.source_class:
            raise ValueError(
                f"{st.name} keeps the source class, but target {it.target_class!r} differs from "
                f"source {it.source_class!r} (item {k})"
            )
        if st.generative == "none" and it.partner is None:
            raise ValueError(f"{st.name} needs a partner image of the target class (item {k})")


def _label(
    it: TranslationItem, weight_strength: float, gamma: float, class_names: Sequence[str]
) -> tuple[dict[str, float], np.ndarray]:
    src = it.source_class if it.source_class is not None else it.target_class
    vec = soft_label(
        class_names.index(src),
        class_names.index(it.target_class),
        weight_strength,
        gamma,
        num_classes=len(class_names),
    )
    return {class_names[c]: float(vec[c]) for c in np.flatnonzero(vec)}, vec


def translate(
    items: Sequence[TranslationItem],
    config: TranslateConfig | None = None,
    *,
    class_names: Sequence[str] | None = None,
    superclass: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> list[Translation]:
    """Translate every item with one strategy; results in input order.

    Args:
        items: the requests (source, classes, strength, seed; partner for mixup/cutmix).
        config: a :class:`TranslateConfig`; keyword ``overrides`` (``strategy=``, ``model=``,
            ``adapter=``, ``num_inference_steps=``, ...) build or update it.
        class_names: the dataset's classes in label order (default: the adapter's).
        superclass: word after the class name in base-model prompts (e.g. ``"bird"``).
        progress: ``progress(done, total)`` over all denoising grid steps of the call.

    Raises:
        ValueError: unknown strategy/class, strength outside (0, 1], missing source/partner,
            a target that breaks the strategy's target rule.
        AdapterError: a personalized strategy without an adapter, an adapter of the wrong
            kind (full vs token-only), base model or class list.
    """
    # 1. Resolve the configuration and the strategy
    if config is None:
        config = TranslateConfig(**overrides)
    elif overrides:
        config = TranslateConfig(**{**config.model_dump(), **overrides})
    st = get_strategy(config.strategy)
    meta = None
    if st.uses_adapter:
        require_adapter(st, config.adapter, how="pass adapter=DIR")
        meta = read_adapter(config.adapter)
        if class_names is None:
            class_names = list(meta.get("class_tokens", {}))
    elif config.adapter:
        logger.info("strategy %s uses no adapter; ignoring %s", st.name, config.adapter)
    if class_names is None:
        raise ValueError(f"strategy {st.name!r} needs class_names (the dataset's classes)")
    class_names = list(class_names)
    if meta is not None:
        check_adapter_for(meta, st, config.model, class_names)

    # 2. Check the items
    _check_items(items, st, class_names)
    if not items:
        return []

    # 3. Classic mixing: no model
    if st.generative == "none":
        return [_mix_one(it, st, config.gamma, class_names) for it in items]

    # 4. Load the pipeline (shared base, or a cached copy with the adapter attached)
    if meta is not None:
        pipe = load_adapted_pipeline(
            config.model, config.adapter, device=config.device, dtype=config.dtype
        )
    else:
        from diffmix.pipeline import load_pipeline

        pipe = load_pipeline(config.model, device=config.device, dtype=config.dtype)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompts = [
        build_prompt(st, it.target_class, adapter_meta=meta, superclass=superclass,
                     template=config.prompt_template)
        for it in items
    ]  # fmt: skip

    # 5. Sample in chunks, each one shared denoising loop
    N = config.num_inference_steps
    n_chunks = math.ceil(len(items) / config.batch_size)
    logger.info(
        "translating %d item(s) with %s: %d step grid, %d chunk(s)",
        len(items), st.name, N, n_chunks,
    )  # fmt: skip
    results: list[Translation] = []
    for c in range(n_chunks):
        chunk = list(range(c * config.batch_size, min(len(items), (c + 1) * config.batch_size)))
        canvases, layouts = [], []
        for i in chunk:
            if st.generative == "txt2img":
                canvases.append(None)
                layouts.append(None)
            else:
                canvas, layout = _to_canvas(items[i].source, side)
                canvases.append(canvas)
                layouts.append(layout)
        chunk_progress = None
        if progress is not None:
            chunk_progress = lambda d, t, c=c: progress(c * t + d, n_chunks * t)  # noqa: E731
        pixels = denoise_batch(
            pipe,
            [prompts[i] for i in chunk],
            canvases,
            [float(items[i].strength) for i in chunk],
            [torch.Generator(device="cpu").manual_seed(int(items[i].seed)) for i in chunk],
            num_inference_steps=N,
            guidance_scale=config.guidance_scale,
            progress=chunk_progress,
        )
        for j, i in enumerate(chunk):
            it = items[i]
            arr = pixels[j].permute(1, 2, 0).numpy()
            label, vec = _label(it, float(it.strength), config.gamma, class_names)
            results.append(
                Translation(
                    image=_from_canvas(_to_pil(arr), layouts[j]),
                    pixels=arr,
                    source_class=it.source_class,
                    target_class=it.target_class,
                    strength=float(it.strength),
                    seed=int(it.seed),
                    strategy=st.name,
                    prompt=prompts[i],
                    soft_label=label,
                    label_vector=vec,
                    steps_run=N if st.generative == "txt2img" else img2img_start(N, it.strength)[1],
                )
            )
    return results


def _mix_one(
    it: TranslationItem, st: Strategy, gamma: float, class_names: Sequence[str]
) -> Translation:
    """Mixup / CutMix of ``it.source`` with ``it.partner`` (resized to the source's size).

    The label is linear in the target's pixel share (γ = 1, as the classic methods): ``lam``
    for mixup, the exact box area for CutMix. ``gamma`` is unused (kept for one signature).
    """
    del gamma
    src = it.source.convert("RGB")
    a = _to_float(src)
    b = _to_float(_fit(it.partner, src.size))
    lam = float(it.strength)
    if st.name == "mixup":
        out = mixup_pixels(a, b, lam)
        share = lam
    else:
        box = cutmix_box(src.height, src.width, lam, torch.Generator().manual_seed(int(it.seed)))
        out = a.copy()
        out[box.top : box.bottom, box.left : box.right] = b[
            box.top : box.bottom, box.left : box.right
        ]
        share = box.share(src.height, src.width)
    label, vec = _label(it, share, 1.0, class_names)
    return Translation(
        image=_to_pil(out),
        pixels=out.astype(np.float32),
        source_class=it.source_class,
        target_class=it.target_class,
        strength=lam,
        seed=int(it.seed),
        strategy=st.name,
        prompt="",
        soft_label=label,
        label_vector=vec,
        steps_run=0,
    )
