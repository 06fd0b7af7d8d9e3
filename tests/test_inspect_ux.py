"""The Inspect page on a 200-class synthetic folder (mixup, no model): filter, sort and page
through a frame, the gallery and the table showing the same rows, the detail view with the full
metadata row, the score histograms following the filter."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from data200 import NUM_CLASSES, class_names, write_dataset, write_mixup_folder

from diffmix.generate import ROW_FIELDS
from diffmix.settings import Settings
from pages import inspect, jobs_ui


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("cub200") / "cub")


@pytest.fixture(scope="module")
def folder(cub: Path, workspace_home: Path) -> Path:
    """400 mixup rows (2 train images x 200 classes) in the workspace's synthetic folder."""
    return write_mixup_folder(
        cub, jobs_ui.stage_root("generate") / f"mix200-{uuid.uuid4().hex[:6]}"
    )


@pytest.fixture
def private(workspace_home: Path) -> Settings:
    return Settings.from_env({"DIFFMIX_HOME": str(workspace_home)})


def test_frame_filters_sorts_and_pages_like_the_rows(folder: Path) -> None:
    df, index = inspect.load_folder(folder)
    rows = index.rows()
    assert len(df) == len(rows) == 2 * NUM_CLASSES
    assert inspect.load_folder(folder)[0] is df  # read once per metadata version
    names = class_names()
    shown = inspect.filter_frame(
        df, target_classes=names[:50], faithfulness=(0.5, 1.0), kept="kept"
    )
    expect = [i for i, r in enumerate(rows) if r["target_class"] in names[:50]
              and r["faithfulness"] >= 0.5 and r["kept"]]  # fmt: skip
    assert list(shown["row"]) == expect and 0 < len(expect) < len(rows)
    assert inspect.filter_rows(rows, target_classes=names[:50], faithfulness=(0.5, 1.0),
                               kept="kept") == [rows[i] for i in expect]  # fmt: skip
    # sorted by faithfulness, best first; stable by file order on ties
    ordered = inspect.sort_frame(df, "faithfulness", descending=True)
    faith = ordered["faithfulness"].to_numpy()
    assert (np.diff(faith) <= 0).all() and faith[0] == df["faithfulness"].max()
    by_class = inspect.sort_frame(df, "target class")
    assert list(by_class["target_class"]) == sorted(df["target_class"])
    with pytest.raises(ValueError, match="sort by one of"):
        inspect.sort_frame(df, "beauty")
    # pages: 400 rows -> 17 pages of 24; a page past the end shows the last one
    assert inspect.page_count(len(df)) == 17
    part, p = inspect.page_frame(ordered, 99)
    assert p == 17 and len(part) == 400 - 16 * inspect.PER_PAGE
    assert list(inspect.page_frame(ordered, 2)[0]["row"]) == list(ordered["row"].iloc[24:48])


def test_histograms_follow_the_filter(folder: Path) -> None:
    df, _ = inspect.load_folder(folder)
    shown = inspect.filter_frame(df, faithfulness=(0.0, 0.3))
    fig = inspect.score_histograms(df, shown)
    every, matching = fig.data[0], fig.data[1]  # faithfulness: all rows, then the filtered
    assert sum(every.y) == len(df) and sum(matching.y) == len(shown) < len(df)
    assert all(m == 0 for x, m in zip(matching.x, matching.y, strict=True) if x > 0.3)
    empty = inspect.score_histograms(df.assign(faithfulness=np.nan, diversity=np.nan), shown)
    assert not empty.data and "no scores yet" in empty.layout.annotations[-1].text


