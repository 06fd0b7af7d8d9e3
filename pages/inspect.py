"""Inspect page: browse a synthetic dataset, each image beside its source, and export a subset.

A synthetic dataset folder (``<workspace>/synthetic/<name>``, made by Generate) holds the
images and one ``metadata.jsonl`` row per image (source, target, strength, scores, kept). The
page filters the rows by source class, target class, strength and faithfulness range and kept
flag (:func:`filter_rows`), shows each result next to its source image -- loaded through the
dataset spec recorded in ``config.json`` and the row's ``source_index`` / ``source_id``, never
parsed from file names (:func:`source_image`) -- and exports the filtered rows as a new folder
in the same format (:func:`export_rows`), ready for the Train page.

Run alone with ``python pages/inspect.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix.data import ImageDataset, open_rgb  # noqa: E402
from diffmix.settings import Settings  # noqa: E402
from diffmix.synthetic import (  # noqa: E402
    CONFIG_FILE,
    METADATA_FILE,
    RowIndex,
    index_rows,
    row_index,
)
from diffmix.synthetic import folder_rows as read_rows  # noqa: E402,F401 -- every row, parsed
from pages import common, jobs_ui  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "Inspect"
PATH = "inspect"
STAGE = "generate"
KEPT_CHOICES = ("all", "kept", "dropped")
NO_FOLDER = "No synthetic dataset chosen: make one on the **Generate** page, then pick it above."
#: The listeners that read a folder's rows (the first read of a 60,000-row folder takes about a
#: second) run in one concurrency group of their own, at most this many at once: a slow open
#: holds none of the slots other pages' events run in (each Gradio listener has its own
#: group), and at most this many folders are read at once (their memory and CPU bounded).
ROWS_GROUP = {"concurrency_id": "inspect-rows", "concurrency_limit": 4}
#: Gallery (and table) rows per page: a folder of 30,000+ rows is never laid out at once.
PER_PAGE = 24
TABLE_COLUMNS = ["file", "source", "target", "strength", "faithfulness", "diversity", "kept", "row"]
#: Columns of the frame the page filters, sorts and pages (``row``: position in the file). The
#: other fields of a row (file name, source, soft label ...) are read for the rows shown only.
FRAME_COLUMNS = ("row", "source_class", "target_class", "strength", "faithfulness", "diversity",
                 "kept")  # fmt: skip
SCORE_COLUMNS = ("faithfulness", "diversity")
#: Sort menu -> frame column.
SORT_CHOICES = {"file order": "row", "faithfulness": "faithfulness", "diversity": "diversity",
                "strength": "strength", "source class": "source_class",
                "target class": "target_class"}  # fmt: skip
#: What the numbers mean, shown where they first appear (the page's top).
GLOSSARY = (
    "**Faithfulness** (0-1): the *judge*'s probability that the image shows its target class "
    "(the judge is a reference classifier fitted on the real training images; chance level is "
    "1 / number of classes). **Diversity** (0-1): how far the result moved from its source "
    "image (0 = unchanged; LPIPS, or 1 - cosine of the judge's features). **Kept**: "
    "generation's filter may mark the least faithful fraction `kept: false` (*Drop the least "
    "faithful fraction* on Generate); those images stay on disk, but Train skips them. "
    "**Soft label**: (1 - s^γ)·source + s^γ·target for strength s and the power γ -- it follows "
    "s^γ, not what the image looks like (mixup/cutmix: the exact pixel share)."
)


# --------------------------------------------------------------------------- plain functions


def read_record(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` (dataset spec, class names, settings)."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise ValueError(f"{folder.name!r} has no readable {CONFIG_FILE}") from None


def synthetic_names(*, owner: str | None, settings: Settings) -> list[str]:
    """Synthetic dataset folders this session may see (finished or still growing)."""
    return [
        r["name"]
        for r in jobs_ui.list_runs(STAGE, owner=owner, settings=settings)
        if (Path(r["path"]) / METADATA_FILE).is_file()
    ]


def _range_mask(col: pd.Series, lo: float, hi: float) -> pd.Series:
    """Inside [lo, hi]; a missing value passes only an unrestricted [0, 1] range."""
    inside = col.between(lo - 1e-9, hi + 1e-9)
    return inside | col.isna() if lo <= 0.0 and hi >= 1.0 else inside


def rows_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows' filter and sort columns as a frame (``row``: the row's position in ``rows``).

    Numbers missing or not numeric become NaN; ``kept`` is True unless the row says ``false``;
    a missing class is ``""``.
    """
    df = pd.DataFrame({c: [r.get(c) for r in rows] for c in FRAME_COLUMNS[1:]},
                      columns=list(FRAME_COLUMNS[1:]))  # fmt: skip
    df.insert(0, "row", np.arange(len(df), dtype=np.int64))
    for col in SCORE_COLUMNS + ("strength",):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["kept"] = ~df["kept"].astype(object).eq(False)
    for col in ("source_class", "target_class"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    return df


def index_frame(index: RowIndex) -> pd.DataFrame:
    """The frame of a folder's :class:`~diffmix.synthetic.RowIndex` (same columns as
    :func:`rows_frame` of its rows): classes as categoricals in name order, so a 60,000-row
    folder's frame is a few MB and sorts by class name."""
    names = np.array(index.classes, dtype=object)
    order = np.argsort(names.astype(str), kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    categories = pd.Index(names[order].tolist(), dtype=object)

    def classes(codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(rank[codes] if len(codes) else codes, categories)

    return pd.DataFrame({
        "row": np.arange(len(index), dtype=np.int64),
        "source_class": classes(index.source), "target_class": classes(index.target),
        "strength": index.strength, "faithfulness": index.faithfulness,
        "diversity": index.diversity, "kept": index.kept,
    }, columns=list(FRAME_COLUMNS))  # fmt: skip


#: The frame of each folder index alive (the index is cached in diffmix.synthetic).
_FRAMES: weakref.WeakKeyDictionary[RowIndex, pd.DataFrame] = weakref.WeakKeyDictionary()
_FRAMES_LOCK = threading.Lock()


def load_folder(folder: Path) -> tuple[pd.DataFrame, RowIndex]:
    """The folder's frame and row index (:func:`diffmix.synthetic.row_index`), read once per
    version of ``metadata.jsonl``.

    The page holds one representation of a folder: the frame of its filter and sort columns
    (about 50 bytes a row); the rows shown are parsed from the file when shown
    (:func:`diffmix.synthetic.index_rows`). A growing folder reads only its new lines.
    """
    index = row_index(folder)
    with _FRAMES_LOCK:  # (milliseconds: the index is read already)
        frame = _FRAMES.get(index)
        if frame is None:
            frame = _FRAMES[index] = index_frame(index)
    return frame, index


def filter_frame(
    df: pd.DataFrame,
    *,
    source_classes: Sequence[str] | None = None,
    target_classes: Sequence[str] | None = None,
    strength: tuple[float, float] = (0.0, 1.0),
    faithfulness: tuple[float, float] = (0.0, 1.0),
    diversity: tuple[float, float] = (0.0, 1.0),
    kept: str = "all",
) -> pd.DataFrame:
    """Rows of ``df`` matching every filter (vectorized; an empty class list means every class).

    Ranges are closed; a row without a score passes only a range left at [0, 1].
    """
    if kept not in KEPT_CHOICES:
        raise ValueError(f"kept must be one of {', '.join(KEPT_CHOICES)}, got {kept!r}")
    mask = pd.Series(True, index=df.index)
    if source_classes:
        mask &= df["source_class"].isin(list(source_classes))
    if target_classes:
        mask &= df["target_class"].isin(list(target_classes))
    for col, rng in (("strength", strength), ("faithfulness", faithfulness),
                     ("diversity", diversity)):  # fmt: skip
        lo, hi = sorted(float(x) for x in rng)
        mask &= _range_mask(df[col], lo, hi)
    if kept != "all":
        mask &= df["kept"] if kept == "kept" else ~df["kept"]
    return df[mask]


def filter_rows(
    rows: Sequence[dict[str, Any]],
    *,
    source_classes: Sequence[str] | None = None,
    target_classes: Sequence[str] | None = None,
    strength: tuple[float, float] = (0.0, 1.0),
    faithfulness: tuple[float, float] = (0.0, 1.0),
    diversity: tuple[float, float] = (0.0, 1.0),
    kept: str = "all",
) -> list[dict[str, Any]]:
    """Rows matching every filter, in file order (see :func:`filter_frame`)."""
    shown = filter_frame(rows_frame(rows), source_classes=source_classes,
                         target_classes=target_classes, strength=strength,
                         faithfulness=faithfulness, diversity=diversity, kept=kept)  # fmt: skip
    return [rows[i] for i in shown["row"]]


def sort_frame(df: pd.DataFrame, by: str = "file order", descending: bool = False) -> pd.DataFrame:
    """``df`` sorted by one of :data:`SORT_CHOICES` (stable; rows without the value last)."""
    if by not in SORT_CHOICES:
        raise ValueError(f"sort by one of {', '.join(SORT_CHOICES)}, got {by!r}")
    col = SORT_CHOICES[by]
    if col == "row":
        return df.sort_values("row", ascending=not descending, kind="mergesort")
    return df.sort_values([col, "row"], ascending=[not descending, True], kind="mergesort",
                          na_position="last")  # fmt: skip


def page_count(n: int, per_page: int = PER_PAGE) -> int:
    """Pages needed for ``n`` rows (at least 1)."""
    return max(1, -(-int(n) // per_page))


def page_frame(df: pd.DataFrame, page: int, per_page: int = PER_PAGE) -> tuple[pd.DataFrame, int]:
    """Rows of page ``page`` (1-based, clamped to the pages there are) and that page number."""
    p = min(max(1, int(page or 1)), page_count(len(df), per_page))
    start = (p - 1) * per_page
    return df.iloc[start : start + per_page], p


def frame_table(df: pd.DataFrame, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows as the page's table (scores rounded to 3 digits; ``row``: position in the file);
    ``rows``: the same rows, parsed (their file names)."""

    def num(col: pd.Series) -> pd.Series:
        return col.map("{:.3f}".format).where(col.notna(), "")

    return pd.DataFrame({
        "file": [str(r.get("file_name") or "") for r in rows],
        "source": df["source_class"].to_numpy(dtype=object),
        "target": df["target_class"].to_numpy(dtype=object),
        "strength": df["strength"].map("{:g}".format).where(df["strength"].notna(), "").to_numpy(),
        "faithfulness": num(df["faithfulness"]).to_numpy(),
        "diversity": num(df["diversity"]).to_numpy(),
        "kept": np.where(df["kept"].to_numpy(dtype=bool), "yes", "no"),
        "row": df["row"].to_numpy(),
    }, columns=TABLE_COLUMNS)  # fmt: skip


def rows_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a table (scores rounded)."""
    return frame_table(rows_frame(rows), rows)


def score_histograms(all_rows: pd.DataFrame, shown: pd.DataFrame, bins: int = 20) -> go.Figure:
    """Faithfulness and diversity histograms: every row (grey) and the filtered rows (blue).

    Counts are binned here (``bins`` equal bins on [0, 1]), so the figure is small whatever
    the number of rows (and built without ``make_subplots``, which costs more than the data).
    Without any score: the axes say "no scores yet".
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers = ((edges[:-1] + edges[1:]) / 2).round(4).tolist()
    traces: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    for k, col in enumerate(SCORE_COLUMNS, start=1):
        x, y = ("x", "y") if k == 1 else (f"x{k}", f"y{k}")
        lo, hi = (0.0, 0.44) if k == 1 else (0.56, 1.0)
        layout[f"xaxis{'' if k == 1 else k}"] = {"domain": [lo, hi], "range": [0, 1],
                                                 "anchor": y, "title": {"text": col}}  # fmt: skip
        layout[f"yaxis{'' if k == 1 else k}"] = {"anchor": x, "gridcolor": "#eceff1"}
        every = all_rows[col].to_numpy(dtype=float)
        every = every[~np.isnan(every)].clip(0, 1)
        if not len(every):
            notes.append({"text": "no scores yet", "showarrow": False, "x": (lo + hi) / 2,
                          "y": 0.5, "xref": "paper", "yref": "paper"})  # fmt: skip
            layout[f"xaxis{'' if k == 1 else k}"].update(showticklabels=False, showgrid=False)
            layout[f"yaxis{'' if k == 1 else k}"].update(showticklabels=False, showgrid=False)
            continue
        sel = shown[col].to_numpy(dtype=float)
        sel = sel[~np.isnan(sel)].clip(0, 1)
        for name, values, color in (("every image", every, "#cfd8dc"),
                                    ("matching the filter", sel, "#1e88e5")):  # fmt: skip
            traces.append({"type": "bar", "x": centers, "y": np.histogram(values, edges)[0].tolist(),
                           "width": 1 / bins, "marker": {"color": color}, "name": name,
                           "showlegend": k == 1 or not traces, "xaxis": x, "yaxis": y,
                           "legendgroup": name})  # fmt: skip
    # (no template: copying one costs more than the whole figure)
    layout.update(barmode="overlay", height=260, annotations=notes, plot_bgcolor="white",
                  paper_bgcolor="white", font={"size": 11},
                  margin={"l": 45, "r": 15, "t": 20, "b": 40},
                  legend={"orientation": "h", "y": 1.12, "x": 0})  # fmt: skip
    return go.Figure({"data": traces, "layout": layout}, skip_invalid=False)


def source_dataset(record: dict[str, Any], settings: Settings) -> ImageDataset:
    """The train split the folder's sources come from (same fingerprint as when generated)."""
    spec = str(record.get("dataset") or "")
    if not spec:
        raise ValueError("the folder's config.json names no dataset")
    ds = common.load_cached(spec, "train")
    want = record.get("dataset_fingerprint")
    if want and ds.fingerprint != want:
        raise ValueError(
            f"dataset {spec!r} changed since this folder was made (fingerprint {want} -> "
            f"{ds.fingerprint}): sources cannot be shown"
        )
    return ds


def source_image(ds: ImageDataset, row: dict[str, Any]) -> Image.Image | None:
    """A row's source image: by ``source_index``, checked against ``source_id`` (else by id)."""
    sid, idx = row.get("source_id"), row.get("source_index")
    if isinstance(idx, int) and 0 <= idx < len(ds) and (sid is None or ds.items[idx].id == sid):
        return ds.image(idx)
    if sid is not None:
        for i, item in enumerate(ds.items):
            if item.id == sid:
                return ds.image(i)
    return None


def pair_image(
    source: Image.Image | None, result: Image.Image | None, side: int = 128
) -> Image.Image:
    """Source and result side by side (both fitted to ``side`` px; a grey box for a missing one)."""
    from PIL import ImageOps

    gap = 6
    canvas = Image.new("RGB", (2 * side + gap, side), (255, 255, 255))
    for k, img in enumerate((source, result)):
        cell = (
            ImageOps.contain(img.convert("RGB"), (side, side), Image.NEAREST)
            if img is not None
            else Image.new("RGB", (side, side), (200, 200, 200))
        )
        x0 = k * (side + gap)
        canvas.paste(cell, (x0 + (side - cell.width) // 2, (side - cell.height) // 2))
    return canvas


def caption(row: dict[str, Any]) -> str:
    """A gallery caption: ``source → target · s=… · f=… · d=…`` (and "dropped")."""
    cap = f"{row.get('source_class')} → {row.get('target_class')} · s={row.get('strength')}"
    for key, short in (("faithfulness", "f"), ("diversity", "d")):
        if isinstance(row.get(key), (int, float)):
            cap += f" · {short}={row[key]:.2f}"
    if row.get("kept", True) is False:
        cap += " · dropped"
    return cap


def _result_image(folder: Path, row: dict[str, Any]) -> Image.Image | None:
    try:
        return open_rgb(folder / str(row["file_name"]))
    except (OSError, KeyError, ValueError):  # ValueError: ImageDecodeError
        return None


def pairs(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    ds: ImageDataset | None,
    *,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> list[tuple[Image.Image, str]]:
    """Gallery items for one page of rows: ``source | result`` with a caption.

    One item per row, in order (an unreadable image is a grey box, so item k is row k of the
    page: the table and the gallery select the same sample).
    """
    start = (max(1, page) - 1) * per_page
    out = []
    for r in rows[start : start + per_page]:
        result = _result_image(folder, r)
        src = source_image(ds, r) if ds is not None else None
        cap = caption(r) + ("" if result is not None else " · image missing")
        out.append((pair_image(src, result), cap))
    return out


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def detail_markdown(row: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    """One row's full metadata as a Markdown table (every field of its ``metadata.jsonl`` line),
    headed by the soft label explained and the judge that scored it (from ``config.json``)."""
    from diffmix.generate import ROW_FIELDS

    lines = [f"**{row.get('file_name')}** · {caption(row)}", ""]
    soft = row.get("soft_label")
    if isinstance(soft, dict) and soft:
        parts = ", ".join(f"{k} {float(v):.3f}" for k, v in soft.items())
        rule = row.get("label_rule") or "?"
        why = {
            "diffmix-gamma": f"(1 - s^γ)·source + s^γ·target with s={row.get('strength')}, "
            f"γ={row.get('gamma')}: it follows s^γ, not what the image looks like; training "
            "recomputes it with the run's γ",
            "pixel-share": "the exact share of the target image's pixels (mixup/cutmix)",
            "hard": "the target class only",
        }.get(str(rule), f"rule {rule}")
        lines += [f"Soft label: {parts} -- {why} (label_rule `{rule}`).", ""]
    judge = (record or {}).get("judge")
    if row.get("faithfulness") is not None:
        j = judge if isinstance(judge, dict) else {}
        said = f"Scored by the `{row.get('judge') or j.get('judge') or 'unnamed'}` judge"
        if j.get("train_images"):
            said += f" (fitted on {j['train_images']} {j.get('fit_on', 'train')} images)"
        if j.get("diversity_metric"):
            said += f"; diversity metric `{j['diversity_metric']}`"
        lines += [said + ".", ""]
    lines += ["| field | value |", "|---|---|"]
    keys = [k for k in ROW_FIELDS if k in row] + [k for k in row if k not in ROW_FIELDS]
    for k in keys:
        text = _value(row[k]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{k}` | {text} |")
    return "\n".join(lines)


def export_rows(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    name: str,
    *,
    owner: str | None,
    filters: dict[str, Any] | None = None,
) -> Path:
    """Write ``rows`` of ``folder`` as a new synthetic dataset ``<workspace>/synthetic/<name>``.

    Same format as the source folder: the images (hard-linked when possible, else copied),
    ``metadata.jsonl`` with the chosen rows, ``config.json`` (plus ``exported_from`` and the
    filters) and ``plan.jsonl`` (so rows can still be regenerated exactly).
    """
    # 1. Check inputs.
    if not rows:
        raise ValueError("no rows match the filters: nothing to export")
    dest = jobs_ui.stage_root(STAGE) / jobs_ui.check_name(name)
    if dest.exists():
        raise ValueError(
            f"a synthetic dataset named {dest.name!r} already exists; choose another name"
        )
    record = read_record(folder)
    # 2. Images, then metadata and records (a folder without metadata is not listed).
    tmp = dest.with_name(f".{dest.name}.export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for r in rows:
            rel = Path(str(r["file_name"]))
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"row file name {rel} is not inside the folder")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(folder / rel, tmp / rel)
            except OSError:
                shutil.copy2(folder / rel, tmp / rel)
        record = {**record, "exported_from": folder.name, "export_filters": filters or {},
                  "exported_rows": len(rows)}  # fmt: skip
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if (folder / "plan.jsonl").is_file():
            shutil.copy2(folder / "plan.jsonl", tmp / "plan.jsonl")
        (tmp / METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        jobs_ui.write_owner(tmp, owner)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %d rows of %s to %s", len(rows), folder.name, dest)
    return dest


def summary_line(name: str, total: int, shown: pd.DataFrame, page: int, pages: int) -> str:
    """``N of M images match (K kept) · page p of P``."""
    kept = int(shown["kept"].sum())
    return (
        f"`{name}`: **{len(shown)} of {total} images** match ({kept} kept) · page {page} of "
        f"{pages} · left: source, right: result · click an image or a table row for its details."
    )


# --------------------------------------------------------------------------- callbacks


def _folder(name: str | None, owner: str | None, settings: Settings) -> Path:
    if not name:
        raise ValueError("choose a synthetic dataset first")
    return jobs_ui.open_run(STAGE, name, owner=owner, settings=settings)


def _filtered(
    folder: Path, source_classes: Sequence[str] | None, target_classes: Sequence[str] | None,
    s_min: float, s_max: float, f_min: float, f_max: float, kept: str,
    sort: str | None = None, descending: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """``(every row, the matching rows sorted)`` of a folder under the page's filters."""
    df, _ = load_folder(folder)
    shown = filter_frame(df, source_classes=source_classes, target_classes=target_classes,
                         strength=(s_min, s_max), faithfulness=(f_min, f_max), kept=kept)  # fmt: skip
    return df, sort_frame(shown, sort or "file order", bool(descending))


def _filter_action(settings: Settings):
    def inspect_filter(
        name: str | None, owner: str | None, source_classes: list[str] | None,
        target_classes: list[str] | None, s_min: float, s_max: float, f_min: float,
        f_max: float, kept: str, page: float | None, sort: str | None = "file order",
        descending: bool = False,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Filter, sort and page the folder's rows: the page's table and source|result pairs,
        a summary line, the score histograms (every row vs. the matching ones), the page's row
        numbers and the page shown."""
        skip = gr.skip()
        if not name:
            return skip, skip, NO_FOLDER, skip, skip, skip
        try:
            folder = _folder(name, owner, settings)
            df, shown = _filtered(folder, source_classes, target_classes, s_min, s_max, f_min,
                                  f_max, kept, sort, descending)  # fmt: skip
            part, p = page_frame(shown, int(page or 1))
            _, page_rows = index_rows(folder, part["row"])
            note = ""
            try:
                ds = source_dataset(read_record(folder), settings)
            except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
                ds, note = None, " " + common.error_box(jobs_ui.readable_error(err), settings)
            gallery = pairs(folder, page_rows, ds, page=1, per_page=len(page_rows) or 1)
        except jobs_ui.USER_ERRORS as err:
            return (
                skip,
                skip,
                common.error_box(jobs_ui.readable_error(err), settings),
                skip,
                skip,
                skip,
            )
        summary = summary_line(folder.name, len(df), shown, p, page_count(len(shown))) + note
        return (frame_table(part, page_rows), gallery, summary, score_histograms(df, shown),
                [int(i) for i in part["row"]], p)  # fmt: skip

    return inspect_filter


def _detail_action(settings: Settings):
    def inspect_detail(name: str | None, owner: str | None, row: float | None) -> tuple[Any, str]:
        """One row (its position in metadata.jsonl): source | result enlarged, and its full
        metadata with the soft label and the judge explained."""
        if not name or row in (None, ""):
            return None, "Click an image or a table row to see its details."
        try:
            folder = _folder(name, owner, settings)
            _, index = load_folder(folder)
            k = int(row)
            if not 0 <= k < len(index):
                raise ValueError(f"row {k} is outside 0..{len(index) - 1} of {folder.name!r}")
            (the_row,) = index_rows(folder, [k])[1]
            record = read_record(folder)
            try:
                src = source_image(source_dataset(record, settings), the_row)
            except (*jobs_ui.USER_ERRORS, RuntimeError):
                src = None
            image = pair_image(src, _result_image(folder, the_row), side=256)
            text = detail_markdown(the_row, record)
        except jobs_ui.USER_ERRORS as err:
            return gr.skip(), common.error_box(jobs_ui.readable_error(err), settings)
        return image, common.redact(f"Row {k}: " + text, settings)

    return inspect_detail


def _select_actions(settings: Settings):
    detail = _detail_action(settings)

    def from_gallery(name: str | None, owner: str | None, ids: list | None,
                     evt: gr.SelectData) -> tuple[Any, ...]:  # fmt: skip
        """A gallery click: that sample's details."""
        k = evt.index if isinstance(evt.index, int) else None
        if not ids or k is None or not 0 <= k < len(ids):
            return gr.skip(), gr.skip()
        return detail(name, owner, ids[k])

    def from_table(name: str | None, owner: str | None, ids: list | None,
                   evt: gr.SelectData) -> tuple[Any, ...]:  # fmt: skip
        """A table click: that sample's details, and the same sample selected in the gallery."""
        idx = evt.index
        k = idx[0] if isinstance(idx, (list, tuple)) and idx else idx
        if not ids or not isinstance(k, int) or not 0 <= k < len(ids):
            return gr.skip(), gr.skip(), gr.skip()
        return (*detail(name, owner, ids[k]), gr.update(selected_index=k))

    return from_gallery, from_table


def _open_action(settings: Settings):
    def inspect_open(name: str | None, owner: str | None) -> tuple[Any, ...]:
        """Class choices of the chosen folder (filters reset)."""
        if not name:
            return gr.skip(), gr.skip(), NO_FOLDER
        try:
            folder = _folder(name, owner, settings)
            names = list(read_record(folder).get("class_names") or [])
        except jobs_ui.USER_ERRORS as err:
            keep = gr.skip()
            return keep, keep, common.error_box(jobs_ui.readable_error(err), settings)
        upd = gr.update(choices=names, value=[])
        return upd, upd, ""

    return inspect_open


def _list_action(settings: Settings):
    def inspect_list(owner: str | None, last_generated: str | None, current: str | None) -> Any:
        """The synthetic datasets this session may see (the last generated one preselected)."""
        names = synthetic_names(owner=owner, settings=settings)
        value = current if current in names else last_generated if last_generated in names else (
            names[0] if names else None)  # fmt: skip
        return gr.update(choices=names, value=value)

    return inspect_list


def _export_action(settings: Settings):
    def inspect_export(
        name: str | None, owner: str | None, source_classes: list[str] | None,
        target_classes: list[str] | None, s_min: float, s_max: float, f_min: float,
        f_max: float, kept: str, new_name: str | None,
    ) -> tuple[str, Any]:  # fmt: skip
        """Export the filtered rows as a new synthetic dataset folder."""
        try:
            folder = _folder(name, owner, settings)
            filters = {"source_classes": source_classes or [], "target_classes": target_classes or [],
                       "strength": [s_min, s_max], "faithfulness": [f_min, f_max], "kept": kept}  # fmt: skip
            _, part = _filtered(folder, source_classes, target_classes, s_min, s_max, f_min,
                                f_max, kept)  # fmt: skip
            _, shown = index_rows(folder, part["row"])
            target = jobs_ui.run_name(new_name, f"{folder.name}-subset")
            dest = export_rows(folder, shown, target, owner=owner, filters=filters)
        except jobs_ui.USER_ERRORS as err:
            return common.error_box(jobs_ui.readable_error(err), settings), gr.skip()
        names = synthetic_names(owner=owner, settings=settings)
        return (
            common.info_box(
                f"Exported {len(shown)} images to synthetic/{dest.name}; "
                "train with it on the Train page.",
                settings,
            ),
            gr.update(choices=names),
        )

    return inspect_export


# --------------------------------------------------------------------------- layout


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Inspect page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        owner = common.owner_state()
        last_generated = jobs_ui.run_browser_state("generate")
        gr.Markdown(
            "## 6 · Inspect\nBrowse a synthetic dataset: each result beside its source, filtered "
            "by classes, strength, faithfulness and the kept flag, sorted and paged; click one for "
            "its full metadata; export what you keep as a new dataset."
        )
        gr.Markdown(GLOSSARY, elem_id="in-glossary", elem_classes=["dm-note"])
        with gr.Row(equal_height=True):
            folder = gr.Dropdown(
                [], allow_custom_value=True, label="Synthetic dataset", scale=4, elem_id="in-folder"
            )
            relist = gr.Button("↻ Refresh", scale=0, min_width=110, elem_id="in-refresh")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                src = gr.Dropdown([], allow_custom_value=True, multiselect=True, filterable=True,
                                  label="Source classes (empty = all; type to search)",
                                  elem_id="in-source")  # fmt: skip
                tgt = gr.Dropdown([], allow_custom_value=True, multiselect=True, filterable=True,
                                  label="Target classes (empty = all; type to search)",
                                  elem_id="in-target")  # fmt: skip
                with gr.Row():
                    s_min = gr.Slider(0, 1, value=0, step=0.05, label="Strength from",
                                      elem_id="in-s-min")  # fmt: skip
                    s_max = gr.Slider(0, 1, value=1, step=0.05, label="to", elem_id="in-s-max")
                with gr.Row():
                    f_min = gr.Slider(0, 1, value=0, step=0.05, label="Faithfulness from",
                                      elem_id="in-f-min")  # fmt: skip
                    f_max = gr.Slider(0, 1, value=1, step=0.05, label="to", elem_id="in-f-max")
                kept = gr.Radio(list(KEPT_CHOICES), value="all", label="Kept (generation's filter)",
                                info="dropped: marked kept: false by the filter; Train skips them",
                                elem_id="in-kept")  # fmt: skip
                with gr.Row():
                    sort = gr.Dropdown(list(SORT_CHOICES), value="file order", label="Sort by",
                                       elem_id="in-sort")  # fmt: skip
                    descending = gr.Checkbox(False, label="Descending", elem_id="in-desc")
                with gr.Row(equal_height=True):
                    prev_btn = gr.Button("◀", min_width=50, scale=0, elem_id="in-prev")
                    page_no = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="in-page")
                    next_btn = gr.Button("▶", min_width=50, scale=0, elem_id="in-next")
                    apply = gr.Button("Apply", variant="primary", elem_id="in-apply")
                hist = gr.Plot(label="Scores (grey: every image; blue: matching the filter)",
                               elem_id="in-hist")  # fmt: skip
                with gr.Accordion("Export the filtered images", open=False):
                    new_name = gr.Textbox(label="New dataset name (optional)", max_lines=1,
                                          placeholder="<dataset>-subset-<date>-<time>",
                                          elem_id="in-export-name")  # fmt: skip
                    export = gr.Button("Export", elem_id="in-export")
                    export_msg = gr.Markdown(elem_id="in-export-message")
            with gr.Column(scale=2):
                summary = gr.Markdown("Choose a synthetic dataset.", elem_id="in-summary")
                gallery = gr.Gallery(label="Source | result", columns=4, height=520,
                                     object_fit="contain", allow_preview=False,
                                     elem_id="in-gallery")  # fmt: skip
                with gr.Row(equal_height=False):
                    detail_img = gr.Image(label="Selected: source | result", type="pil",
                                          interactive=False, height=200, elem_id="in-detail-image")  # fmt: skip
                detail = gr.Markdown("Click an image or a table row to see its details.",
                                     max_height=460, elem_id="in-detail")  # fmt: skip
        table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, max_height=360, wrap=True,
                             column_widths=["25%", "18%", "18%", "8%", "10%", "8%", "6%", "7%"],
                             elem_id="in-table")  # fmt: skip
        ids = gr.JSON([], visible=False)  # row numbers of the page shown (gallery item k = row k)
        detail_row = gr.Number(None, visible=False, precision=0)
        common.next_step(
            "train", "Train",
            "train again with an exported subset (choose it in Synthetic datasets) and compare.",
        )  # fmt: skip

        filters = [folder, owner, src, tgt, s_min, s_max, f_min, f_max, kept]
        filter_fn = _filter_action(settings)
        rows = ROWS_GROUP  # the listeners that read the folder's rows
        private = {"api_visibility": "private"}
        # Public endpoints first, so that they keep their names; the rest is UI plumbing.
        open_fn, list_fn = _open_action(settings), _list_action(settings)
        out = [table, gallery, summary, hist, ids, page_no]
        view = [*filters, page_no, sort, descending]
        apply.click(filter_fn, view, out, api_name="inspect_filter", **rows)
        detail_fn = _detail_action(settings)
        detail_row.change(detail_fn, [folder, owner, detail_row], [detail_img, detail],
                          api_name="inspect_detail", **rows)  # fmt: skip
        export.click(_export_action(settings), [*filters, new_name], [export_msg, folder],
                     api_name="inspect_export", **rows)  # fmt: skip
        folder.input(open_fn, [folder, owner], [src, tgt, summary], api_name="inspect_open").then(
            _first_page, None, page_no, queue=False, **private
        ).then(filter_fn, view, out, api_name="inspect_refilter", **private, **rows)
        page.load(common.ensure_owner, owner, owner, queue=False, **private).then(
            list_fn, [owner, last_generated, folder], folder, api_name="inspect_list"
        ).then(open_fn, [folder, owner], [src, tgt, summary], api_name="inspect_reopen",
               **private).then(filter_fn, view, out,
                               api_name="inspect_first_filter", **private, **rows)  # fmt: skip
        relist.click(list_fn, [owner, last_generated, folder], folder,
                     api_name="inspect_relist", **private)  # fmt: skip
        # Live: a filter or sort change shows page 1 of the new selection (histograms included).
        for widget in (src, tgt, kept, sort, descending):
            widget.input(_first_page, None, page_no, queue=False, **private).then(
                filter_fn, view, out, show_progress="hidden", **private, **rows
            )
        for widget in (s_min, s_max, f_min, f_max):
            widget.release(_first_page, None, page_no, queue=False, **private).then(
                filter_fn, view, out, show_progress="hidden", **private, **rows
            )
        page_no.submit(filter_fn, view, out, **private, **rows)
        prev_btn.click(_step_page(-1), page_no, page_no, queue=False, **private).then(
            filter_fn, view, out, **private, **rows
        )
        next_btn.click(_step_page(1), page_no, page_no, queue=False, **private).then(
            filter_fn, view, out, **private, **rows
        )
        from_gallery, from_table = _select_actions(settings)
        gallery.select(from_gallery, [folder, owner, ids], [detail_img, detail], **private, **rows)
        table.select(from_table, [folder, owner, ids], [detail_img, detail, gallery], **private,
                     **rows)  # fmt: skip
    return page


def _first_page() -> int:
    return 1


def _step_page(delta: int):
    def step(page: float | None) -> int:
        """The page number moved by ``delta`` (the filter clamps it to the pages there are)."""
        return max(1, int(page or 1) + delta)

    return step


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
