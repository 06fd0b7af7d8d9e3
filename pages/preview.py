"""The translation preview shared by the Translate page and the Generate page's probe.

:func:`run_translation` translates one source at each strength (and each seed of a grid) of a
checked :class:`Request` in one batched call of :func:`diffmix.translate.translate` (on ZeroGPU
it holds a GPU slot, :mod:`pages.zerogpu`); :func:`translate_config` is the request's core
config; :func:`display` enlarges a small image for the page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from diffmix.config import field_default
from diffmix.data import ImageDataset
from diffmix.translate import TranslateConfig
from pages import zerogpu

#: Smallest side the pages display images at (small images are enlarged, pixels kept sharp).
DISPLAY_SIDE = 256
#: Guidance weight shown first: the config's default, 7.5 (the authors', a81337b:augmentation/
#: diff_mix.py:86; also diffusers' img2img default).
DEFAULT_GUIDANCE = field_default(TranslateConfig, "guidance_scale")
#: Denoising steps when the box is empty: the config's default (one place for it).
DEFAULT_STEPS = field_default(TranslateConfig, "num_inference_steps")
ProgressFn = Callable[..., Any]


@dataclass
class Request:
    """A checked translation request: what :func:`run_translation` needs."""

    ds: ImageDataset
    source: Image.Image | None
    source_class: str | None
    target_class: str
    strengths: list[float]
    seed: int
    strategy: str
    model: str
    adapter: str | None
    steps: int
    partner: Image.Image | None = None
    #: classifier-free guidance weight (the core's default: 7.5, the authors').
    guidance: float = DEFAULT_GUIDANCE
    #: the typed prompt as a template (:func:`diffmix.translate.template_from_prompt`); None =
    #: the strategy's own prompt.
    prompt_template: str | None = None
    #: a grid's seeds (rows; ``None``: the one ``seed``); columns are ``strengths``.
    seeds: list[int] | None = None
    source_index: int | None = None
    partner_index: int | None = None
    selection: dict[str, Any] | None = None

    @property
    def row_seeds(self) -> list[int]:
        """The seeds of the rows (one row of ``seed`` for a plain preview)."""
        return list(self.seeds) if self.seeds else [self.seed]


@dataclass
class Preview:
    """Results of one request, with scores once :func:`score_translation` ran."""

    request: Request
    results: list[Any]
    seconds: float
    faithfulness: list[float] | None = None
    diversity: list[float] | None = None
    metric: str = ""
    judge: str = ""
    score_seconds: float = 0.0


def translate_config(request: Request) -> TranslateConfig:
    """The core :class:`~diffmix.translate.TranslateConfig` of a request."""
    r = request
    return TranslateConfig(strategy=r.strategy, model=r.model, adapter=r.adapter,
                           num_inference_steps=r.steps, guidance_scale=r.guidance,
                           prompt_template=r.prompt_template)  # fmt: skip


def _preview_duration(request: Request, progress: ProgressFn | None = None) -> int:
    n = len(request.strengths) * len(request.row_seeds)
    return zerogpu.preview_seconds(n, request.steps or DEFAULT_STEPS)


@zerogpu.gpu_call(_preview_duration)
def run_translation(request: Request, progress: ProgressFn | None = None) -> Preview:
    """Translate the request's source at each of its strengths: one batched core call.

    On a ZeroGPU Space this call holds a GPU slot for at most ``_preview_duration`` seconds.
    """
    from diffmix.grid import grid_items
    from diffmix.translate import translate

    r = request
    items = grid_items(r.source, r.source_class, r.target_class, r.strengths, r.row_seeds,
                       r.partner)  # fmt: skip
    cfg = translate_config(r)
    cb = None
    if progress is not None:
        cb = lambda d, t: progress(d / max(t, 1), desc=f"denoising {d}/{t}")  # noqa: E731
    t0 = time.perf_counter()
    results = translate(items, cfg, class_names=r.ds.class_names, superclass=r.ds.superclass,
                        progress=cb)  # fmt: skip
    return Preview(r, results, time.perf_counter() - t0)


def display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """A copy enlarged to at least ``side`` px (nearest neighbour: pixels stay visible)."""
    w, h = image.size
    scale = max(1, side // max(1, min(w, h)))
    return image if scale == 1 else image.resize((w * scale, h * scale), Image.NEAREST)
