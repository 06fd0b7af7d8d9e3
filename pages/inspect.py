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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix.data import ImageDataset, open_rgb  # noqa: E402
from diffmix.settings import Settings  # noqa: E402
from diffmix.synthetic import CONFIG_FILE, METADATA_FILE  # noqa: E402
from diffmix.synthetic import folder_rows as read_rows  # noqa: E402
from pages import common, jobs_ui  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "Inspect"
PATH = "inspect"
STAGE = "generate"
KEPT_CHOICES = ("all", "kept", "dropped")
NO_FOLDER = "No synthetic dataset chosen: make one on the **Generate** page, then pick it above."
PER_PAGE = 36
TABLE_COLUMNS = ["file", "source", "target", "strength", "faithfulness", "diversity", "kept"]


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


def _in_range(value: Any, lo: float, hi: float) -> bool:
    """Inside [lo, hi]; a missing value passes only an unrestricted [0, 1] range."""
    if not isinstance(value, (int, float)):
        return lo <= 0.0 and hi >= 1.0
    return lo - 1e-9 <= float(value) <= hi + 1e-9


def filter_rows(
    rows: Sequence[dict[str, Any]],
    *,
    source_classes: Sequence[str] | None = None,
    target_classes: Sequence[str] | None = None,
    strength: tuple[float, float] = (0.0, 1.0),
    faithfulness: tuple[float, float] = (0.0, 1.0),
    kept: str = "all",
) -> list[dict[str, Any]]:
    """Rows matching every filter (an empty class list means every class)."""
    if kept not in KEPT_CHOICES:
        raise ValueError(f"kept must be one of {', '.join(KEPT_CHOICES)}, got {kept!r}")
    s_lo, s_hi = sorted(float(x) for x in strength)
    f_lo, f_hi = sorted(float(x) for x in faithfulness)
    src, tgt = set(source_classes or []), set(target_classes or [])
    out = []
    for r in rows:
        if src and r.get("source_class") not in src:
            continue
        if tgt and r.get("target_class") not in tgt:
            continue
        if not _in_range(r.get("strength"), s_lo, s_hi):
            continue
        if not _in_range(r.get("faithfulness"), f_lo, f_hi):
            continue
        is_kept = r.get("kept", True) is not False
        if (kept == "kept" and not is_kept) or (kept == "dropped" and is_kept):
            continue
        out.append(r)
    return out


