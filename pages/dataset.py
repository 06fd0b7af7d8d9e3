"""Dataset page: pick a dataset and a subset, look at it, hand the selection to later pages.

The callbacks are thin: widget values go to plain functions here (:func:`resolve_spec`,
:func:`load_selection`) that call :mod:`diffmix.data` and return plain values; the wrappers
only turn errors into a readable message. The selection (spec, split, subset, seed,
fingerprints, indices) is a plain dict kept in the browser (:func:`pages.common.selection_state`)
so that personalization, generation and training use exactly the same images.

Run alone with ``python pages/dataset.py``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix import workspace  # noqa: E402
from diffmix.data import DatasetError, ImageDataset, make_subset, summarize  # noqa: E402
from diffmix.settings import ENV_MAX_UPLOAD, Settings, check_spec  # noqa: E402
from pages import common  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "Dataset"
PATH = "dataset"

SOURCES = ("Demo", "Server folder", "Upload zip", "Hub dataset")
SPLITS = ("train", "test")
SUBSETS = ("full", "few-shot", "long-tail")
SUMMARY_COLUMNS = ["spec", "split", "classes", "images", "fingerprint", "subset", "seed"]
SKIPPED_COLUMNS = ["path", "reason"]
#: Beyond this many classes the per-class chart is sorted by count, without a label per bar.
MAX_LABELLED_CLASSES = 40
#: Sample browser: classes per page (all classes) and images per page (one class).
CLASSES_PER_PAGE = 16
IMAGES_PER_PAGE = 32
#: Class-menu entry of the sample browser that shows every class.
ALL_CLASSES = "(all classes)"
#: A progress callback: ``progress(fraction, desc=...)`` (``gr.Progress`` fits).
ProgressFn = Callable[..., Any]


@dataclass
class LoadResult:
    """Everything the page shows after a load, as plain values."""

    selection: dict[str, Any]
    summary: pd.DataFrame
    figure: go.Figure
    gallery: list[tuple[Image.Image, str]]
    skipped: pd.DataFrame
    skipped_note: str
    message: str


# --------------------------------------------------------------------------- plain functions


def resolve_spec(
    source: str,
    *,
    folder: str | None = None,
    upload: str | None = None,
    hub: str | None = None,
    settings: Settings,
    session: str = "local",
) -> str:
    """The dataset spec for the chosen source, checked against the operator settings."""
    if source == "Demo":
        return "demo"
    if source == "Server folder":
        if not (folder or "").strip():
            raise ValueError("type the path of a dataset folder or .zip on the server")
        return check_spec(folder or "", settings)
    if source == "Upload zip":
        return str(stage_upload(upload, settings=settings, session=session))
    if source == "Hub dataset":
        hub_id = (hub or "").strip().removeprefix("hub:")
        if not hub_id:
            raise ValueError("type a Hub dataset id such as 'owner/name' or 'owner/name:train'")
        return check_spec(f"hub:{hub_id}", settings)
    raise ValueError(f"unknown dataset source {source!r}; choose one of {', '.join(SOURCES)}")


def stage_upload(upload: str | None, *, settings: Settings, session: str) -> Path:
    """Copy an uploaded ``.zip`` into ``<workspace>/uploads/<session>/<sha>/`` and return it.

    The size limit (``DIFFMIX_MAX_UPLOAD_MB``) is enforced here as well as by the server. The
    content hash in the path makes re-uploading the same file reuse the cached dataset.
    """
    if not upload:
        raise ValueError("upload a .zip of class folders first")
    src = Path(upload)
    if src.suffix.lower() != ".zip":
        raise ValueError(f"upload {src.name!r} is not a .zip file")
    size = src.stat().st_size
    if size > settings.max_upload_bytes:
        raise ValueError(
            f"upload {src.name!r} is {size / 2**20:.1f} MB, over the {settings.max_upload_mb} MB "
            f"limit of this deployment ({ENV_MAX_UPLOAD})"
        )
    digest = _sha256(src)[:16]
    dest = workspace.subdir("uploads", session, digest) / src.name
    if not dest.is_file() or dest.stat().st_size != size:
        shutil.copyfile(src, dest)
        logger.info("staged upload %s (%d bytes) at %s", src.name, size, dest)
    return dest


def load_selection(
    spec: str,
    *,
    split: str = "train",
    subset: str = "full",
    shots: float | None = 5,
    imbalance: float | None = 0.1,
    seed: float | None = 0,
    progress: ProgressFn | None = None,
    settings: Settings | None = None,
) -> LoadResult:
    """Load ``spec``/``split``, draw the subset, and build everything the page shows.

    The returned selection names a staged upload by an opaque token, not its server path (see
    :func:`pages.common.client_spec`); ``settings`` (default: this process's) decides how
    other paths are shown.
    """
    progress = progress or _no_progress
    settings = settings or common.get_settings()
    # 1. Check inputs.
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    seed_i = _as_int(seed, "seed", minimum=0)
    shots_i = _as_int(shots, "shots", minimum=1) if subset == "few-shot" else None
    imb = _as_imbalance(imbalance) if subset == "long-tail" else None
    # 2. Load (cached) and draw the subset.
    shown = display_spec(spec, settings)
    progress(0.05, desc=f"Loading {shown} ({split})")
    ds = common.load_cached(spec, split)
    sub = None
    if subset != "full":
        progress(0.5, desc=f"Drawing the {subset} subset")
        sub = make_subset(ds, shots=shots_i, imbalance=imb, seed=seed_i)
    # 3. Summaries, chart, samples.
    progress(0.6, desc="Summarizing")
    full = summarize(ds)
    part = summarize(ds, sub) if sub is not None else None
    label = subset_label(subset, shots_i, imb)
    selection = _selection(spec, split, subset, shots_i, imb, seed_i, ds, full, part, sub)
    selection.update(spec=common.client_spec(spec, settings), name=shown)
    progress(0.8, desc="Drawing samples")
    indices = list(sub.indices) if sub is not None else list(range(len(ds)))
    figure = counts_figure(
        full["counts"],
        part["counts"] if part else None,
        subset=label,
        sort_by_subset=subset == "long-tail",
    )
    skipped, note = skipped_table(full.get("skipped", []))
    n_img = part["num_images"] if part else full["num_images"]
    message = (
        f"Loaded {shown} ({split}): {full['num_classes']} classes, "
        f"{full['num_images']} images{_sizes_text(full.get('image_sizes'))}"
        + (f"; {label} subset of {n_img} images (seed {seed_i})" if sub is not None else "")
        + "."
    )
    return LoadResult(
        selection=selection,
        summary=summary_table(shown, split, full, part, label, seed_i),
        figure=figure,
        gallery=sample_grid(ds, indices),
        skipped=skipped,
        skipped_note=note,
        message=message,
    )


def display_spec(spec: str, settings: Settings | None = None) -> str:
    """How a spec is shown: a staged upload as ``upload:<file name>`` (no server paths); on a
    public deployment any other path as :func:`pages.common.display_path` shows it."""
    return common.display_spec(spec, settings)


def subset_label(subset: str, shots: int | None, imbalance: float | None) -> str:
    """A short human label of a subset choice: ``full``, ``5-shot``, ``long-tail 0.1``."""
    if subset == "few-shot":
        return f"{shots}-shot"
    if subset == "long-tail":
        return f"long-tail {imbalance:g}"
    return "full"


def summary_table(
    spec: str,
    split: str,
    full: dict[str, Any],
    part: dict[str, Any] | None,
    label: str,
    seed: int,
) -> pd.DataFrame:
    """One row for the split, and one more for the subset when there is one."""
    rows = [[spec, split, full["num_classes"], full["num_images"], full["fingerprint"], "full", ""]]
    if part is not None:
        fp = part["subset_fingerprint"]
        rows.append([spec, split, part["num_classes"], part["num_images"], fp, label, seed])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def counts_figure(
    full_counts: dict[str, int],
    subset_counts: dict[str, int] | None = None,
    *,
    subset: str = "subset",
    sort_by_subset: bool = False,
) -> go.Figure:
    """Images per class: the split's counts, and the subset's beside them when given.

    ``sort_by_subset`` orders classes by decreasing subset count, which makes a long-tail
    profile visible whatever class order the sampler used.
    """
    names = list(full_counts)
    many = len(names) > MAX_LABELLED_CLASSES
    if many or (subset_counts is not None and sort_by_subset):
        # Many classes: sorted by count (a readable profile; names on hover, not 200 labels).
        key = subset_counts if subset_counts is not None else full_counts
        order = {n: i for i, n in enumerate(names)}
        names.sort(key=lambda n: (-key.get(n, 0), order[n]))
    fig = go.Figure()
    fig.add_bar(
        x=names,
        y=[full_counts[n] for n in names],
        name="full split",
        marker_color="#b0bec5" if subset_counts is not None else "#1e88e5",
    )
    if subset_counts is not None:
        fig.add_bar(
            x=names,
            y=[subset_counts.get(n, 0) for n in names],
            name=subset,
            marker_color="#1e88e5",
        )
    fig.update_layout(
        title="Images per class",
        barmode="group",
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 90},
        yaxis_title="images",
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
        template="plotly_white",
    )
    fig.update_xaxes(tickangle=-35)
    if many:
        fig.update_layout(title=f"Images per class ({len(names)} classes, sorted by count; "
                          "hover a bar for its class)", margin={"b": 40})  # fmt: skip
        fig.update_xaxes(showticklabels=False, title="classes")
    if max(full_counts.values(), default=0) <= 10:
        fig.update_yaxes(dtick=1)  # small counts: whole-number ticks only
    return fig


def sample_grid(
    ds: ImageDataset,
    indices: Sequence[int],
    *,
    per_class: int = 4,
    max_images: int = 64,
    thumb: int = 160,
) -> list[tuple[Image.Image, str]]:
    """Up to ``per_class`` thumbnails per class from ``indices`` (first ones, class order).

    With many classes fewer per class are shown so the grid stays under ``max_images``.
    """
    per_class = max(1, min(per_class, max_images // max(1, ds.num_classes)))
    by_class: dict[int, list[int]] = {}
    for i in indices:
        picked = by_class.setdefault(ds.items[i].label, [])
        if len(picked) < per_class:
            picked.append(i)
    out: list[tuple[Image.Image, str]] = []
    for label in sorted(by_class):
        for i in by_class[label]:
            if len(out) >= max_images:
                return out
            img = ds.image(i).copy()
            img.thumbnail((thumb, thumb))
            out.append((img, ds.class_names[label]))
    return out


def sample_page(
    ds: ImageDataset,
    indices: Sequence[int],
    *,
    class_name: str | None = None,
    page: int = 0,
    per_class: int = 4,
    thumb: int = 160,
) -> tuple[list[tuple[Image.Image, str]], int, int]:
    """One page of the sample browser: ``(thumbnails, page, pages)``.

    Every class (``class_name`` None or :data:`ALL_CLASSES`): :data:`CLASSES_PER_PAGE` classes
    per page, up to ``per_class`` images each. One class: :data:`IMAGES_PER_PAGE` of its images
    per page. ``page`` is clamped; only the page's images are decoded.
    """
    by_class: dict[int, list[int]] = {}
    for i in indices:
        by_class.setdefault(ds.items[i].label, []).append(i)
    if class_name in (None, "", ALL_CLASSES):
        labels = sorted(by_class)
        pages = max(1, -(-len(labels) // CLASSES_PER_PAGE))
        page = min(max(0, int(page or 0)), pages - 1)
        chosen = [i for lab in labels[page * CLASSES_PER_PAGE : (page + 1) * CLASSES_PER_PAGE]
                  for i in by_class[lab][:per_class]]  # fmt: skip
    else:
        if class_name not in ds.class_names:
            raise ValueError(f"unknown class {class_name!r}; pick one from the class menu")
        pool = by_class.get(ds.class_names.index(class_name), [])
        pages = max(1, -(-len(pool) // IMAGES_PER_PAGE))
        page = min(max(0, int(page or 0)), pages - 1)
        chosen = pool[page * IMAGES_PER_PAGE : (page + 1) * IMAGES_PER_PAGE]
    out = []
    for i in chosen:
        img = ds.image(i).copy()
        img.thumbnail((thumb, thumb))
        out.append((img, ds.class_names[ds.items[i].label]))
    return out, page, pages


def skipped_table(skipped: Sequence[Any]) -> tuple[pd.DataFrame, str]:
    """The skipped-file report (``path``, ``reason``) and a one-line note."""
    rows = [[_field(s, "path"), _field(s, "reason")] for s in skipped]
    note = f"{len(rows)} file(s) skipped while loading." if rows else "No files skipped."
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS), note


# --------------------------------------------------------------------------- private helpers


def _selection(
    spec: str,
    split: str,
    subset: str,
    shots: int | None,
    imbalance: float | None,
    seed: int,
    ds: ImageDataset,
    full: dict[str, Any],
    part: dict[str, Any] | None,
    sub: Any,
) -> dict[str, Any]:
    """The plain-dict selection later pages use to open exactly the same images.

    :func:`pages.common.open_selection` turns it back into the dataset and its
    :class:`~diffmix.data.Subset` (``indices`` is None for the full split).
    """
    return {
        "spec": spec,
        "name": display_spec(spec),
        "split": split,
        "subset": subset,
        "shots": shots,
        "imbalance": imbalance,
        "seed": seed,
        "fingerprint": full["fingerprint"],
        "subset_fingerprint": part["subset_fingerprint"] if part else full["fingerprint"],
        "indices": list(sub.indices) if sub is not None else None,
        "counts": dict(part["counts"] if part else full["counts"]),
        "class_names": list(ds.class_names),
        "num_images": part["num_images"] if part else full["num_images"],
    }


def _sizes_text(sizes: dict[str, int | None] | None) -> str:
    """`` (64×64 px)`` or `` (200–500 × 180–375 px)``; empty when unknown."""
    if not sizes or sizes.get("min_width") is None:
        return ""
    w0, w1, h0, h1 = (sizes[k] for k in ("min_width", "max_width", "min_height", "max_height"))
    width = f"{w0}" if w0 == w1 else f"{w0}–{w1}"
    height = f"{h0}" if h0 == h1 else f"{h0}–{h1}"
    sep = "×" if w0 == w1 and h0 == h1 else " × "
    return f" ({width}{sep}{height} px)"


def _as_int(value: float | str | None, name: str, *, minimum: int) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number != int(number) or number < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(number)


def _as_imbalance(value: float | None) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"imbalance must be a number in (0, 1], got {value!r}") from None
    if not 0 < number <= 1:
        raise ValueError(f"imbalance must be in (0, 1], got {value!r}")
    return number


def _field(obj: Any, name: str) -> str:
    return str(obj.get(name, "") if isinstance(obj, dict) else getattr(obj, name, ""))


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------- callbacks


def on_load(
    source: str,
    folder: str | None,
    upload: str | None,
    hub: str | None,
    split: str,
    subset: str,
    shots: float | None,
    imbalance: float | None,
    seed: float | None,
    *,
    settings: Settings,
    session: str = "local",
    progress: ProgressFn | None = None,
) -> tuple[Any, ...]:
    """Load button: the selection and every output, or an error message and no changes."""
    try:
        spec = resolve_spec(
            source, folder=folder, upload=upload, hub=hub, settings=settings, session=session
        )
        res = load_selection(
            spec,
            split=split,
            subset=subset,
            shots=shots,
            imbalance=imbalance,
            seed=seed,
            progress=progress,
            settings=settings,
        )
    except (DatasetError, ValueError, OSError) as err:
        logger.info("dataset load refused: %s", err)
        keep = gr.skip()
        return keep, common.error_box(str(err), settings), keep, keep, keep, keep, keep
    from diffmix import score

    # Translate's scores need the dataset's reference classifier: prepare it now, in the
    # background, so the first score does not wait for a fit (the demo's ships fitted).
    score.warm_reference_classifier(res.selection["spec"])
    return (
        res.selection,
        common.info_box(res.message, settings),
        res.summary,
        res.figure,
        res.gallery,
        res.skipped,
        res.skipped_note,
    )


def _pager_line(page: int, pages: int, n: int, class_name: str | None) -> str:
    what = "every class" if class_name in (None, "", ALL_CLASSES) else f"class {class_name}"
    return f"Page {page + 1} of {pages} · {n} image(s) of {what}"


def _samples_action(settings: Settings) -> Callable[..., tuple[Any, ...]]:
    def dataset_samples(
        selection: dict | None, class_name: str | None, page: float | None
    ) -> tuple[Any, ...]:
        """One page of the sample browser (:func:`sample_page`) of the current selection."""
        try:
            ds, sub = common.open_selection(selection, settings)
            indices = list(sub.indices) if sub is not None else range(len(ds))
            thumbs, page_i, pages = sample_page(ds, indices, class_name=class_name,
                                                page=int(page or 1) - 1)  # fmt: skip
        except (DatasetError, ValueError, OSError, TypeError) as err:
            return gr.skip(), gr.skip(), common.error_box(str(err), settings)
        return (thumbs, gr.update(value=page_i + 1, maximum=pages),
                _pager_line(page_i, pages, len(thumbs), class_name))  # fmt: skip

    return dataset_samples


def _browse_reset(settings: Settings) -> Callable[..., tuple[Any, ...]]:
    samples = _samples_action(settings)

    def reset(selection: dict | None) -> tuple[Any, ...]:
        """After a load: the class menu of the new dataset and its first page of samples."""
        if not selection:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        names = list(selection.get("class_names") or [])
        menu = gr.update(choices=[ALL_CLASSES, *names], value=ALL_CLASSES)
        return (menu, *samples(selection, ALL_CLASSES, 1))

    return reset


def _source_visibility(source: str) -> tuple[Any, ...]:
    """Show the input that belongs to the chosen source."""
    return (
        gr.update(visible=source == "Server folder"),
        gr.update(visible=source == "Upload zip"),
        gr.update(visible=source == "Hub dataset"),
    )


def _subset_visibility(subset: str) -> tuple[Any, ...]:
    """Show shots for few-shot and the imbalance slider for long-tail."""
    return gr.update(visible=subset == "few-shot"), gr.update(visible=subset == "long-tail")


def _split_rules(split: str) -> Any:
    """Subsets are drawn from the train split only: on test, fall back to the full split."""
    if split == "train":
        return gr.update(interactive=True, info=None)
    return gr.update(
        value="full", interactive=False, info="Subsets are drawn from the train split."
    )


def _current_line(selection: dict[str, Any] | None) -> str:
    """What is selected now (restored from the browser on page load)."""
    if not selection:
        return "No dataset loaded yet: choose a source and press **Load**."
    label = subset_label(
        selection.get("subset", "full"), selection.get("shots"), selection.get("imbalance")
    )
    return (
        f"Current selection: `{selection.get('name') or selection.get('spec')}` "
        f"({selection.get('split')}), {label}, "
        f"{selection.get('num_images')} images, fingerprint `{selection.get('subset_fingerprint')}`."
    )


# --------------------------------------------------------------------------- layout


def _source_inputs(settings: Settings) -> tuple[gr.Component, ...]:
    """The source radio and the three source-specific inputs."""
    source = gr.Radio(list(SOURCES), value="Demo", label="Source", elem_id="ds-source")
    with gr.Group(visible=False) as folder_box:
        folder = gr.Textbox(
            label="Folder or .zip on the server",
            placeholder="/data/cub or /data/cub.zip (class sub-folders)",
            interactive=settings.allow_local_paths,
            elem_id="ds-folder",
        )
        if not settings.allow_local_paths:
            gr.Markdown(
                "Server paths are disabled on this deployment (the operator can set "
                "`DIFFMIX_ALLOW_LOCAL_PATHS=1`). Upload a .zip instead.",
                elem_classes=["dm-note"],
            )
    upload = gr.File(
        label=f"Dataset .zip (class sub-folders, up to {settings.max_upload_mb} MB)",
        file_types=[".zip"],
        type="filepath",
        visible=False,
        elem_id="ds-upload",
    )
    with gr.Group(visible=False) as hub_box:
        hub = gr.Textbox(
            label="Hub dataset",
            placeholder="owner/name or owner/name:split (image + label columns)",
            interactive=settings.allow_hub,
            elem_id="ds-hub",
        )
        if not settings.allow_hub:
            gr.Markdown(
                "Hub datasets are disabled on this deployment (`DIFFMIX_ALLOW_HUB=1`).",
                elem_classes=["dm-note"],
            )
    return source, folder_box, folder, upload, hub_box, hub


def _load_action(settings: Settings) -> Callable[..., tuple[Any, ...]]:
    """The Load button's listener (``/load_dataset``): widget values -> :func:`on_load`."""

    def load_dataset(
        source: str,
        folder: str | None,
        upload: str | None,
        hub: str | None,
        split: str,
        subset: str,
        shots: float | None,
        imbalance: float | None,
        seed: float | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple[Any, ...]:
        """Load a dataset and draw a subset; returns the selection and the page's views."""
        values = (source, folder, upload, hub, split, subset, shots, imbalance, seed)
        session = common.session_id(request)
        return on_load(*values, settings=settings, session=session, progress=progress)

    return load_dataset


def _controls(settings: Settings) -> dict[str, Any]:
    """The left column: source, split, subset options, seed, Load, status."""
    w: dict[str, Any] = {}
    (w["source"], w["folder_box"], w["folder"], w["upload"], w["hub_box"], w["hub"]) = (
        _source_inputs(settings)
    )
    w["split"] = gr.Radio(list(SPLITS), value="train", label="Split", elem_id="ds-split")
    w["subset"] = gr.Radio(list(SUBSETS), value="full", label="Subset", elem_id="ds-subset")
    w["shots"] = gr.Number(
        5, label="Shots per class", precision=0, minimum=1, visible=False, elem_id="ds-shots"
    )
    w["imbalance"] = gr.Slider(
        0.01, 1.0, value=0.1, step=0.01, visible=False, elem_id="ds-imbalance",
        label="Imbalance (smallest / largest class)",
    )  # fmt: skip
    w["seed"] = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="ds-seed")
    w["load"] = gr.Button("Load", variant="primary", elem_id="ds-load")
    w["status"] = gr.Markdown(elem_id="ds-status")
    return w


def _views() -> dict[str, Any]:
    """Summary and chart (right column); call inside the right column."""
    return {
        "summary": gr.Dataframe(
            headers=SUMMARY_COLUMNS, label="Summary", interactive=False, elem_id="ds-summary"
        ),
        "chart": gr.Plot(
            common.empty_figure("no data yet: load a dataset"),
            label="Images per class",
            elem_id="ds-chart",
        ),  # fmt: skip
    }


def _samples() -> dict[str, Any]:
    """The sample grid and the skipped-file report (full width)."""
    w: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        w["class_filter"] = gr.Dropdown(
            [ALL_CLASSES], value=ALL_CLASSES, filterable=True, scale=3,
            label="Show class (type to filter)", elem_id="ds-class-filter",
        )  # fmt: skip
        w["prev"] = gr.Button("◀ Previous", scale=1, min_width=90, elem_id="ds-prev")
        w["page"] = gr.Number(1, label="Page", precision=0, minimum=1, scale=1, min_width=90,
                              elem_id="ds-page")  # fmt: skip
        w["next"] = gr.Button("Next ▶", scale=1, min_width=90, elem_id="ds-next")
    w["pager"] = gr.Markdown(elem_id="ds-pager", elem_classes=["dm-note"])
    w |= {
        "gallery": gr.Gallery(
            label="Samples (up to 4 per class; from the subset when one is chosen)",
            columns=8,
            height="auto",
            object_fit="contain",
            elem_id="ds-gallery",
        )
    }
    with gr.Accordion("Skipped files", open=False):
        w["skipped_note"] = gr.Markdown("No dataset loaded.", elem_id="ds-skipped-note")
        w["skipped"] = gr.Dataframe(
            headers=SKIPPED_COLUMNS, interactive=False, elem_id="ds-skipped"
        )
    return w


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Dataset page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        gr.Markdown(
            "## 1 · Dataset\nChoose a dataset and, for few-shot or long-tail experiments, the "
            "exact subset every later step will use."
        )
        current = gr.Markdown(_current_line(None), elem_id="ds-current")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                w = _controls(settings)
            with gr.Column(scale=2):
                w |= _views()
        w |= _samples()
        common.next_step(
            "personalize", "Personalize",
            "teach the model your classes (or go straight to Translate to try the base model).",
        )  # fmt: skip

        # UI toggles stay off the API; the one action is `/load_dataset`.
        private = {"queue": False, "api_visibility": "private"}
        w["source"].change(
            _source_visibility, w["source"], [w["folder_box"], w["upload"], w["hub_box"]], **private
        )
        w["split"].change(_split_rules, w["split"], w["subset"], **private)
        w["subset"].change(_subset_visibility, w["subset"], [w["shots"], w["imbalance"]], **private)
        inputs = [
            "source",
            "folder",
            "upload",
            "hub",
            "split",
            "subset",
            "shots",
            "imbalance",
            "seed",
        ]
        outputs = ["status", "summary", "chart", "gallery", "skipped", "skipped_note"]
        load_event = w["load"].click(
            _load_action(settings),
            [w[k] for k in inputs],
            [selection, *(w[k] for k in outputs)],
            api_name="load_dataset",
            concurrency_limit=1,
            concurrency_id="dataset-load",
        )
        # The sample browser: a page of classes (or of one class), never every class at once.
        samples = _samples_action(settings)
        browse_out = [w["gallery"], w["page"], w["pager"]]
        load_event.then(_browse_reset(settings), selection,
                        [w["class_filter"], *browse_out], **private)  # fmt: skip
        w["class_filter"].change(lambda sel, c: samples(sel, c, 1),
                                 [selection, w["class_filter"]], browse_out, **private)  # fmt: skip
        for btn, step in ((w["prev"], -1), (w["next"], 1)):
            btn.click(lambda sel, c, p, d=step: samples(sel, c, int(p or 1) + d),
                      [selection, w["class_filter"], w["page"]], browse_out, **private)  # fmt: skip
        w["page"].submit(samples, [selection, w["class_filter"], w["page"]], browse_out,
                         **private)  # fmt: skip
        selection.change(_current_line, selection, current, **private)
        page.load(_current_line, selection, current, **private)
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
