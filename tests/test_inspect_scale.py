"""The Inspect page at real dataset sizes (issue 15): a folder is held once, as columns.

A 60,000-row folder used to be held twice by the page -- every row parsed (~3 KB a row) plus a
frame of them -- 223 MB at 60k rows (busy machine). The page now keeps a row index (the filter
columns and where each line is) and parses only the rows it shows; two users opening the same
folder wait for one read.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from data200 import class_names

from diffmix import synthetic as sf
from pages import inspect

N_ROWS = 4000


def _row(k: int, names: list[str], rng: np.random.Generator) -> dict:
    """A row shaped like generate's (31 fields, a soft label, a prompt)."""
    src, tgt = names[(k * 7) % 200], names[k % 200]
    s = float(rng.choice([0.1, 0.5, 0.7, 0.9]))
    return {
        "file_name": f"{tgt}/{k:07d}.png", "task": k, "batch": k // 16, "source_index": k // 5,
        "source_id": f"train/{src}/{k // 5:05d}.jpg", "source_class": src, "target_class": tgt,
        "strength": s, "seed": 1000 + k, "strategy": "mixup", "prompt": f"mixup of {src} and {tgt}",
        "soft_label": {src: 1 - s, tgt: s}, "label_rule": "pixel-share",
        "faithfulness": None if k % 50 == 0 else float(rng.random()),
        "diversity": float(rng.random()), "judge": "smallcnn", "kept": bool(k % 9),
        "partner_index": k % 97, "partner_id": f"train/{tgt}/{k % 97:05d}.jpg", "steps_run": 0,
        "num_inference_steps": 25, "guidance_scale": 7.5, "gamma": 0.5, "model": "nano",
        "model_fingerprint": "3b355b1fb30e0d8c", "adapter": None, "adapter_fingerprint": None,
        "dataset_fingerprint": "9140e533ab5f69c5", "width": 64, "height": 64,
    }  # fmt: skip


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("big") / "syn"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = [_row(k, class_names(), rng) for k in range(N_ROWS)]
    (folder / sf.METADATA_FILE).write_text(sf.rows_text(rows))
    return folder, rows


def test_the_page_holds_a_folder_once_as_columns(big) -> None:
    """What the page keeps of a folder is its columns (~0.1 KB a row), not the parsed rows
    (~3 KB a row, held next to a frame of them before)."""
    folder, rows = big
    sf._ROWS_CACHE.clear()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        df, index = inspect.load_folder(folder)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(df) == len(index) == N_ROWS
    assert held / N_ROWS < 400, f"{held / N_ROWS:.0f} bytes held per row"
    # the same rows, filters and sort as the rows themselves give
    assert index.rows() == rows
    assert index.rows([7, 3999, 0]) == [rows[7], rows[3999], rows[0]]
    names = class_names()
    want = inspect.filter_rows(rows, source_classes=names[:20], faithfulness=(0.2, 0.8),
                               kept="kept")  # fmt: skip
    got = inspect.filter_frame(df, source_classes=names[:20], faithfulness=(0.2, 0.8),
                               kept="kept")  # fmt: skip
    assert index.rows(got["row"]) == want and 0 < len(want) < N_ROWS
    by_old = inspect.sort_frame(inspect.rows_frame(rows), "source class", descending=True)
    by_new = inspect.sort_frame(df, "source class", descending=True)
    assert list(by_new["row"]) == list(by_old["row"])
    for col in ("strength", "faithfulness", "diversity", "kept"):
        assert by_new[col].equals(by_old[col]), col
    part = by_new.iloc[:24]
    page_rows = index.rows(part["row"])
    table = inspect.frame_table(part, page_rows)
    assert list(table["row"]) == list(part["row"])  # positions in the file
    assert table.drop(columns="row").equals(inspect.rows_table(page_rows).drop(columns="row"))


def test_two_users_opening_one_folder_read_it_once(big, monkeypatch) -> None:
    folder, rows = big
    sf._ROWS_CACHE.clear()
    calls = [0]
    loads = sf._loads

    def slow(line):
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.5)  # the second user arrives while the first read is under way
        return loads(line)

    monkeypatch.setattr(sf, "_loads", slow)
    got: list = []
    users = [threading.Thread(target=lambda: got.append(inspect.load_folder(folder)))
             for _ in range(2)]  # fmt: skip
    for u in users:
        u.start()
    for u in users:
        u.join(120)
    assert len(got) == 2 and got[0][1] is got[1][1] and got[0][0] is got[1][0]
    assert calls[0] == N_ROWS  # one parse of each line, not two


def test_a_growing_folder_keeps_positions_and_reads_only_new_lines(big, tmp_path) -> None:
    folder, rows = big
    grow = tmp_path / "grow"
    grow.mkdir()
    path = grow / sf.METADATA_FILE
    path.write_text(sf.rows_text(rows[:100]))
    df, index = inspect.load_folder(grow)
    assert len(df) == 100
    with open(path, "a") as f:
        f.write(sf.rows_text(rows[100:150]) + json.dumps(rows[150])[:30])  # + a torn line
    df2, index2 = inspect.load_folder(grow)
    assert len(df2) == 150 and index2 is not index
    assert sf.index_rows(grow, [149, 5])[1] == [rows[149], rows[5]]
    assert inspect.load_folder(grow)[0] is df2  # unchanged file: the same frame