def rows_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a table (scores rounded)."""

    def num(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) else ""

    data = [
        [r.get("file_name"), r.get("source_class"), r.get("target_class"), r.get("strength"),
         num(r.get("faithfulness")), num(r.get("diversity")),
         "yes" if r.get("kept", True) is not False else "no"]
        for r in rows
    ]  # fmt: skip
    return pd.DataFrame(data, columns=TABLE_COLUMNS)


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


def pair_image(source: Image.Image | None, result: Image.Image, side: int = 128) -> Image.Image:
    """Source and result side by side (both fitted to ``side`` px; a grey box for no source)."""
    from PIL import ImageOps

    gap = 6
    canvas = Image.new("RGB", (2 * side + gap, side), (255, 255, 255))
    left = (
        ImageOps.contain(source.convert("RGB"), (side, side), Image.NEAREST)
        if source is not None
        else Image.new("RGB", (side, side), (200, 200, 200))
    )
    right = ImageOps.contain(result.convert("RGB"), (side, side), Image.NEAREST)
    canvas.paste(left, ((side - left.width) // 2, (side - left.height) // 2))
    canvas.paste(right, (side + gap + (side - right.width) // 2, (side - right.height) // 2))
    return canvas


def pairs(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    ds: ImageDataset | None,
    *,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> list[tuple[Image.Image, str]]:
    """Gallery items for one page of rows: ``source | result`` with a caption."""
    start = (max(1, page) - 1) * per_page
    out = []
    for r in rows[start : start + per_page]:
        try:
            result = open_rgb(folder / str(r["file_name"]))
        except (OSError, KeyError, ValueError):  # ValueError: ImageDecodeError
            continue
        src = source_image(ds, r) if ds is not None else None
        cap = f"{r.get('source_class')} → {r.get('target_class')} · s={r.get('strength')}"
        if isinstance(r.get("faithfulness"), (int, float)):
            cap += f" · f={r['faithfulness']:.2f}"
        if r.get("kept", True) is False:
            cap += " · dropped"
        out.append((pair_image(src, result), cap))
    return out


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


def summary_line(name: str, rows: Sequence[dict], shown: Sequence[dict], page: int) -> str:
    """``N of M images match · page p of P``."""
    pages = max(1, -(-len(shown) // PER_PAGE))
    kept = sum(1 for r in shown if r.get("kept", True) is not False)
    return (
        f"`{name}`: **{len(shown)} of {len(rows)} images** match ({kept} kept) · page "
        f"{min(max(1, page), pages)} of {pages} · left: source, right: result."
    )


# --------------------------------------------------------------------------- callbacks


def _folder(name: str | None, owner: str | None, settings: Settings) -> Path:
    if not name:
        raise ValueError("choose a synthetic dataset first")
    return jobs_ui.open_run(STAGE, name, owner=owner, settings=settings)


def _filter_action(settings: Settings):
    def inspect_filter(
        name: str | None, owner: str | None, source_classes: list[str] | None,
        target_classes: list[str] | None, s_min: float, s_max: float, f_min: float,
        f_max: float, kept: str, page: float | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Filter the folder's rows; the table, the source|result pairs and a summary line."""
        if not name:
            return gr.skip(), gr.skip(), NO_FOLDER
        try:
            folder = _folder(name, owner, settings)
            rows = read_rows(folder)
            shown = filter_rows(rows, source_classes=source_classes,
                                target_classes=target_classes, strength=(s_min, s_max),
                                faithfulness=(f_min, f_max), kept=kept)  # fmt: skip
            note = ""
            try:
                ds = source_dataset(read_record(folder), settings)
            except (*jobs_ui.USER_ERRORS, RuntimeError) as err:
                ds, note = None, " " + common.error_box(jobs_ui.readable_error(err), settings)
            p = int(page or 1)
            gallery = pairs(folder, shown, ds, page=p)
        except jobs_ui.USER_ERRORS as err:
            keep = gr.skip()
            return keep, keep, common.error_box(jobs_ui.readable_error(err), settings)
        return rows_table(shown), gallery, summary_line(folder.name, rows, shown, p) + note

    return inspect_filter


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
            shown = filter_rows(read_rows(folder), source_classes=source_classes,
                                target_classes=target_classes, strength=(s_min, s_max),
                                faithfulness=(f_min, f_max), kept=kept)  # fmt: skip
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
            "by classes, strength and faithfulness; export what you keep as a new dataset."
        )
        with gr.Row(equal_height=True):
            folder = gr.Dropdown(
                [], allow_custom_value=True, label="Synthetic dataset", scale=4, elem_id="in-folder"
            )
            relist = gr.Button("↻ Refresh", scale=1, elem_id="in-refresh")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                src = gr.Dropdown([], allow_custom_value=True, multiselect=True, label="Source classes (empty = all)",
                                  elem_id="in-source")  # fmt: skip
                tgt = gr.Dropdown([], allow_custom_value=True, multiselect=True, label="Target classes (empty = all)",
                                  elem_id="in-target")  # fmt: skip
                with gr.Row():
                    s_min = gr.Slider(0, 1, value=0, step=0.05, label="Strength from",
                                      elem_id="in-s-min")  # fmt: skip
                    s_max = gr.Slider(0, 1, value=1, step=0.05, label="to", elem_id="in-s-max")
                with gr.Row():
                    f_min = gr.Slider(0, 1, value=0, step=0.05, label="Faithfulness from",
                                      elem_id="in-f-min")  # fmt: skip
                    f_max = gr.Slider(0, 1, value=1, step=0.05, label="to", elem_id="in-f-max")
                kept = gr.Radio(list(KEPT_CHOICES), value="all", label="Filter flag",
                                elem_id="in-kept")  # fmt: skip
                with gr.Row():
                    page_no = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="in-page")
                    apply = gr.Button("Apply", variant="primary", elem_id="in-apply")
                with gr.Accordion("Export the filtered images", open=False):
                    new_name = gr.Textbox(label="New dataset name (optional)", max_lines=1,
                                          placeholder="<dataset>-subset-<date>-<time>",
                                          elem_id="in-export-name")  # fmt: skip
                    export = gr.Button("Export", elem_id="in-export")
                    export_msg = gr.Markdown(elem_id="in-export-message")
            with gr.Column(scale=2):
                summary = gr.Markdown("Choose a synthetic dataset.", elem_id="in-summary")
                gallery = gr.Gallery(label="Source | result", columns=4, height=520,
                                     object_fit="contain", elem_id="in-gallery")  # fmt: skip
        table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, max_height=360,
                             elem_id="in-table")  # fmt: skip
        common.next_step(
            "train", "Train",
            "train again with an exported subset (choose it in Synthetic datasets) and compare.",
        )  # fmt: skip

        filters = [folder, owner, src, tgt, s_min, s_max, f_min, f_max, kept]
        filter_fn = _filter_action(settings)
        private = {"api_visibility": "private"}
        # Public endpoints first, so that they keep their names; the rest is UI plumbing.
        open_fn, list_fn = _open_action(settings), _list_action(settings)
        out = [table, gallery, summary]
        apply.click(filter_fn, [*filters, page_no], out, api_name="inspect_filter")
        export.click(_export_action(settings), [*filters, new_name], [export_msg, folder],
                     api_name="inspect_export")  # fmt: skip
        folder.input(open_fn, [folder, owner], [src, tgt, summary], api_name="inspect_open").then(
            filter_fn, [*filters, page_no], out, api_name="inspect_refilter", **private
        )
        page.load(common.ensure_owner, owner, owner, queue=False, **private).then(
            list_fn, [owner, last_generated, folder], folder, api_name="inspect_list"
        ).then(open_fn, [folder, owner], [src, tgt, summary], api_name="inspect_reopen",
               **private).then(filter_fn, [*filters, page_no], out,
                               api_name="inspect_first_filter", **private)  # fmt: skip
        relist.click(list_fn, [owner, last_generated, folder], folder,
                     api_name="inspect_relist", **private)  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
