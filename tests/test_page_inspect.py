"""The Inspect page without a browser: filters, pairs and exports.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

import pytest
from pageutil import _fake_synthetic, _name  # tests/ is on sys.path under pytest

from diffmix.settings import Settings
from pages import inspect


def test_inspect_filters_pairs_and_exports(
    fewshot: dict, private: Settings, public: Settings
) -> None:
    owner = "i" * 24
    src = _fake_synthetic(_name("insp"), fewshot["class_names"], owner=owner)
    rows = inspect.read_rows(src)
    assert len(rows) == 6
    assert len(inspect.filter_rows(rows, strength=(0.5, 1.0))) == 4
    assert len(inspect.filter_rows(rows, faithfulness=(0.4, 1.0))) == 3
    assert len(inspect.filter_rows(rows, kept="dropped")) == 1
    first_src = rows[1]["source_class"]
    assert [r["source_class"] for r in inspect.filter_rows(rows, source_classes=[first_src])] == [
        first_src
    ]
    assert inspect.filter_rows(rows, target_classes=["nobody"]) == []
    with pytest.raises(ValueError, match="kept must be one of"):
        inspect.filter_rows(rows, kept="maybe")
    table = inspect.rows_table(rows)
    assert list(table.columns) == inspect.TABLE_COLUMNS and list(table["kept"])[:2] == ["no", "yes"]
    # each result beside its source, found through the dataset spec and source_index / id
    ds = inspect.source_dataset(inspect.read_record(src), private)
    assert (
        inspect.source_image(ds, rows[2]).tobytes() == ds.image(rows[2]["source_index"]).tobytes()
    )
    moved = {**rows[2], "source_index": 0}  # a stale index: found again by its id
    assert inspect.source_image(ds, moved).tobytes() == ds.image(rows[2]["source_index"]).tobytes()
    items = inspect.pairs(src, rows, ds, page=1, per_page=4)
    assert len(items) == 4 and items[0][0].size == (2 * 128 + 6, 128) and "dropped" in items[0][1]
    assert len(inspect.pairs(src, rows, ds, page=2, per_page=4)) == 2
    # export the strong, kept images as a new synthetic dataset in the same format
    strong = inspect.filter_rows(rows, strength=(0.5, 1.0), kept="kept")
    dest = inspect.export_rows(src, strong, _name("strong"), owner=owner, filters={"kept": "kept"})
    assert [r["task"] for r in inspect.read_rows(dest)] == [r["task"] for r in strong]
    record = inspect.read_record(dest)
    assert record["exported_from"] == src.name and record["class_names"] == fewshot["class_names"]
    from diffmix.classify import read_synthetic

    syn = read_synthetic([dest], fewshot["class_names"], 0.5)
    assert len(syn.paths) == len(strong)
    assert dest.name in inspect.synthetic_names(owner=owner, settings=public)
    assert dest.name not in inspect.synthetic_names(owner="q" * 24, settings=public)
    with pytest.raises(ValueError, match="already exists"):
        inspect.export_rows(src, strong, dest.name, owner=owner)
    with pytest.raises(ValueError, match="nothing to export"):
        inspect.export_rows(src, [], _name("empty"), owner=owner)
    # the listener: a summary line, a table and the pairs
    out = inspect._filter_action(public)(src.name, owner, [], [], 0.5, 1.0, 0.0, 1.0, "all", 1)
    assert len(out[0]) == 4 and len(out[1]) == 4 and "4 of 6 images" in out[2]
    refused = inspect._filter_action(public)(src.name, "q" * 24, [], [], 0, 1, 0, 1, "all", 1)
    assert "another session" in refused[2]
