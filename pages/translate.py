"""Translate page: preview one inter-class translation, or a sweep of strengths, in-process.

Pick a source (an image of the Dataset page's selection, or an upload), a target class, a
strength and a strategy; the page calls :func:`diffmix.translate.translate` directly (models
come from the core's module-level caches, never from page state) and shows source and result
side by side with the soft label, then the scores: faithfulness (the reference classifier's
probability of the target class) and diversity (distance from the source), from
:mod:`diffmix.score`. A *sweep* translates one source at five strengths in one batched call and
draws faithfulness and diversity against strength.

Plain functions (:func:`source_gallery`, :func:`build_request`, :func:`run_translation`,
:func:`score_translation`, :func:`sweep_figure`, ...) are tested directly; the listeners
(``/translate``, ``/translate_sweep``, ``/translate_open``) only format their results.

Run alone with ``python pages/translate.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix.data import ImageDataset  # noqa: E402
from diffmix.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, open_rgb  # noqa: E402
from diffmix.settings import Settings, check_limit  # noqa: E402
from pages import common, jobs_ui, personalize, zerogpu  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "Translate"
PATH = "translate"
SWEEP_STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
SOURCE_MODES = ("Dataset image", "Upload")
#: Smallest side the page displays images at (small images are enlarged, pixels kept sharp).
DISPLAY_SIDE = 256
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


# --------------------------------------------------------------------------- plain functions


def strategy_names() -> list[str]:
    """Every translation strategy, in the core's table order."""
    from diffmix.translate import STRATEGIES

    return list(STRATEGIES)


def default_strategy(adapter: dict[str, Any] | None) -> str:
    """``diff-mix`` when an adapter is chosen (``ti-mix`` for a token-only one), else ``real-mix``."""
    if adapter and adapter.get("name"):
        return "ti-mix" if adapter.get("ti_only") else "diff-mix"
    return "real-mix"


