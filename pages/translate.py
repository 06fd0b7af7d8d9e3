"""Translate page: preview one inter-class translation, or a sweep of strengths, in-process.

Pick a source (an image of the Dataset page's selection, or an upload), a target class, a
strength and a strategy; the page calls :func:`diffmix.translate.translate` directly (models
come from the core's module-level caches, never from page state) and shows source and result
side by side with the soft label, then the scores: faithfulness (the reference classifier's
probability of the target class) and diversity (distance from the source), from
:mod:`diffmix.score`. A *sweep* translates one source at five strengths in one batched call and
draws faithfulness and diversity against strength.

What AUTOMATIC1111's img2img users expect is here too: an editable prompt pre-filled with the
class prompt the strategy would use (the typed text is the prompt used; checked by
:func:`diffmix.settings.check_prompt`), a guidance scale (7.5, the authors'), a strength × seed
grid (:mod:`diffmix.grid`; rows = seeds, columns = strengths, at most ``max_batch`` images) with
each cell's soft label and, when ready, scores, a zip download of a preview or grid whose
``metadata.json`` regenerates every image, and "Send to Generate" (a plan kept in the browser,
:func:`pages.common.plan_state`, that the Generate page fills its fields from once). The source
gallery is paged and filtered by class, so a 200-class dataset is never laid out at once.

Plain functions (:func:`source_page`, :func:`build_request`, :func:`run_translation`,
:func:`score_translation`, :func:`sweep_figure`, :func:`default_prompt`, :func:`generate_plan`,
:func:`write_preview_bundle`, ...) are tested directly; the listeners (``/translate``,
``/translate_sweep``, ``/translate_grid``, ``/translate_open``, ``/send_to_generate``) only
format their results.

Run alone with ``python pages/translate.py``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import sys
import tempfile
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
from diffmix.grid import check_grid  # noqa: E402
from diffmix.settings import Settings, check_limit, check_prompt  # noqa: E402
from pages import common, jobs_ui, zerogpu  # noqa: E402
from pages.preview import (  # noqa: E402, F401 -- the shared preview, also named here
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DISPLAY_SIDE,
    Preview,
    ProgressFn,
    Request,
    display,
    run_translation,
    translate_config,
)
from pages.selection import (  # noqa: E402
    adapter_line,
    carry_adapter,
    default_strategy,
    other_class,
    resolve_adapter,
    selection_line,
    strategy_names,
    whole_number,
)

logger = logging.getLogger(__name__)

TITLE = "Translate"
PATH = "translate"
SWEEP_STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
SOURCE_MODES = ("Dataset image", "Upload")
#: Strengths and seeds a new grid starts with (3 × 3 = 9 images).
GRID_STRENGTHS = "0.3, 0.5, 0.7"
GRID_SEEDS = "0, 1, 2"
#: Source thumbnails per gallery page (a 200-class dataset is never laid out at once).
SOURCES_PER_PAGE = 24
#: Class-menu entry that shows every class in the source gallery.
ALL_CLASSES = "(all classes)"


# --------------------------------------------------------------------------- plain functions


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


def source_page(
    ds: ImageDataset,
    indices: Sequence[int],
    *,
    class_name: str | None = None,
    page: int = 0,
    per_page: int = SOURCES_PER_PAGE,
) -> tuple[list[tuple[Image.Image, str]], list[int], int, int]:
    """One page of source thumbnails: ``(thumbs, indices, page, pages)``.

    ``class_name`` (one of ``ds.class_names``; ``None`` or :data:`ALL_CLASSES` = every class)
    filters; images are in class order, then index order. ``page`` is clamped to
    ``0 .. pages - 1``; only that page's images are decoded, so a 200-class dataset costs
    ``per_page`` thumbnails, not thousands.
    """
    if class_name in (None, "", ALL_CLASSES):
        pool = sorted(indices, key=lambda i: (ds.items[i].label, i))
    else:
        if class_name not in ds.class_names:
            raise ValueError(f"unknown class {class_name!r}; pick one from the class menu")
        label = ds.class_names.index(class_name)
        pool = [i for i in indices if ds.items[i].label == label]
    pages = max(1, -(-len(pool) // per_page))
    page = min(max(0, int(page or 0)), pages - 1)
    chosen = pool[page * per_page : (page + 1) * per_page]
    thumbs = []
    for i in chosen:
        img = ds.image(i).copy()
        img.thumbnail((128, 128))
        thumbs.append((img, f"#{i} {ds.class_names[ds.items[i].label]}"))
    return thumbs, chosen, page, pages


def page_line(page: int, pages: int, n_shown: int, class_name: str | None) -> str:
    """``"Page 2 of 9 · 24 images of every class"`` under the source gallery."""
    what = "every class" if class_name in (None, "", ALL_CLASSES) else f"class {class_name}"
    return f"Page {page + 1} of {pages} · {n_shown} image(s) of {what}"


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
    prompt: str | None = None,
    guidance: float | None = None,
    seeds: Sequence[int] | None = None,
) -> Request:
    """Check the page's values and turn them into a :class:`Request` (``ValueError`` if bad).

    ``prompt`` is the prompt as typed (empty: the strategy's own); it is checked with
    :func:`diffmix.settings.check_prompt` (length, no server path on public deployments) and
    kept as a template in which the target's token (or name) is ``{token}``, so the image is
    made with exactly the typed text. ``guidance`` defaults to :data:`DEFAULT_GUIDANCE`.
    """
    from diffmix.adapter import check_prompt_template
    from diffmix.prompts import prompt_word, template_from_prompt
    from diffmix.strategies import get_strategy

    # 1. Bounded work first (nothing is loaded for a refused request), then dataset,
    #    strategy, model and adapter.
    check_limit("steps", whole_number(steps, "steps", DEFAULT_STEPS, minimum=1), "max_sampling_steps", settings,
                stage="translate")  # fmt: skip
    ds, subset = common.open_selection(selection, settings)
    st = get_strategy(strategy or default_strategy(adapter))
    model, adapter_dir, meta = settings.model, None, None
    if st.uses_adapter:
        found = resolve_adapter(adapter, owner=owner, settings=settings)
        if found is None:
            alt = st.name.replace("diff-", "real-").replace("ti-", "real-")
            raise ValueError(
                f"strategy {st.name!r} needs an adapter: choose one on the Personalize page, "
                f"or use {alt!r} (base model)"
            )
        adapter_dir, meta = str(found[0]), found[1]
        model = str(meta.get("base_model") or settings.model)
    if target_class not in ds.class_names:
        shown = ", ".join(ds.class_names[:12]) + (" …" if len(ds.class_names) > 12 else "")
        raise ValueError(f"choose a target class (one of {shown})")
    guidance_f = DEFAULT_GUIDANCE if guidance in (None, "") else float(guidance)
    if not 0.0 <= guidance_f <= 50.0:
        raise ValueError(f"guidance scale must be in 0 … 50, got {guidance_f:g}")
    template = None
    text = (prompt or "").strip()
    if text and st.prompt != "none":
        check_prompt(text, settings)
        template = template_from_prompt(text, prompt_word(st, target_class, adapter_meta=meta))
        check_prompt_template(template, require_token=False)
    seed_i = whole_number(seed, "seed", 0)
    steps_i = whole_number(steps, "steps", DEFAULT_STEPS, minimum=1)
    # 2. Source image and class (none for text-to-image strategies).
    source, src_class, source_i, partner_i = None, None, None, None
    if st.generative != "txt2img":
        if source_mode == "Upload":
            if upload is None:
                raise ValueError("upload a source image first (or pick one from the dataset)")
            if source_class not in ds.class_names:
                raise ValueError("choose the class of the uploaded image (Source class)")
            source, src_class = open_upload(upload), source_class
        else:
            index = whole_number(source_index, "source index", None, minimum=-(2**62))
            if index is None:
                raise ValueError("pick a source image in the gallery first")
            if not 0 <= index < len(ds):
                raise ValueError(
                    f"source index {index} is out of range 0..{len(ds) - 1} (the {ds.split} "
                    "split); pick an image in the gallery or type an index in that range"
                )
            source, src_class = ds.image(index), ds.class_names[ds.items[index].label]
            source_i = index
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
        partner_i = random.Random(seed_i).choice(pool)
        partner = ds.image(partner_i)
    row_seeds = None
    if seeds is not None:
        row_seeds = [int(x) for x in seeds]
        check_grid(values, row_seeds, settings.limits.max_batch)
    return Request(ds, source, src_class, str(target_class), values, seed_i, st.name, model,
                   adapter_dir, steps_i, partner, guidance_f, template, row_seeds, source_i,
                   partner_i, selection)  # fmt: skip


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


def _prompt_word(
    selection: dict[str, Any] | None,
    adapter: dict[str, Any] | None,
    strategy: str | None,
    target_class: str | None,
    settings: Settings,
    owner: str | None,
) -> tuple[Any, dict | None, str | None]:
    """``(strategy, adapter meta, superclass)`` for a prompt of ``target_class``; the strategy is
    None when it has no prompt or nothing to fill it with (no adapter, unknown class)."""
    from diffmix.strategies import get_strategy

    ds, _ = common.open_selection(selection, settings)
    st = get_strategy(strategy or default_strategy(adapter))
    if st.prompt == "none" or target_class not in ds.class_names:
        return None, None, ds.superclass
    meta = None
    if st.uses_adapter:
        found = resolve_adapter(adapter, owner=owner, settings=settings)
        if found is None:
            return None, None, ds.superclass
        meta = found[1]
    return st, meta, ds.superclass


def default_prompt(
    selection: dict[str, Any] | None,
    adapter: dict[str, Any] | None,
    *,
    strategy: str | None,
    target_class: str | None,
    settings: Settings,
    owner: str | None = None,
) -> tuple[str, str]:
    """``(prompt, word)``: the prompt the strategy would use for ``target_class`` (e.g.
    ``"a photo of a <demo-3> flower"``) and the word in it that names the class (the token, or
    the class name); ``("", "")`` when the strategy has no prompt (mixup, cutmix)."""
    from diffmix.prompts import build_prompt, prompt_word

    st, meta, superclass = _prompt_word(selection, adapter, strategy, target_class, settings,
                                        owner)  # fmt: skip
    if st is None:
        return "", ""
    text = build_prompt(st, str(target_class), adapter_meta=meta, superclass=superclass)
    return text, prompt_word(st, str(target_class), adapter_meta=meta)


def retarget_prompt(
    current: str | None, old_word: str | None, new_prompt: str, new_word: str
) -> str:
    """The prompt box after the target (or strategy) changed: the new default when the box is
    empty or was never filled, the user's text with the old class word swapped for the new
    one when it names the old class, else the user's text unchanged."""
    text = (current or "").strip()
    if not text or not old_word:
        return new_prompt
    if old_word in text and new_word:
        return text.replace(old_word, new_word)
    return text


def soft_label_text(label: dict[str, float]) -> str:
    """``"b 71% · a 29%"`` (largest first)."""
    return " · ".join(f"{k} {v:.0%}" for k, v in sorted(label.items(), key=lambda kv: -kv[1]))


def captioned(preview: Preview, head: Callable[[Any], str]) -> list[tuple[Image.Image, str]]:
    """The preview's images as thumbnails, each captioned ``head(result)`` and, once scored,
    ``· f=<faithfulness> · d=<diversity>``."""
    out = []
    for k, t in enumerate(preview.results):
        cap = head(t)
        if preview.faithfulness is not None:
            cap += f" · f={preview.faithfulness[k]:.2f}"
        if preview.diversity is not None:
            cap += f" · d={preview.diversity[k]:.2f}"
        out.append((display(t.image, 128), cap))
    return out


def grid_gallery(preview: Preview) -> list[tuple[Image.Image, str]]:
    """The grid's cells, row-major (rows = seeds, columns = strengths), captioned."""
    return captioned(preview, lambda t: f"seed {t.seed} · s={t.strength:g}")


GRID_COLUMNS = ["seed", "strength s", "soft label (s^γ)", "faithfulness", "diversity"]


def grid_table(preview: Preview) -> list[list[Any]]:
    """One row per cell: seed, strength, soft label, faithfulness and diversity ("…" while
    the scores are still being computed)."""
    rows = []
    for k, t in enumerate(preview.results):
        f = f"{preview.faithfulness[k]:.3f}" if preview.faithfulness is not None else "…"
        d = f"{preview.diversity[k]:.3f}" if preview.diversity is not None else "…"
        if preview.faithfulness is not None and preview.diversity is None:
            d = "—"
        rows.append([t.seed, t.strength, soft_label_text(t.soft_label), f, d])
    return rows


def bundle_settings(preview: Preview, settings: Settings) -> dict[str, Any]:
    """What every cell of a preview shares, for its download's ``metadata.json``: the core
    translate config (adapter and model shown as this deployment shows paths), the dataset
    (spec, split, fingerprint), the source and the mixing partner (train-split indices)."""
    r = preview.request
    cfg = translate_config(r).model_dump()
    for key in ("adapter", "model"):
        if cfg.get(key) and (key == "adapter" or Path(str(cfg[key])).exists()):
            cfg[key] = common.display_path(str(cfg[key]), settings)
    sel = r.selection or {}
    return {
        "translate": cfg,
        "dataset": {"spec": common.display_spec(str(sel.get("spec", "")), settings),
                    "split": sel.get("split", "train"), "fingerprint": r.ds.fingerprint,
                    "subset": sel.get("subset_fingerprint") or sel.get("label")},
        "source_index": r.source_index,
        "source_class": r.source_class,
        "target_class": r.target_class,
        "partner_index": r.partner_index,
        "strengths": list(r.strengths),
        "seeds": r.row_seeds,
        "superclass": r.ds.superclass,
        "regenerate": "diffmix.grid.bundle_config(meta) + diffmix.grid.bundle_item(cell, "
                      "source.png) -> diffmix.translate.translate([item], config, "
                      "class_names=...); pixels match up to float round-off of batching",
    }  # fmt: skip


def _bundle_dir() -> Path:
    root = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "diffmix-previews"
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_preview_bundle(preview: Preview, settings: Settings, *, keep: int = 64) -> Path:
    """The preview's download: a zip of its images (+ source, contact sheet) and
    ``metadata.json`` with every setting each image needs to be made again
    (:mod:`diffmix.grid`). Old bundles beyond the ``keep`` newest are removed."""
    from diffmix.grid import write_bundle

    r = preview.request
    cells = []
    for k, t in enumerate(preview.results):
        cell = t.record()
        cell["faithfulness"] = preview.faithfulness[k] if preview.faithfulness else None
        cell["diversity"] = preview.diversity[k] if preview.diversity else None
        cell["judge"] = preview.judge or None
        cell["guidance_scale"] = r.guidance
        cell["num_inference_steps"] = r.steps
        cells.append(cell)
    root = _bundle_dir()
    old = sorted(root.glob("*.zip"), key=lambda q: q.stat().st_mtime)
    for q in old[: max(0, len(old) - keep + 1)]:
        q.unlink(missing_ok=True)
    name = f"diffmix-{r.strategy}-{uuid.uuid4().hex[:8]}.zip"
    return write_bundle(root / name, [t.image for t in preview.results], cells,
                        bundle_settings(preview, settings), rows=len(r.row_seeds),
                        cols=len(r.strengths), source=r.source, partner=r.partner)  # fmt: skip


def generate_plan(
    selection: dict[str, Any] | None,
    adapter: dict[str, Any] | None,
    *,
    strategy: str | None,
    strength: float | None,
    guidance: float | None,
    prompt: str | None,
    source_index: float | None,
    source_class: str | None,
    target_class: str | None,
    settings: Settings,
    owner: str | None = None,
) -> dict[str, Any]:
    """What "Send to Generate" carries: strategy, strength, guidance, the typed prompt as a
    template (the target's token made ``{token}``, so every target class gets its own), and
    the source / target shown on Generate. ``ValueError`` for a bad strength or prompt."""
    from diffmix.adapter import check_prompt_template
    from diffmix.prompts import prompt_word, template_from_prompt
    from diffmix.strategies import get_strategy

    st = get_strategy(strategy or default_strategy(adapter))
    s = 1.0 if st.generative == "txt2img" else float(strength if strength is not None else 0.7)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {s:g}")
    g = DEFAULT_GUIDANCE if guidance in (None, "") else float(guidance)
    index = whole_number(source_index, "source index", None, minimum=-(2**62))
    if index is not None and selection:
        ds, _ = common.open_selection(selection, settings)
        if not 0 <= index < len(ds):
            raise ValueError(f"source index {index} is out of range 0..{len(ds) - 1}")
        source_class = ds.class_names[ds.items[index].label]  # the image's own class
    text, template = (prompt or "").strip(), ""
    if text and st.prompt != "none":
        check_prompt(text, settings)
        found, meta, _ = _prompt_word(selection, adapter, st.name, target_class, settings, owner)
        word = prompt_word(found, str(target_class), adapter_meta=meta) if found else ""
        template = check_prompt_template(template_from_prompt(text, word), require_token=False)
    return {"from": "translate", "strategy": st.name, "strengths": f"{s:g}", "guidance": g,
            "prompt_template": template, "prompt": text, "source_index": index,
            "source_class": source_class, "target_class": target_class}  # fmt: skip


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

#: The page values every preview listener starts with, in order. They are also the API's
#: parameter names (gradio_client callers pass them by name): keep them.
SOURCE_PARAMS = ("selection", "adapter", "owner", "source_mode", "source_index", "upload",
                 "source_class", "target", "strategy")  # fmt: skip
#: ... then the one-preview listeners' seed and steps.
PREVIEW_PARAMS = (*SOURCE_PARAMS, "seed", "steps")
#: The grid's parameters (its seeds are a list of its own).
GRID_PARAMS = (*SOURCE_PARAMS, "steps", "prompt", "guidance", "strengths", "seeds")
_ARG = inspect.Parameter.POSITIONAL_OR_KEYWORD
#: Gradio fills these in itself (by annotation and by default value); API callers never see them.
REQUEST = inspect.Parameter("request", _ARG, default=None, annotation=gr.Request)
PROGRESS = inspect.Parameter("progress", _ARG, default=gr.Progress())


def _listener(body: Callable[[dict[str, Any]], Any], *params: str | inspect.Parameter) -> Callable:
    """A Gradio listener with the parameters ``params`` that hands ``body`` its arguments by
    name (one dict). A name ending in ``=`` is optional (default ``None``); :data:`REQUEST`
    and :data:`PROGRESS` are filled in by Gradio. Gradio names the API's parameters after
    these, and plain Python callers pass them by position or by name, as to any function."""
    sig = inspect.Signature(
        [p if isinstance(p, inspect.Parameter)
         else inspect.Parameter(p.rstrip("="), _ARG, default=None) if p.endswith("=")
         else inspect.Parameter(p, _ARG) for p in params]
    )  # fmt: skip

    def listener(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(bound.arguments)

    listener.__signature__ = sig  # type: ignore[attr-defined]
    listener.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()
                                if p.annotation is not p.empty}  # fmt: skip
    listener.__name__ = listener.__qualname__ = body.__name__
    listener.__doc__ = body.__doc__
    return listener


@dataclass(frozen=True)
class PreviewInputs:
    """The page's values a preview is made from (a listener's arguments, by name)."""

    selection: dict | None
    adapter: dict | None
    owner: str | None
    source_mode: str
    source_index: float | None
    upload: str | None
    source_class: str | None
    target: str | None
    strategy: str | None
    seed: float | None = 0
    steps: float | None = None
    prompt: str | None = None
    guidance: float | None = None

    @classmethod
    def of(cls, args: dict[str, Any]) -> PreviewInputs:
        """The inputs among a listener's arguments (the others are ignored)."""
        return cls(**{k: args[k] for k in cls.__dataclass_fields__ if k in args})

    def request(self, settings: Settings, strengths: Sequence[float], **extra: Any) -> Request:
        """:func:`build_request` of these values at ``strengths`` (``ValueError`` if bad)."""
        return build_request(
            self.selection, self.adapter, source_mode=self.source_mode,
            source_index=self.source_index, upload=self.upload, source_class=self.source_class,
            target_class=self.target, strengths=strengths, strategy=self.strategy,
            seed=self.seed, steps=self.steps, settings=settings, owner=self.owner,
            prompt=self.prompt, guidance=self.guidance, **extra,
        )  # fmt: skip


def _run_preview(
    settings: Settings, what: str, make: Callable[[], Request], progress: Any
) -> Preview | str:
    """Check (``make()``) and run a preview; the error box instead when it is refused. The
    memory the call freed goes back to the system either way."""
    try:
        return run_translation(make(), progress)
    except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
        logger.info("%s refused: %s", what, err)
        return common.error_box(jobs_ui.readable_error(err), settings)
    finally:
        common.release_memory()  # the call's freed buffers back to the system


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
    def translate_image(a: dict[str, Any]) -> tuple[Any, ...]:
        """Translate the source to the target class at one strength: the image at once, and a
        token the scoring event (:func:`_score_one`) fills the scores in with."""
        inputs = PreviewInputs.of(a)
        preview = _run_preview(settings, "translate",
                               lambda: inputs.request(settings, [a["strength"]]), a["progress"])  # fmt: skip
        if isinstance(preview, str):
            return gr.skip(), gr.skip(), gr.skip(), preview, ""
        warm_judge(preview.request.ds)
        res = preview.results[0]
        src = preview.request.source or res.image
        token = PREVIEWS.put(preview, _slot(a["request"], "one"))
        return ((display(src), display(res.image)), res.soft_label, scores_markdown(preview),
                common.info_box(timing_line(preview), settings), token)  # fmt: skip

    return _listener(translate_image, *PREVIEW_PARAMS, "strength", REQUEST, PROGRESS,
                     "prompt=", "guidance=")  # fmt: skip


def _score_token(token: str | None) -> Preview | str | None:
    """Score the preview ``token`` names and forget it: the scored preview; ``None`` when a
    newer preview replaced it (before or while it was scored); the error text if scoring failed."""
    preview = PREVIEWS.latest(token)
    if preview is None:
        return None
    try:
        score_translation(preview)
    except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
        return f"scoring failed: {err}"
    if PREVIEWS.latest(token) is None:  # replaced while it was scored
        return None
    PREVIEWS.drop(token)
    return preview


def _score_one(token: str | None) -> tuple[Any, ...]:
    """Scores of the preview ``token`` names, unless a newer preview replaced it."""
    preview = _score_token(token)
    if preview is None:
        return gr.skip(), gr.skip()
    if isinstance(preview, str):
        return common.error_box(preview), gr.skip()
    return scores_markdown(preview), common.info_box(timing_line(preview))


def _bundle(preview: Preview | None, settings: Settings) -> Any:
    """The download of ``preview`` (a zip path), or no change when there is none / it fails."""
    if preview is None:
        return gr.skip()
    try:
        return str(write_preview_bundle(preview, settings))
    except OSError as err:
        logger.warning("preview download not written: %s", err)
        return gr.skip()


def _page_image(settings: Settings):
    image = _translate_image(settings)

    def translate_page_image(a: dict[str, Any]) -> tuple[Any, ...]:
        """:func:`_translate_image`, plus the preview's download (before its scores)."""
        *shown, token = image(**a)
        return (*shown, _bundle(PREVIEWS.latest(token), settings), token)

    return _listener(translate_page_image, *PREVIEW_PARAMS, "strength", "prompt", "guidance",
                     REQUEST, PROGRESS)  # fmt: skip


def _page_score(settings: Settings):
    def score_page(token: str | None) -> tuple[Any, ...]:
        """:func:`_score_one`, plus the download again with the scores in its metadata."""
        preview = _score_token(token)
        if preview is None:
            return gr.skip(), gr.skip(), gr.skip()
        if isinstance(preview, str):
            return common.error_box(preview), gr.skip(), gr.skip()
        return (scores_markdown(preview), common.info_box(timing_line(preview)),
                _bundle(preview, settings))  # fmt: skip

    return score_page


def _translate_action(settings: Settings):
    image = _translate_image(settings)

    def translate_one(a: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        """Translate the source to the target class at one strength; the image, then scores.

        The API endpoint (``/translate``): one call gives both. The page itself shows the
        image from :func:`_translate_image` and scores it in a separate event. ``prompt``
        (empty: the strategy's) and ``guidance`` (default 7.5) as on the page.
        """
        *first, token = image(**a, request=None)
        yield tuple(first)
        if token:
            yield first[0], first[1], *_score_one(token)

    return _releasing(_listener(translate_one, *PREVIEW_PARAMS, "strength", PROGRESS,
                                "prompt=", "guidance="))  # fmt: skip


def preview_command(request: Request, settings: Settings, out: str | None = None) -> str:
    """The ``diffmix translate`` command that makes the preview of ``request`` again (its
    strengths at its seed; :func:`diffmix.command.translate_command`), after ``#`` lines for
    what the command line cannot say the same way: an uploaded source (its server path is
    shown as :data:`diffmix.command.UPLOAD_PLACEHOLDER`), a selection of another split than
    train, a mixing partner drawn from a subset. ``out``: the ``--out`` folder (default a
    placeholder). ``ValueError`` for a setting without a flag."""
    from diffmix.command import UPLOAD_PLACEHOLDER, translate_command

    r, sel = request, request.selection or {}
    source: int | str | None = r.source_index
    notes = []
    if source is None and r.source is not None:
        source = UPLOAD_PLACEHOLDER
        notes.append(f"# {UPLOAD_PLACEHOLDER}: your copy of the uploaded source image")
    split = str(sel.get("split", "train"))
    if split != "train":
        notes.append(f"# the command line translates train images; this selection is the "
                     f"{split} split")  # fmt: skip
    if r.partner_index is not None and sel.get("indices") is not None:
        notes.append("# the page mixes with a partner from the selected subset, the command "
                     "line from the whole train split: the partner may differ")  # fmt: skip
    spec = common.selection_spec(str(sel.get("spec", "")), settings)
    command = translate_command(translate_config(r), dataset=spec, target=r.target_class,
                                strengths=r.strengths, seed=r.seed, source=source,
                                source_class=r.source_class, out=out)  # fmt: skip
    return "\n".join([*notes, command])


def _command_action(settings: Settings):
    def translate_command(a: dict[str, Any]) -> str:
        """The ``diffmix translate`` command of the one-image preview the page would make now
        (:func:`preview_command`), or a ``#`` line saying what is missing."""
        inputs = PreviewInputs.of(a)
        return jobs_ui.command_text(
            lambda: preview_command(inputs.request(settings, [a["strength"]]), settings), settings
        )

    return _listener(translate_command, *PREVIEW_PARAMS, "strength", "prompt", "guidance")


def _sweep_gallery(preview: Preview) -> list[tuple[Image.Image, str]]:
    req = preview.request
    out = [(display(req.source, 128), "source")] if req.source is not None else []
    return out + captioned(preview, lambda t: f"s={t.strength:.1f}")


def _sweep_images(settings: Settings):
    def translate_sweep_images(a: dict[str, Any]) -> tuple[Any, ...]:
        """Translate one source at strengths 0.1 … 0.9 in one call: the images, and a token
        for the scoring event (:func:`_score_sweep`)."""

        def make() -> Request:
            req = PreviewInputs.of(a).request(settings, SWEEP_STRENGTHS)
            if len(req.strengths) < 2:
                raise ValueError(f"{req.strategy} draws from pure noise: a strength sweep needs "
                                 "an img2img or mixing strategy")  # fmt: skip
            return req

        preview = _run_preview(settings, "sweep", make, a["progress"])
        if isinstance(preview, str):
            return gr.skip(), gr.skip(), preview, ""
        warm_judge(preview.request.ds)
        token = PREVIEWS.put(preview, _slot(a["request"], "sweep"))
        wait = scores_markdown(preview)
        return (_sweep_gallery(preview), gr.skip(),
                common.info_box(f"{timing_line(preview)} {wait}", settings), token)  # fmt: skip

    return _listener(translate_sweep_images, *PREVIEW_PARAMS, REQUEST, PROGRESS, "prompt=",
                     "guidance=")  # fmt: skip


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

    def translate_sweep(a: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        """Translate one source at strengths 0.1 … 0.9 in one call; images, then the score curves
        (the API endpoint ``/translate_sweep``; the page scores in a separate event)."""
        *first, token = images(**a, request=None)
        yield tuple(first)
        if token:
            yield _score_sweep(token)

    return _releasing(_listener(translate_sweep, *PREVIEW_PARAMS, PROGRESS, "prompt=",
                                "guidance="))  # fmt: skip


def _grid_update(preview: Preview) -> Any:
    return gr.update(value=grid_gallery(preview), columns=len(preview.request.strengths))


def _grid_line(preview: Preview) -> str:
    req = preview.request
    return (f"{len(req.row_seeds)} seeds (rows) × {len(req.strengths)} strengths (columns). "
            f"{timing_line(preview)}")  # fmt: skip


def _grid_images(settings: Settings):
    def translate_grid_images(a: dict[str, Any]) -> tuple[Any, ...]:
        """One source at every strength (columns) × seed (rows) in one batched call: the
        images, the per-cell table, the download, and a token for :func:`_page_score_grid`."""
        from diffmix.grid import parse_numbers

        def make() -> Request:
            row_seeds = parse_numbers(a["seeds"], "seeds", whole=True)
            req = PreviewInputs.of(a).request(settings, parse_numbers(a["strengths"], "strengths"),
                                              seeds=row_seeds)  # fmt: skip
            if len(req.strengths) * len(req.row_seeds) < 1:
                raise ValueError("the grid is empty")
            return req

        preview = _run_preview(settings, "grid", make, a["progress"])
        if isinstance(preview, str):
            return gr.skip(), gr.skip(), preview, gr.skip(), ""
        warm_judge(preview.request.ds)
        token = PREVIEWS.put(preview, _slot(a["request"], "grid"))
        line = f"{_grid_line(preview)} {scores_markdown(preview)}"
        return (_grid_update(preview), grid_table(preview), common.info_box(line, settings),
                _bundle(preview, settings), token)  # fmt: skip

    return _listener(translate_grid_images, *GRID_PARAMS, REQUEST, PROGRESS)


def _page_score_grid(settings: Settings):
    def score_grid(token: str | None) -> tuple[Any, ...]:
        """The grid's captions, table and download again, with the scores."""
        preview = _score_token(token)
        if preview is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if isinstance(preview, str):
            return gr.skip(), gr.skip(), common.error_box(preview), gr.skip()
        return (_grid_update(preview), grid_table(preview),
                common.info_box(_grid_line(preview), settings), _bundle(preview, settings))  # fmt: skip

    return score_grid


def _grid_action(settings: Settings):
    images = _grid_images(settings)
    scored = _page_score_grid(settings)

    def translate_grid(a: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        """The strength × seed grid (API ``/translate_grid``): the images, table and download,
        then the same with the scores. ``strengths`` / ``seeds``: comma-separated lists."""
        *first, token = images(**a, request=None)
        yield tuple(first)
        if token:
            yield scored(token)

    return _releasing(_listener(translate_grid, *GRID_PARAMS, PROGRESS))


def _prompt_action(settings: Settings):
    def translate_prompt(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        strategy: str | None,
        target: str | None,
        current: str | None,
        word: str | None,
    ) -> tuple[Any, Any]:
        """The prompt box after the target or strategy changed (see :func:`retarget_prompt`),
        and the class word it now holds."""
        try:
            new, new_word = default_prompt(selection, adapter, strategy=strategy,
                                           target_class=target, settings=settings, owner=owner)  # fmt: skip
        except (*jobs_ui.USER_ERRORS, RuntimeError):
            return gr.skip(), gr.skip()
        return retarget_prompt(current, word, new, new_word), new_word

    return translate_prompt


def _send_action(settings: Settings):
    def send_to_generate(
        selection: dict | None,
        adapter: dict | None,
        owner: str | None,
        strategy: str | None,
        strength: float | None,
        guidance: float | None,
        prompt: str | None,
        source_index: float | None,
        source_class: str | None,
        target: str | None,
    ) -> tuple[Any, str, Any]:
        """The plan Generate opens with (:func:`generate_plan`), kept in the browser, and no
        watched generation run (Generate would otherwise restore that run's settings over the
        plan; the run itself goes on and stays in Generate's run menu); the page then goes to
        Generate. A bad prompt or strength stays here with its message."""
        try:
            plan = generate_plan(selection, adapter, strategy=strategy, strength=strength,
                                 guidance=guidance, prompt=prompt, source_index=source_index,
                                 source_class=source_class, target_class=target,
                                 settings=settings, owner=owner)  # fmt: skip
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            return gr.skip(), common.error_box(jobs_ui.readable_error(err), settings), gr.skip()
        return plan, "", None

    return send_to_generate


#: Opens Generate once the plan is stored (relative link: works under a root path too).
GO_GENERATE_JS = """(plan, msg) => { if (!msg) { window.location.href = 'generate'; } }"""


def _source_page_action(settings: Settings):
    def translate_sources(
        selection: dict | None, class_name: str | None, page: float | None
    ) -> tuple[Any, ...]:
        """One page of the source gallery (class filter, page number)."""
        try:
            ds, subset = common.open_selection(selection, settings)
            indices = list(subset.indices) if subset is not None else range(len(ds))
            thumbs, chosen, page_i, pages = source_page(ds, indices, class_name=class_name,
                                                        page=int(page or 1) - 1)  # fmt: skip
        except (*jobs_ui.USER_ERRORS, RuntimeError, TypeError) as err:
            return gr.skip(), gr.skip(), gr.skip(), common.error_box(str(err), settings)
        return (thumbs, chosen, gr.update(value=page_i + 1, maximum=pages),
                page_line(page_i, pages, len(chosen), class_name))  # fmt: skip

    return translate_sources


def _open_action(settings: Settings):
    def translate_open(
        selection: dict | None, adapter: dict | None, owner: str | None
    ) -> tuple[Any, ...]:
        """The selection's source gallery (first page), class choices, the default strategy,
        the message, the gallery's class filter and pager, the prompt, then the carried
        adapter (last)."""
        adapter = carry_adapter(adapter, selection, owner=owner, settings=settings)
        strategy = gr.update(value=default_strategy(adapter))
        line = selection_line(selection) + " " + adapter_line(adapter)
        try:
            ds, subset = common.open_selection(selection, settings)
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            keep = gr.skip()
            msg = common.error_box(jobs_ui.readable_error(err), settings)
            return (line, keep, keep, keep, keep, keep, keep, strategy, msg,
                    keep, keep, keep, keep, keep, adapter)  # fmt: skip
        warm_judge(ds)  # the first score then needs no fit (or only the rest of one)
        indices = list(subset.indices) if subset is not None else list(range(len(ds)))
        thumbs, chosen, _, pages = source_page(ds, indices)
        first = chosen[0] if chosen else None
        src_class = ds.class_names[ds.items[first].label] if first is not None else None
        names = list(ds.class_names)
        target = other_class(names, src_class)
        try:
            prompt, word = default_prompt(selection, adapter, strategy=default_strategy(adapter),
                                          target_class=target, settings=settings, owner=owner)  # fmt: skip
        except (*jobs_ui.USER_ERRORS, RuntimeError):
            prompt, word = "", ""
        return (
            line,
            thumbs,
            chosen,
            first,
            display(ds.image(first)) if first is not None else None,
            gr.update(choices=names, value=src_class),
            gr.update(choices=names, value=target),
            strategy,
            "",
            gr.update(choices=[ALL_CLASSES, *names], value=ALL_CLASSES),
            gr.update(value=1, maximum=pages),
            page_line(0, pages, len(chosen), None),
            prompt,
            word,
            adapter,
        )

    return translate_open


def _pick_source(settings: Settings):
    retarget = _prompt_action(settings)

    def pick(
        selection: dict | None, indices: list[int] | None, target: str | None,
        adapter: dict | None = None, owner: str | None = None, strategy: str | None = None,
        prompt: str | None = None, word: str | None = None,
        evt: gr.SelectData = None,  # type: ignore[assignment]
    ) -> tuple[Any, ...]:  # fmt: skip
        """A gallery click: that image becomes the source (and the target moves off its class,
        the prompt with it)."""
        try:
            ds, _ = common.open_selection(selection, settings)
            index = int((indices or [])[evt.index])
        except (*jobs_ui.USER_ERRORS, IndexError, TypeError, AttributeError):
            return (gr.skip(),) * 6
        cls = ds.class_names[ds.items[index].label]
        new_target = other_class(ds.class_names, cls) if target in (None, cls) else target
        text, new_word = gr.skip(), gr.skip()
        if new_target != target:
            text, new_word = retarget(selection, adapter, owner, strategy, new_target, prompt, word)
        return (index, display(ds.image(index)), gr.update(value=cls),
                gr.update(value=new_target), text, new_word)  # fmt: skip

    return pick


def _show_index(settings: Settings):
    def show(selection: dict | None, index: float | None) -> tuple[Any, ...]:
        """A typed source index: show that image and its class, or say why it cannot be used."""
        try:
            ds, _ = common.open_selection(selection, settings)
            i = whole_number(index, "source index", None, minimum=-(2**62))
            if i is None:
                return gr.skip(), gr.skip(), ""
            if not 0 <= i < len(ds):
                raise ValueError(f"source index {i} is out of range 0..{len(ds) - 1} (the "
                                 f"{ds.split} split)")  # fmt: skip
        except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
            return gr.skip(), gr.skip(), common.error_box(jobs_ui.readable_error(err), settings)
        return display(ds.image(i)), gr.update(value=ds.class_names[ds.items[i].label]), ""

    return show


def _mode_visibility(mode: str) -> tuple[Any, Any]:
    return gr.update(visible=mode != "Upload"), gr.update(visible=mode == "Upload")


# --------------------------------------------------------------------------- layout


EXPLAIN_STRENGTH = (
    "s: how far the image moves toward the target. int(steps · s) denoising steps run: low s "
    "keeps the source (diversity), high s redraws the target (faithfulness); 1 = from noise."
)
EXPLAIN_GUIDANCE = (
    "Classifier-free guidance: how strongly the prompt steers each step (≤ 1: off). 7.5 is "
    "the authors' setting (a81337b:augmentation/diff_mix.py:86) and diffusers' default."
)
EXPLAIN_PROMPT = (
    "Pre-filled with the prompt the strategy uses for the target class (its token after "
    "Personalize, its name for the base model). Edit it freely; Send to Generate keeps your "
    "wording, and where it names the target class each image of the batch gets its own target "
    "class there (a prompt that names no class is used as is for every image)."
)
EXPLAIN_LABEL = (
    "**Soft label** = (1 − s^γ)·source + s^γ·target, γ = 0.5 (the authors' run.sh). It follows "
    "the strength s, **not the image**: a result that still looks like the source is labelled "
    "toward the target all the same; the faithfulness score is what checks the image."
)
EXPLAIN_SCORES = (
    "Scores appear here after a translation: **faithfulness** = a reference classifier's "
    "probability of the target class (does it look like the target?), **diversity** = "
    "distance from the source (0 = unchanged). They are computed after the image is shown."
)


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Translate page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        adapter = common.adapter_state()
        owner = common.owner_state()
        send_plan = common.plan_state()
        generate_run = jobs_ui.run_browser_state("generate")  # the run Generate watches
        # Hidden JSON, not gr.State (a gr.State keeps a heartbeat connection open app-wide).
        indices = gr.JSON([], visible=False)
        prompt_word_box = gr.Textbox(visible=False)
        gr.Markdown(
            "## 3 · Translate\nMove a real image of one class toward another class. Low "
            "strength s keeps the source (diverse backgrounds), high strength draws the target "
            "(faithful foreground); the soft label mixes both classes as s^γ."
        )
        current = gr.Markdown(selection_line(None), elem_id="tr-selection")
        mode = gr.Radio(list(SOURCE_MODES), value=SOURCE_MODES[0], label="Source",
                        elem_id="tr-source-mode")  # fmt: skip
        with gr.Group() as pick_box:
            with gr.Row(equal_height=True):
                class_filter = gr.Dropdown([ALL_CLASSES], value=ALL_CLASSES, filterable=True,
                                           label="Show class (type to filter)", scale=3,
                                           elem_id="tr-class-filter")  # fmt: skip
                prev_btn = gr.Button("◀ Previous", scale=1, min_width=90, size="sm",
                                     elem_id="tr-prev")  # fmt: skip
                page_no = gr.Number(1, label="Page", precision=0, minimum=1, scale=1,
                                    min_width=90, elem_id="tr-page")  # fmt: skip
                next_btn = gr.Button("Next ▶", scale=1, min_width=90, size="sm",
                                     elem_id="tr-next")  # fmt: skip
                source_index = gr.Number(None, label="Source index (train split)", precision=0,
                                         scale=2, elem_id="tr-source-index")  # fmt: skip
            gallery = gr.Gallery(
                label="Pick a source image", columns=8, height="auto", allow_preview=False,
                object_fit="contain", elem_id="tr-gallery",
            )  # fmt: skip
            pager = gr.Markdown(elem_id="tr-pager", elem_classes=["dm-note"])
        # The file reaches the listener unread; open_upload decodes it with the limit.
        upload = common.uploaded_image(label="Upload a source image", sources=["upload"],
                                       visible=False, height=220, elem_id="tr-upload")  # fmt: skip
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=340):
                with gr.Row():
                    source_class = gr.Dropdown(
                        [], allow_custom_value=True, filterable=True, label="Source class",
                        elem_id="tr-source-class",
                    )  # fmt: skip
                    target = gr.Dropdown(
                        [], allow_custom_value=True, filterable=True,
                        label="Target class (type to filter)", elem_id="tr-target",
                    )  # fmt: skip
                strategy = gr.Dropdown(strategy_names(), value="real-mix", label="Strategy",
                                       elem_id="tr-strategy")  # fmt: skip
                prompt = gr.Textbox("", label="Prompt", lines=2, max_lines=4, info=EXPLAIN_PROMPT,
                                    elem_id="tr-prompt")  # fmt: skip
                strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Strength s",
                                     info=EXPLAIN_STRENGTH, elem_id="tr-strength")  # fmt: skip
                guidance = gr.Slider(0, 20, value=DEFAULT_GUIDANCE, step=0.5,
                                     label="Guidance scale", info=EXPLAIN_GUIDANCE,
                                     elem_id="tr-guidance")  # fmt: skip
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="tr-seed")
                    steps = gr.Number(DEFAULT_STEPS, label="Denoising steps (at s = 1)", precision=0,
                                      minimum=1, elem_id="tr-steps",
                                      maximum=settings.limits.max_sampling_steps or None)  # fmt: skip
                with gr.Row():
                    go_btn = gr.Button("Translate", variant="primary", elem_id="tr-go")
                    sweep_btn = gr.Button("Sweep 0.1 … 0.9", elem_id="tr-sweep")
                send_btn = gr.Button("Send to Generate →", elem_id="tr-send")
                send_msg = gr.Markdown(elem_id="tr-send-msg")
            with gr.Column(scale=2):
                with gr.Row(equal_height=False):
                    source_view = gr.Image(label="Source", type="pil", interactive=False,
                                           height=300, elem_id="tr-source")  # fmt: skip
                    # max_height (not height) keeps the whole image in view, scaled
                    result = gr.ImageSlider(label="Source ↔ result", type="pil", max_height=300,
                                            interactive=False, elem_id="tr-result")  # fmt: skip
                with gr.Row(equal_height=False):
                    with gr.Column():
                        label = gr.Label(label="Soft label", num_top_classes=3, elem_id="tr-label")
                        gr.Markdown(EXPLAIN_LABEL, elem_id="tr-label-note",
                                    elem_classes=["dm-note"])  # fmt: skip
                    scores = gr.Markdown(EXPLAIN_SCORES, elem_id="tr-scores")
                info = gr.Markdown(elem_id="tr-info")
                download = gr.File(label="Download this preview (PNG + metadata.json, zip)",
                                   interactive=False, elem_id="tr-download")  # fmt: skip
                command = jobs_ui.command_box("tr")
        gr.Markdown("### Strength × seed grid\nRows are seeds, columns strengths; each cell "
                    "lists its soft label and, when ready, its scores.")  # fmt: skip
        cap = settings.limits.max_batch
        with gr.Row(equal_height=True):
            grid_strengths = gr.Textbox(GRID_STRENGTHS, label="Strengths (columns)", max_lines=1,
                                        elem_id="tr-grid-strengths")  # fmt: skip
            grid_seeds = gr.Textbox(GRID_SEEDS, label="Seeds (rows)", max_lines=1,
                                    info=f"at most {cap} images per grid" if cap else None,
                                    elem_id="tr-grid-seeds")  # fmt: skip
            grid_btn = gr.Button("Make grid", variant="primary", scale=0, min_width=160,
                                 elem_id="tr-grid-go")  # fmt: skip
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                grid_gallery_box = gr.Gallery(
                    label="Grid (rows = seeds, columns = strengths)", columns=3, height="auto",
                    object_fit="contain", allow_preview=True, elem_id="tr-grid",
                )  # fmt: skip
            with gr.Column(scale=2):
                grid_tbl = gr.Dataframe(headers=GRID_COLUMNS, interactive=False,
                                        label="Cells (soft label follows s^γ, not the image)",
                                        elem_id="tr-grid-table")  # fmt: skip
                grid_download = gr.File(label="Download the grid (PNGs + metadata.json, zip)",
                                        interactive=False, elem_id="tr-grid-download")  # fmt: skip
        grid_info = gr.Markdown(elem_id="tr-grid-info")
        gr.Markdown("### Strength sweep")
        with gr.Row(equal_height=False):
            sweep_gallery = gr.Gallery(label="Sweep (source, then s = 0.1 … 0.9)", columns=3,
                                       height="auto", object_fit="contain",
                                       elem_id="tr-sweep-gallery")  # fmt: skip
            sweep_plot = gr.Plot(common.empty_figure("no data yet: press Sweep"),
                                 label="Scores against strength", elem_id="tr-sweep-plot")  # fmt: skip
        sweep_info = gr.Markdown(elem_id="tr-sweep-info")
        common.next_step(
            "generate", "Generate",
            "make a synthetic dataset with the same strategy and adapter (Send to Generate "
            "carries strategy, strength, guidance and prompt).",
        )  # fmt: skip

        private = {"api_visibility": "private"}
        page.load(common.ensure_owner, owner, owner, queue=False, **private).then(
            _open_action(settings),
            [selection, adapter, owner],
            [current, gallery, indices, source_index, source_view, source_class, target,
             strategy, info, class_filter, page_no, pager, prompt, prompt_word_box,
             adapter],
            api_name="translate_open",
        )  # fmt: skip
        mode.change(_mode_visibility, mode, [pick_box, upload], queue=False, **private)
        gallery.select(
            _pick_source(settings),
            [selection, indices, target, adapter, owner, strategy, prompt, prompt_word_box],
            [source_index, source_view, source_class, target, prompt, prompt_word_box],
            **private,
        )  # fmt: skip
        source_index.submit(_show_index(settings), [selection, source_index],
                            [source_view, source_class, info], **private)  # fmt: skip
        # The source gallery, one page at a time (class filter, pager).
        sources = _source_page_action(settings)
        page_out = [gallery, indices, page_no, pager]
        class_filter.change(lambda sel, c: sources(sel, c, 1), [selection, class_filter],
                            page_out, **private)  # fmt: skip
        for btn, step in ((prev_btn, -1), (next_btn, 1)):
            btn.click(lambda sel, c, p, d=step: sources(sel, c, int(p or 1) + d),
                      [selection, class_filter, page_no], page_out, **private)  # fmt: skip
        page_no.submit(sources, [selection, class_filter, page_no], page_out, **private)
        # The prompt follows the target class and the strategy (keeping the user's wording);
        # on user input only: the page's own updates (opening, a gallery pick) set it themselves.
        prompt_fn = _prompt_action(settings)
        for widget in (target, strategy):
            widget.input(prompt_fn, [selection, adapter, owner, strategy, target, prompt,
                                     prompt_word_box], [prompt, prompt_word_box],
                         show_progress="hidden", **private)  # fmt: skip
        inputs = [selection, adapter, owner, mode, source_index, upload, source_class, target,
                  strategy, seed, steps]  # fmt: skip
        # The command line of the one-image preview, kept up to date with every setting.
        command_fn, command_in = _command_action(settings), [*inputs, strength, prompt, guidance]
        page.load(command_fn, command_in, command, api_name="translate_command")
        for widget in (mode, source_index, upload, source_class, target, strategy, seed, steps,
                       strength, prompt, guidance):  # fmt: skip
            widget.change(command_fn, command_in, command, queue=False, show_progress="hidden",
                          **private)  # fmt: skip
        # Several previews at once (the core shares the cached pipeline read-only, each call
        # has its own schedulers): one visitor's long preview does not hold up the others'.
        run = {"concurrency_limit": settings.limits.preview_concurrency,
               "concurrency_id": "translate"}  # fmt: skip
        # The image event returns as soon as the image is drawn; scoring is a separate event
        # with its own queue, so a second slider move never waits behind a score (nor behind
        # the first fit of a dataset's reference classifier).
        token = gr.Textbox(visible=False)
        sweep_token = gr.Textbox(visible=False)
        grid_token = gr.Textbox(visible=False)
        scoring = {"concurrency_limit": settings.limits.preview_concurrency,
                   "concurrency_id": "translate-score", "show_progress": "hidden"}  # fmt: skip
        one = _page_image(settings)
        for trigger, extra in ((go_btn.click, {}),
                               (strength.release, {"show_progress": "minimal",
                                                   "trigger_mode": "always_last"})):  # fmt: skip
            # Moving the slider again while a translation runs keeps only the latest position.
            trigger(one, [*inputs, strength, prompt, guidance],
                    [result, label, scores, info, download, token], **run, **extra,
                    **private).then(
                _page_score(settings), token, [scores, info, download], **scoring, **private
            )  # fmt: skip
        sweep_btn.click(_sweep_images(settings), [*inputs, prompt, guidance],
                        [sweep_gallery, sweep_plot, sweep_info, sweep_token], **run,
                        **private).then(
            _score_sweep, sweep_token, [sweep_gallery, sweep_plot, sweep_info], **scoring,
            **private,
        )  # fmt: skip
        grid_inputs = [selection, adapter, owner, mode, source_index, upload, source_class,
                       target, strategy, steps, prompt, guidance, grid_strengths, grid_seeds]  # fmt: skip
        grid_btn.click(_grid_images(settings), grid_inputs,
                       [grid_gallery_box, grid_tbl, grid_info, grid_download, grid_token], **run,
                       **private).then(
            _page_score_grid(settings), grid_token,
            [grid_gallery_box, grid_tbl, grid_info, grid_download], **scoring, **private,
        )  # fmt: skip
        send_btn.click(_send_action(settings),
                       [selection, adapter, owner, strategy, strength, guidance, prompt,
                        source_index, source_class, target],
                       [send_plan, send_msg, generate_run], api_name="send_to_generate").then(
            None, [send_plan, send_msg], None, js=GO_GENERATE_JS, **private,
        )  # fmt: skip
        # The API: one call gives the image(s), then the scores.
        api_one = gr.Button(visible=False)
        api_one.click(_translate_action(settings), [*inputs, strength, prompt, guidance],
                      [result, label, scores, info], api_name="translate", **run)  # fmt: skip
        api_sweep = gr.Button(visible=False)
        api_sweep.click(_sweep_action(settings), [*inputs, prompt, guidance],
                        [sweep_gallery, sweep_plot, sweep_info], api_name="translate_sweep",
                        **run)  # fmt: skip
        api_grid = gr.Button(visible=False)
        api_grid.click(_grid_action(settings), grid_inputs,
                       [grid_gallery_box, grid_tbl, grid_info, grid_download],
                       api_name="translate_grid", **run)  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