def test_filter_listener_gallery_and_table_show_the_same_page(
    folder: Path, private: Settings
) -> None:
    fn = inspect._filter_action(private)
    table, gallery, summary, hist, ids, page = fn(
        folder.name, None, [], [], 0.0, 1.0, 0.0, 1.0, "all", 3, "diversity", True)  # fmt: skip
    rows = inspect.load_folder(folder)[1].rows()
    assert page == 3 and len(ids) == len(gallery) == len(table) == inspect.PER_PAGE
    assert list(table["row"]) == ids and list(table["file"]) == [rows[i]["file_name"] for i in ids]
    divs = [rows[i]["diversity"] for i in ids]
    assert divs == sorted(divs, reverse=True)
    assert [c for _, c in gallery] == [inspect.caption(rows[i]) for i in ids]
    assert "**400 of 400 images** match" in summary and "page 3 of 17" in summary
    assert len(hist.data) == 4
    # the table's row k and the gallery's item k select the same sample
    from_gallery, from_table = inspect._select_actions(private)
    img_g, text_g = from_gallery(folder.name, None, ids, SimpleNamespace(index=5))
    img_t, text_t, gal = from_table(folder.name, None, ids, SimpleNamespace(index=[5, 2]))
    assert text_g == text_t and f"Row {ids[5]}:" in text_g and gal["selected_index"] == 5
    assert img_g.size == img_t.size == (2 * 256 + 6, 256)
    # a page past the end is clamped; a bad folder name is one readable line
    assert fn(folder.name, None, [], [], 0, 1, 0, 1, "all", 500)[5] == 17
    assert "not allowed" in fn("../x", None, [], [], 0, 1, 0, 1, "all", 1)[2]


def test_detail_shows_every_metadata_field_and_explains_the_label(
    folder: Path, private: Settings
) -> None:
    rows = inspect.load_folder(folder)[1].rows()
    image, text = inspect._detail_action(private)(folder.name, None, 7)
    row = rows[7]
    for key in row:
        assert f"| `{key}` |" in text, key
    assert [k for k in ROW_FIELDS if k in row] == [k for k in ROW_FIELDS if f"`{k}`" in text]
    assert "Soft label:" in text and "pixel" in text  # mixup: the exact pixel share
    assert "Scored by the `smallcnn` judge" in text
    gamma_row = {**row, "label_rule": "diffmix-gamma", "strategy": "diff-mix", "gamma": 0.5}
    assert "follows s^γ, not what the image looks like" in inspect.detail_markdown(gamma_row)
    _, missing = inspect._detail_action(private)(folder.name, None, 4000)
    assert "row 4000 is outside 0..399" in missing


def test_export_uses_the_same_filter(folder: Path, private: Settings) -> None:
    names = class_names()
    msg, _ = inspect._export_action(private)(folder.name, None, names[:3], [], 0, 1, 0, 1, "all",
                                             f"sub-{uuid.uuid4().hex[:6]}")  # fmt: skip
    expect = sum(1 for r in inspect.load_folder(folder)[1].rows() if r["source_class"] in names[:3])
    assert f"Exported {expect} images" in msg


def test_thirty_thousand_rows_filter_and_page_in_frames(tmp_path: Path) -> None:
    """A CUB-sized folder's metadata (30,000 rows) through the page's frame functions."""
    rng = np.random.default_rng(0)
    names = class_names()
    rows = [{"file_name": f"{names[k % 200]}/{k:07d}.png", "source_class": names[(k * 7) % 200],
             "target_class": names[k % 200], "strength": 0.7, "faithfulness": float(f),
             "diversity": float(d), "kept": bool(f > 0.1)}
            for k, (f, d) in enumerate(zip(rng.random(30_000), rng.random(30_000), strict=True))]  # fmt: skip
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    df, index = inspect.load_folder(tmp_path)
    shown = inspect.sort_frame(inspect.filter_frame(df, faithfulness=(0.5, 1.0), kept="kept"),
                               "faithfulness", descending=True)  # fmt: skip
    part, p = inspect.page_frame(shown, 2)
    assert p == 2 and len(part) == inspect.PER_PAGE
    best = sorted((r["faithfulness"] for r in rows if r["faithfulness"] >= 0.5), reverse=True)
    assert list(part["faithfulness"]) == best[24:48]
    table = inspect.frame_table(part, index.rows(part["row"]))
    assert len(table) == inspect.PER_PAGE and table.iloc[0]["kept"] == "yes"