def source_gallery(
    ds: ImageDataset, indices: Sequence[int], *, per_class: int = 4, max_images: int = 48
) -> tuple[list[tuple[Image.Image, str]], list[int]]:
    """Thumbnails of up to ``per_class`` images per class and their dataset indices."""
    per_class = max(1, min(per_class, max_images // max(1, ds.num_classes)))
    by_class: dict[int, list[int]] = {}
    for i in indices:
        picked = by_class.setdefault(ds.items[i].label, [])
        if len(picked) < per_class:
            picked.append(i)
    chosen = [i for label in sorted(by_class) for i in by_class[label]][:max_images]
    thumbs = []
    for i in chosen:
        img = ds.image(i).copy()
        img.thumbnail((128, 128))
        thumbs.append((img, f"#{i} {ds.class_names[ds.items[i].label]}"))
    return thumbs, chosen


def other_class(class_names: Sequence[str], source_class: str | None) -> str:
    """A default target: the class after the source class (wrapping)."""
    if not class_names:
        raise ValueError("the dataset has no classes")
    if source_class not in class_names:
        return class_names[0]
    return class_names[(list(class_names).index(source_class) + 1) % len(class_names)]


def build_request(
    selection: dict[str, Any] | None,
    adapter: dict[str, Any] | None,
    *,
    source_mode: str,
    source_index: float | None,
    upload: str | os.PathLike | None,
    source_class: str | None,
    target_class: str | None,
    strengths: Sequence[float],
    strategy: str | None,
    seed: float | None,
    steps: float | None,
    settings: Settings,
    owner: str | None = None,
) -> Request:
    """Check the page's values and turn them into a :class:`Request` (``ValueError`` if bad)."""
    from diffmix.translate import get_strategy

    # 1. Bounded work first (nothing is loaded for a refused request), then dataset,
    #    strategy, model and adapter.
    check_limit("steps", _whole(steps, "steps", 25, minimum=1), "max_sampling_steps", settings,
                stage="translate")  # fmt: skip
    ds, subset = common.open_selection(selection, settings)
    st = get_strategy(strategy or default_strategy(adapter))
    model, adapter_dir = settings.model, None
    if st.uses_adapter:
        found = personalize.resolve_adapter(adapter, owner=owner, settings=settings)
        if found is None:
            alt = st.name.replace("diff-", "real-").replace("ti-", "real-")
            raise ValueError(
                f"strategy {st.name!r} needs an adapter: choose one on the Personalize page, "
                f"or use {alt!r} (base model)"
            )
        adapter_dir, meta = str(found[0]), found[1]
        model = str(meta.get("base_model") or settings.model)
    if target_class not in ds.class_names:
        raise ValueError(f"choose a target class (one of {', '.join(ds.class_names)})")
    seed_i = _whole(seed, "seed", 0)
    steps_i = _whole(steps, "steps", 25, minimum=1)
    # 2. Source image and class (none for text-to-image strategies).
    source, src_class = None, None
    if st.generative != "txt2img":
        if source_mode == "Upload":
            if upload is None:
                raise ValueError("upload a source image first (or pick one from the dataset)")
            if source_class not in ds.class_names:
                raise ValueError("choose the class of the uploaded image (Source class)")
            source, src_class = open_upload(upload), source_class
        else:
            index = _whole(source_index, "source index", None)
            if index is None or not 0 <= index < len(ds):
                raise ValueError("pick a source image in the gallery first")
            source, src_class = ds.image(index), ds.class_names[ds.items[index].label]
    # 3. Strengths (text-to-image: 1), partner image for mixup / cutmix.
    values = [float(s) for s in strengths]
    if st.generative == "txt2img":
        values = [1.0]
    bad = [s for s in values if not 0.0 < s <= 1.0]
    if bad:
        raise ValueError(f"strength must be in (0, 1], got {bad[0]}")
    partner = None
    if st.generative == "none":
        pool_ids = subset.indices if subset is not None else range(len(ds))
        pool = [i for i in pool_ids if ds.class_names[ds.items[i].label] == target_class]
        if not pool:
            raise ValueError(f"no image of {target_class!r} in the selection to mix with")
        partner = ds.image(random.Random(seed_i).choice(pool))
    return Request(ds, source, src_class, str(target_class), values, seed_i, st.name, model,
                   adapter_dir, steps_i, partner)  # fmt: skip


def open_upload(upload: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded source image (a file path) with the guarded decoder.

    :func:`diffmix.data.images.open_rgb` checks ``max_pixels`` (width * height, default 64
    megapixels, the dataset loader's limit) from the header before any pixel is decoded, so a
    small file declaring a huge size (a decompression bomb) is refused without being decoded.
    The message names the reason only, never the server path of the upload.
    """
    if isinstance(upload, Image.Image):
        raise TypeError("open_upload takes the uploaded file's path, not a decoded image")
    try:
        return open_rgb(upload, max_pixels=max_pixels)
    except ImageDecodeError as err:
        raise ValueError(f"the uploaded image cannot be used: {err.reason}") from None
    except FileNotFoundError:
        raise ValueError("the uploaded image is gone from the server; upload it again") from None


def _preview_duration(request: Request, progress: ProgressFn | None = None) -> int:
    return zerogpu.preview_seconds(len(request.strengths), request.steps or 25)


@zerogpu.gpu_call(_preview_duration)
def run_translation(request: Request, progress: ProgressFn | None = None) -> Preview:
    """Translate the request's source at each of its strengths: one batched core call.

    On a ZeroGPU Space this call holds a GPU slot for at most ``_preview_duration`` seconds.
    """
    from diffmix.translate import TranslateConfig, TranslationItem, translate

    r = request
    items = [
        TranslationItem(r.source, r.source_class, r.target_class, s, r.seed, r.partner)
        for s in r.strengths
    ]
    cfg = TranslateConfig(strategy=r.strategy, model=r.model, adapter=r.adapter,
                          num_inference_steps=r.steps)  # fmt: skip
    cb = None
    if progress is not None:
        cb = lambda d, t: progress(d / max(t, 1), desc=f"denoising {d}/{t}")  # noqa: E731
    t0 = time.perf_counter()
    results = translate(items, cfg, class_names=r.ds.class_names, superclass=r.ds.superclass,
                        progress=cb)  # fmt: skip
    return Preview(r, results, time.perf_counter() - t0)


@zerogpu.gpu_call(30)
def score_translation(preview: Preview) -> Preview:
    """Fill in faithfulness and diversity (the reference classifier is fitted once per dataset)."""
    from diffmix import score

    r = preview.request
    t0 = time.perf_counter()
    clf = score.reference_classifier(r.ds)
    images = [t.image for t in preview.results]
    preview.faithfulness = [float(x) for x in score.faithfulness(clf, images, [r.target_class] * len(images))]  # fmt: skip
    if r.source is not None:
        div = score.diversity_from_source(clf, images, [r.source] * len(images))
        preview.diversity = [float(x) for x in div]
        preview.metric = score.diversity_metric(clf)
    preview.judge = (
        f"{clf.judge} judge, {clf.train_images} labelled images" if clf.train_images else clf.judge
    )
    preview.score_seconds = time.perf_counter() - t0
    return preview


def scores_markdown(preview: Preview, k: int = 0) -> str:
    """The scores of result ``k`` as one Markdown paragraph."""
    n = len(preview.request.ds.class_names)
    if preview.faithfulness is None:
        from diffmix import score

        if score.judge_ready(preview.request.ds):
            return "Scoring…"
        return (
            "Scoring… (the reference classifier of this dataset is still being fitted in the "
            "background, once per dataset: the scores follow when it is ready; you can keep "
            "translating meanwhile)"
        )
    text = (
        f"**Faithfulness {preview.faithfulness[k]:.3f}**: the reference classifier's "
        f"probability of *{preview.request.target_class}* (chance {1 / n:.3f}"
        + (f"; {preview.judge}" if preview.judge else "")
        + ")."
    )
    if preview.diversity is not None:
        text += (
            f" **Diversity {preview.diversity[k]:.3f}**: distance from the source "
            f"({preview.metric}; 0 = unchanged)."
        )
    return text


def timing_line(preview: Preview) -> str:
    """How long the call took, and what it ran."""
    r = preview.results[0] if preview.results else None
    runs = sorted({t.steps_run for t in preview.results})
    ran = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]}–{runs[-1]}"
    steps = f", {ran} of {preview.request.steps} denoising steps" if r else ""
    scored = f"; scores {preview.score_seconds:.2f} s" if preview.faithfulness else ""
    return (
        f"{preview.request.strategy} · {len(preview.results)} image(s) in "
        f"{preview.seconds:.2f} s{steps}{scored}. Prompt: “{r.prompt if r else ''}”"
    )


def sweep_figure(
    strengths: Sequence[float],
    faithfulness: Sequence[float] | None,
    diversity: Sequence[float] | None,
    *,
    chance: float | None = None,
) -> go.Figure:
    """Faithfulness and diversity against strength (the Diff-Mix trade-off)."""
    fig = go.Figure()
    if faithfulness is not None:
        fig.add_scatter(x=list(strengths), y=list(faithfulness), mode="lines+markers",
                        name="faithfulness", line={"color": "#1e88e5"})  # fmt: skip
    if diversity is not None:
        fig.add_scatter(x=list(strengths), y=list(diversity), mode="lines+markers",
                        name="diversity", line={"color": "#fb8c00"})  # fmt: skip
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="#90a4ae",
                      annotation_text="chance", annotation_position="bottom right")  # fmt: skip
    fig.update_layout(
        title="Faithfulness and diversity against strength",
        height=340,
        margin={"l": 50, "r": 20, "t": 50, "b": 45},
        xaxis={"title": "strength s", "range": [0, 1]},
        yaxis={"title": "score", "range": [0, 1.02]},
        template="plotly_white",
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )
    return fig


def display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """A copy enlarged to at least ``side`` px (nearest neighbour: pixels stay visible)."""
    w, h = image.size
    scale = max(1, side // max(1, min(w, h)))
    return image if scale == 1 else image.resize((w * scale, h * scale), Image.NEAREST)


def _whole(value: Any, name: str, default: int | None, *, minimum: int = 0) -> int | None:
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number != int(number) or number < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(number)


class PreviewStore:
    """Previews shown but not yet scored, by token; scored by a separate event.

    The image event returns at once with a token; the scoring event (its own queue) looks the
    preview up. ``slot`` (a browser session and a widget) remembers the latest token: a
    preview that a newer one replaced is not scored (its scores would overwrite the newer
    image's). Bounded: the oldest entries are dropped beyond ``capacity``.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str, Preview]] = OrderedDict()
        self._latest: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, preview: Preview, slot: str) -> str:
        """Keep ``preview`` as the latest of ``slot``; its token."""
        token = uuid.uuid4().hex
        with self._lock:
            self._items[token] = (slot, preview)
            self._latest[slot] = token
            while len(self._items) > self.capacity:
                old, (old_slot, _) = self._items.popitem(last=False)
                if self._latest.get(old_slot) == old:
                    del self._latest[old_slot]
        return token

    def latest(self, token: str | None) -> Preview | None:
        """The preview of ``token`` while it is still its slot's latest, else ``None``."""
        with self._lock:
            item = self._items.get(token or "")
            if item is None or self._latest.get(item[0]) != token:
                return None
            return item[1]

    def drop(self, token: str | None) -> None:
        """Forget ``token`` (scored or abandoned)."""
        with self._lock:
            item = self._items.pop(token or "", None)
            if item is not None and self._latest.get(item[0]) == token:
                del self._latest[item[0]]


PREVIEWS = PreviewStore()


def _slot(request: gr.Request | None, kind: str) -> str:
    """One browser session's widget; a call without a session (the API) is its own slot."""
    session = getattr(request, "session_hash", None) or uuid.uuid4().hex
    return f"{session}:{kind}"


def warm_judge(ds: ImageDataset) -> None:
    """Start loading / fitting ``ds``'s reference classifier in the background."""
    from diffmix import score

    score.warm_reference_classifier(ds)


# --------------------------------------------------------------------------- callbacks


def _request(settings: Settings, values: tuple, strengths: Sequence[float]) -> Request:
    (selection, adapter, owner, source_mode, source_index, upload, source_class, target,
     strategy, seed, steps) = values  # fmt: skip
    return build_request(
        selection, adapter, source_mode=source_mode, source_index=source_index, upload=upload,
        source_class=source_class, target_class=target, strengths=strengths, strategy=strategy,
        seed=seed, steps=steps, settings=settings, owner=owner,
    )  # fmt: skip


def _releasing(listener: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``listener`` that hands the memory its call freed back to the system when it ends.

    A preview frees large buffers (latents, decoded images) in whichever worker thread ran it;
    without :func:`pages.common.release_memory` the server's resident memory crept up call
    after call (benchmarks/preview_memory.py). The signature is kept for Gradio.
    """

    @functools.wraps(listener)
    def run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from listener(*args, **kwargs)
        finally:
            common.release_memory()

    return run


def _translate_image(settings: Settings):
    def translate_image(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        source_mode: str,
        source_index: float | None,
        upload: Image.Image | None,
        source_class: str | None,
        target: str | None,
        strategy: str | None,
        seed: float | None,
        steps: float | None,
        strength: float,
        request: gr.Request = None,  # type: ignore[assignment]
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        """Translate the source to the target class at one strength: the image at once, and a
        token the scoring event (:func:`_score_one`) fills the scores in with."""
        values = (selection, adapter, owner, source_mode, source_index, upload, source_class,
                  target, strategy, seed, steps)  # fmt: skip
        try:
            preview = run_translation(_request(settings, values, [strength]), progress)
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            logger.info("translate refused: %s", err)
            msg = common.error_box(jobs_ui.readable_error(err), settings)
            return gr.skip(), gr.skip(), gr.skip(), msg, ""
        finally:
            common.release_memory()  # the call's freed buffers back to the system
        warm_judge(preview.request.ds)
        res = preview.results[0]
        src = preview.request.source or res.image
        token = PREVIEWS.put(preview, _slot(request, "one"))
        return ((display(src), display(res.image)), res.soft_label, scores_markdown(preview),
                common.info_box(timing_line(preview), settings), token)  # fmt: skip

    return translate_image


def _score_one(token: str | None) -> tuple[Any, ...]:
    """Scores of the preview ``token`` names, unless a newer preview replaced it."""
    preview = PREVIEWS.latest(token)
    if preview is None:
        return gr.skip(), gr.skip()
    try:
        score_translation(preview)
    except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
        return common.error_box(f"scoring failed: {err}"), gr.skip()
    if PREVIEWS.latest(token) is None:  # replaced while it was scored
        return gr.skip(), gr.skip()
    PREVIEWS.drop(token)
    return scores_markdown(preview), common.info_box(timing_line(preview))


def _translate_action(settings: Settings):
    image = _translate_image(settings)

    def translate_one(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        source_mode: str,
        source_index: float | None,
        upload: str | None,
        source_class: str | None,
        target: str | None,
        strategy: str | None,
        seed: float | None,
        steps: float | None,
        strength: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple[Any, ...]]:
        """Translate the source to the target class at one strength; the image, then scores.

        The API endpoint (``/translate``): one call gives both. The page itself shows the
        image from :func:`_translate_image` and scores it in a separate event.
        """
        *first, token = image(selection, adapter, owner, source_mode, source_index, upload,
                              source_class, target, strategy, seed, steps, strength,
                              None, progress)  # fmt: skip
        yield tuple(first)
        if not token:
            return
        with_scores = _score_one(token)
        yield first[0], first[1], *with_scores

    return _releasing(translate_one)


def _sweep_gallery(preview: Preview) -> list[tuple[Image.Image, str]]:
    req = preview.request
    out = [(display(req.source, 128), "source")] if req.source is not None else []
    for k, t in enumerate(preview.results):
        cap = f"s={t.strength:.1f}"
        if preview.faithfulness is not None:
            cap += f" · f={preview.faithfulness[k]:.2f}"
        if preview.diversity is not None:
            cap += f" · d={preview.diversity[k]:.2f}"
        out.append((display(t.image, 128), cap))
    return out


def _sweep_images(settings: Settings):
    def translate_sweep_images(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        source_mode: str,
        source_index: float | None,
        upload: Image.Image | None,
        source_class: str | None,
        target: str | None,
        strategy: str | None,
        seed: float | None,
        steps: float | None,
        request: gr.Request = None,  # type: ignore[assignment]
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        """Translate one source at strengths 0.1 … 0.9 in one call: the images, and a token
        for the scoring event (:func:`_score_sweep`)."""
        values = (selection, adapter, owner, source_mode, source_index, upload, source_class,
                  target, strategy, seed, steps)  # fmt: skip
        try:
            req = _request(settings, values, SWEEP_STRENGTHS)
            if len(req.strengths) < 2:
                raise ValueError(f"{req.strategy} draws from pure noise: a strength sweep needs "
                                 "an img2img or mixing strategy")  # fmt: skip
            preview = run_translation(req, progress)
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            logger.info("sweep refused: %s", err)
            msg = common.error_box(jobs_ui.readable_error(err), settings)
            return gr.skip(), gr.skip(), msg, ""
        finally:
            common.release_memory()
        warm_judge(req.ds)
        token = PREVIEWS.put(preview, _slot(request, "sweep"))
        wait = scores_markdown(preview)
        return (_sweep_gallery(preview), gr.skip(),
                common.info_box(f"{timing_line(preview)} {wait}", settings), token)  # fmt: skip

    return translate_sweep_images


def _score_sweep(token: str | None) -> tuple[Any, ...]:
    """Captions with scores and the score curves of the sweep ``token`` names."""
    preview = PREVIEWS.latest(token)
    if preview is None:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        score_translation(preview)
    except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
        return gr.skip(), gr.skip(), common.error_box(f"scoring failed: {err}")
    if PREVIEWS.latest(token) is None:
        return gr.skip(), gr.skip(), gr.skip()
    PREVIEWS.drop(token)
    req = preview.request
    chance = 1 / len(req.ds.class_names)
    fig = sweep_figure(req.strengths, preview.faithfulness, preview.diversity, chance=chance)
    return _sweep_gallery(preview), fig, common.info_box(timing_line(preview))


def _sweep_action(settings: Settings):
    images = _sweep_images(settings)

    def translate_sweep(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        source_mode: str,
        source_index: float | None,
        upload: str | None,
        source_class: str | None,
        target: str | None,
        strategy: str | None,
        seed: float | None,
        steps: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple[Any, ...]]:
        """Translate one source at strengths 0.1 … 0.9 in one call; images, then the score curves
        (the API endpoint ``/translate_sweep``; the page scores in a separate event)."""
        *first, token = images(selection, adapter, owner, source_mode, source_index, upload,
                               source_class, target, strategy, seed, steps, None,
                               progress)  # fmt: skip
        yield tuple(first)
        if token:
            yield _score_sweep(token)

    return _releasing(translate_sweep)


def _open_action(settings: Settings):
    def translate_open(
        selection: dict | None, adapter: dict | None, owner: str | None
    ) -> tuple[Any, ...]:
        """The selection's source gallery, class choices and the default strategy."""
        adapter = personalize.carry_adapter(adapter, selection, owner=owner, settings=settings)
        strategy = gr.update(value=default_strategy(adapter))
        line = personalize.selection_line(selection) + " " + personalize.adapter_line(adapter)
        try:
            ds, subset = common.open_selection(selection, settings)
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            keep = gr.skip()
            msg = common.error_box(jobs_ui.readable_error(err), settings)
            return line, keep, keep, keep, keep, keep, keep, strategy, msg, adapter
        warm_judge(ds)  # the first score then needs no fit (or only the rest of one)
        indices = list(subset.indices) if subset is not None else list(range(len(ds)))
        thumbs, chosen = source_gallery(ds, indices)
        first = chosen[0] if chosen else None
        src_class = ds.class_names[ds.items[first].label] if first is not None else None
        names = list(ds.class_names)
        return (
            line,
            thumbs,
            chosen,
            first,
            display(ds.image(first)) if first is not None else None,
            gr.update(choices=names, value=src_class),
            gr.update(choices=names, value=other_class(names, src_class)),
            strategy,
            "",
            adapter,
        )

    return translate_open


def _pick_source(settings: Settings):
    def pick(
        selection: dict | None, indices: list[int] | None, target: str | None,
        evt: gr.SelectData,
    ) -> tuple[Any, ...]:  # fmt: skip
        """A gallery click: that image becomes the source (and the target moves off its class)."""
        try:
            ds, _ = common.open_selection(selection, settings)
            index = int((indices or [])[evt.index])
        except (*jobs_ui.USER_ERRORS, IndexError, TypeError):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        cls = ds.class_names[ds.items[index].label]
        new_target = other_class(ds.class_names, cls) if target in (None, cls) else target
        return index, display(ds.image(index)), gr.update(value=cls), gr.update(value=new_target)

    return pick


def _mode_visibility(mode: str) -> tuple[Any, Any]:
    return gr.update(visible=mode != "Upload"), gr.update(visible=mode == "Upload")


# --------------------------------------------------------------------------- layout


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Translate page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        adapter = common.adapter_state()
        owner = common.owner_state()
        # Hidden JSON, not gr.State (a gr.State keeps a heartbeat connection open app-wide).
        indices = gr.JSON([], visible=False)
        gr.Markdown(
            "## 3 · Translate\nMove a real image of one class toward another class. Low "
            "strength keeps the source (diverse backgrounds), high strength draws the target "
            "(faithful foreground); the soft label mixes both classes as s^γ."
        )
        current = gr.Markdown(personalize.selection_line(None), elem_id="tr-selection")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                mode = gr.Radio(list(SOURCE_MODES), value=SOURCE_MODES[0], label="Source",
                                elem_id="tr-source-mode")  # fmt: skip
                with gr.Group() as pick_box:
                    gallery = gr.Gallery(
                        label="Pick a source image", columns=6, height=300, allow_preview=False,
                        object_fit="contain", elem_id="tr-gallery",
                    )  # fmt: skip
                    source_index = gr.Number(None, label="Source index (train split)",
                                             precision=0, elem_id="tr-source-index")  # fmt: skip
                # The file reaches the listener unread; open_upload decodes it with the limit.
                upload = common.uploaded_image(label="Upload a source image", sources=["upload"],
                                               visible=False, height=220, elem_id="tr-upload")  # fmt: skip
                with gr.Row():
                    source_class = gr.Dropdown(
                        [], allow_custom_value=True, label="Source class", elem_id="tr-source-class"
                    )
                    target = gr.Dropdown(
                        [], allow_custom_value=True, label="Target class", elem_id="tr-target"
                    )
                strategy = gr.Dropdown(strategy_names(), value="real-mix", label="Strategy",
                                       elem_id="tr-strategy")  # fmt: skip
                strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Strength s",
                                     elem_id="tr-strength")  # fmt: skip
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="tr-seed")
                    steps = gr.Number(25, label="Denoising steps (at s = 1)", precision=0,
                                      minimum=1, elem_id="tr-steps",
                                      maximum=settings.limits.max_sampling_steps or None)  # fmt: skip
                with gr.Row():
                    go_btn = gr.Button("Translate", variant="primary", elem_id="tr-go")
                    sweep_btn = gr.Button("Sweep 0.1 … 0.9", elem_id="tr-sweep")
            with gr.Column(scale=2):
                with gr.Row(equal_height=False):
                    source_view = gr.Image(label="Source", type="pil", interactive=False,
                                           height=300, elem_id="tr-source")  # fmt: skip
                    # max_height (not height) keeps the whole image in view, scaled
                    result = gr.ImageSlider(label="Source ↔ result", type="pil", max_height=300,
                                            interactive=False, elem_id="tr-result")  # fmt: skip
                with gr.Row(equal_height=False):
                    label = gr.Label(label="Soft label", num_top_classes=3, elem_id="tr-label")
                    scores = gr.Markdown(elem_id="tr-scores")
                info = gr.Markdown(elem_id="tr-info")
        gr.Markdown("### Strength sweep")
        with gr.Row(equal_height=False):
            sweep_gallery = gr.Gallery(label="Sweep (source, then s = 0.1 … 0.9)", columns=3,
                                       height="auto", object_fit="contain",
                                       elem_id="tr-sweep-gallery")  # fmt: skip
            sweep_plot = gr.Plot(label="Scores against strength", elem_id="tr-sweep-plot")
        sweep_info = gr.Markdown(elem_id="tr-sweep-info")
        common.next_step(
            "generate", "Generate",
            "make a synthetic dataset with the same strategy and adapter (the strength you "
            "liked goes in Generate's Strength(s) box).",
        )  # fmt: skip

        private = {"api_visibility": "private"}
        page.load(common.ensure_owner, owner, owner, queue=False, **private).then(
            _open_action(settings),
            [selection, adapter, owner],
            [
                current,
                gallery,
                indices,
                source_index,
                source_view,
                source_class,
                target,
                strategy,
                info,
                adapter,
            ],  # fmt: skip
            api_name="translate_open",
        )
        mode.change(_mode_visibility, mode, [pick_box, upload], queue=False, **private)
        gallery.select(
            _pick_source(settings), [selection, indices, target],
            [source_index, source_view, source_class, target], **private,
        )  # fmt: skip
        inputs = [selection, adapter, owner, mode, source_index, upload, source_class, target,
                  strategy, seed, steps]  # fmt: skip
        # Several previews at once (the core shares the cached pipeline read-only, each call
        # has its own schedulers): one visitor's long preview does not hold up the others'.
        run = {"concurrency_limit": settings.limits.preview_concurrency,
               "concurrency_id": "translate"}  # fmt: skip
        # The image event returns as soon as the image is drawn; scoring is a separate event
        # with its own queue, so a second slider move never waits behind a score (nor behind
        # the first fit of a dataset's reference classifier).
        token = gr.Textbox(visible=False)
        sweep_token = gr.Textbox(visible=False)
        scoring = {"concurrency_limit": settings.limits.preview_concurrency,
                   "concurrency_id": "translate-score", "show_progress": "hidden"}  # fmt: skip
        one = _translate_image(settings)
        for trigger, extra in ((go_btn.click, {}),
                               (strength.release, {"show_progress": "minimal",
                                                   "trigger_mode": "always_last"})):  # fmt: skip
            # Moving the slider again while a translation runs keeps only the latest position.
            trigger(one, [*inputs, strength], [result, label, scores, info, token], **run,
                    **extra, **private).then(
                _score_one, token, [scores, info], **scoring, **private
            )  # fmt: skip
        sweep_btn.click(_sweep_images(settings), inputs,
                        [sweep_gallery, sweep_plot, sweep_info, sweep_token], **run,
                        **private).then(
            _score_sweep, sweep_token, [sweep_gallery, sweep_plot, sweep_info], **scoring,
            **private,
        )  # fmt: skip
        # The API: one call gives the image(s), then the scores.
        api_one = gr.Button(visible=False)
        api_one.click(_translate_action(settings), [*inputs, strength],
                      [result, label, scores, info], api_name="translate", **run)  # fmt: skip
        api_sweep = gr.Button(visible=False)
        api_sweep.click(_sweep_action(settings), inputs, [sweep_gallery, sweep_plot, sweep_info],
                        api_name="translate_sweep", **run)  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
