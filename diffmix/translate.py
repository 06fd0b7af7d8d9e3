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

Public API: :class:`TranslateConfig`, :class:`TranslationItem`, :class:`Translation`,
:func:`translate`, :func:`load_adapted_pipeline`. Re-exported (same objects, former import paths
keep working): the strategy table :class:`Strategy`, :data:`STRATEGIES`, :func:`get_strategy`,
``StrategyName`` from :mod:`diffmix.strategies` (no torch); :func:`build_prompt`,
:func:`prompt_word`, :func:`template_from_prompt` (a user's prompt) from :mod:`diffmix.prompts`
(no torch); the shared-grid sampler :func:`denoise_batch`, :func:`img2img_start` from
:mod:`diffmix.sampler`. The soft label is :func:`diffmix.labels.soft_label` (re-exported here as
:func:`soft_label`); mixup/cutmix are :mod:`diffmix.mixing`. Each :class:`Translation` names its
``label_rule``.

Over 400 lines (about fifty of them this docstring) because what is left is one request -> result
contract: the config, the items and results, the adapted-pipeline cache, the padding of sources
to the model's square and back, and the labels of one :func:`translate` call.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ConfigDict, Field

from diffmix.adapter import (
    ADAPTER_FILE,
    AdapterError,
    attach_adapter,
    check_adapter_for,
    check_prompt_template,  # noqa: F401 -- importable here before diffmix.prompts existed
    read_adapter,
    require_adapter,
)
from diffmix.config import Device, Dtype, StageConfig
from diffmix.labels import label_rule_for, soft_label
from diffmix.mixing import cutmix_box, mixup_pixels
from diffmix.prompts import build_prompt, prompt_word, template_from_prompt
from diffmix.sampler import denoise_batch, img2img_start
from diffmix.strategies import STRATEGIES, Strategy, StrategyName, get_strategy

__all__ = [
    "STRATEGIES",
    "Strategy",
    "StrategyName",
    "TranslateConfig",
    "Translation",
    "TranslationItem",
    "build_prompt",
    "clear_adapter_cache",
    "denoise_batch",
    "get_strategy",
    "img2img_start",
    "load_adapted_pipeline",
    "prompt_word",
    "soft_label",
    "template_from_prompt",
    "translate",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- config & items


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
    config, st, meta, class_names = _resolve(config, overrides, class_names)
    _check_items(items, st, class_names)
    if not items:
        return []
    if st.generative == "none":  # classic mixing: no model
        return [_mix_one(it, st, config.gamma, class_names) for it in items]
    pipe = _pipeline_for(config, meta)
    prompts = [
        build_prompt(st, it.target_class, adapter_meta=meta, superclass=superclass,
                     template=config.prompt_template)
        for it in items
    ]  # fmt: skip
    # Sample in chunks of batch_size, each one shared denoising loop
    n_chunks = math.ceil(len(items) / config.batch_size)
    logger.info(
        "translating %d item(s) with %s: %d step grid, %d chunk(s)",
        len(items), st.name, config.num_inference_steps, n_chunks,
    )  # fmt: skip
    results: list[Translation] = []
    for c in range(n_chunks):
        chunk = list(range(c * config.batch_size, min(len(items), (c + 1) * config.batch_size)))
        chunk_progress = None
        if progress is not None:
            chunk_progress = lambda d, t, c=c: progress(c * t + d, n_chunks * t)  # noqa: E731
        results += _translate_chunk(
            pipe, [items[i] for i in chunk], [prompts[i] for i in chunk], st, config,
            class_names, chunk_progress,
        )  # fmt: skip
    return results


def _resolve(
    config: TranslateConfig | None,
    overrides: dict[str, Any],
    class_names: Sequence[str] | None,
) -> tuple[TranslateConfig, Strategy, dict | None, list[str]]:
    """``(config, strategy, adapter meta or None, class names)`` of a :func:`translate` call:
    the overrides applied, the adapter read and checked against the strategy, model and
    classes (``ValueError`` / ``AdapterError`` otherwise)."""
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
    return config, st, meta, class_names


def _pipeline_for(config: TranslateConfig, meta: dict | None):
    """The shared base pipeline, or a cached copy with the adapter attached."""
    if meta is not None:
        return load_adapted_pipeline(
            config.model, config.adapter, device=config.device, dtype=config.dtype
        )
    from diffmix.pipeline import load_pipeline

    return load_pipeline(config.model, device=config.device, dtype=config.dtype)


def _translate_chunk(
    pipe,
    items: Sequence[TranslationItem],
    prompts: Sequence[str],
    st: Strategy,
    config: TranslateConfig,
    class_names: Sequence[str],
    progress: Callable[[int, int], None] | None,
) -> list[Translation]:
    """One chunk through one :func:`denoise_batch` call: sources padded to the model's square
    (text-to-image items have none), results un-padded to the source's size and labelled."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    N = config.num_inference_steps
    canvases, layouts = [], []
    for it in items:
        if st.generative == "txt2img":
            canvases.append(None)
            layouts.append(None)
        else:
            canvas, layout = _to_canvas(it.source, side)
            canvases.append(canvas)
            layouts.append(layout)
    pixels = denoise_batch(
        pipe,
        list(prompts),
        canvases,
        [float(it.strength) for it in items],
        [torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in items],
        num_inference_steps=N,
        guidance_scale=config.guidance_scale,
        progress=progress,
    )
    results = []
    for j, it in enumerate(items):
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
                prompt=prompts[j],
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
