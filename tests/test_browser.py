"""The app in a real headless browser: the Dataset page end to end (and its API).

Drives ``python app.py`` in Debian's chromium through Playwright. Screenshots are written to
``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_util import (
    AppServer,
    browser_skips,
    choose,
    dataframe_rows,
    open_app,
    screenshot,
    set_number,
    start_app,
)
from PIL import Image

pytestmark = [pytest.mark.browser, *browser_skips()]

DEMO_CLASSES = 12


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _load_and_wait(pg: Any, expected_text: str) -> None:
    """Press Load; fail with the page's error message if one appears instead."""
    expect = _expect()
    pg.click("#ds-load")
    status = pg.locator("#ds-status")
    expect(status.locator(".dm-info, .dm-error")).to_be_visible()
    expect(status).to_contain_text(expected_text)
    assert status.locator(".dm-error").count() == 0, status.inner_text()


def _subset_row(pg: Any, label: str) -> list[str]:
    """The summary row of the subset ``label`` (columns as SUMMARY_COLUMNS)."""
    _expect()(pg.locator("#ds-summary")).to_contain_text(label)
    rows = [r for r in dataframe_rows(pg, "ds-summary") if len(r) == 7 and r[5] == label]
    assert rows, dataframe_rows(pg, "ds-summary")
    return rows[0]


def _chart_series(pg: Any) -> list[dict[str, Any]]:
    """The plotly traces drawn in the chart (name and y values)."""
    plot = pg.locator("#ds-chart .js-plotly-plot")
    _expect()(plot).to_be_visible()
    return plot.evaluate("el => el.data.map(t => ({name: t.name, y: Array.from(t.y)}))")


def test_dataset_page_demo_fewshot_then_longtail(app_server: AppServer, page: Any) -> None:  # noqa: F811
    expect = _expect()
    pg = page
    open_app(pg, app_server.url)
    expect(pg.locator("#app-header")).to_contain_text("Diff-Mix Studio")
    expect(pg.locator("#app-header")).to_contain_text("Private mode")

    # 1. Demo, few-shot 5.
    choose(pg, "ds-source", "Demo")
    choose(pg, "ds-subset", "few-shot")
    expect(pg.locator("#ds-shots")).to_be_visible()
    expect(pg.locator("#ds-imbalance")).to_be_hidden()
    set_number(pg, "ds-shots", 5)
    _load_and_wait(pg, "5-shot")
    row = _subset_row(pg, "5-shot")
    assert row[0] == "demo" and row[1] == "train"
    assert row[2] == str(DEMO_CLASSES) and row[3] == "60", row
    series = _chart_series(pg)
    assert [s["name"] for s in series] == ["full split", "5-shot"]
    assert series[1]["y"] == [5] * DEMO_CLASSES
    gallery = pg.locator("#ds-gallery img")
    expect(gallery.first).to_be_visible()
    assert gallery.count() >= DEMO_CLASSES
    expect(pg.locator("#ds-current")).to_contain_text("60 images")
    screenshot(pg, "dataset-fewshot")

    # 2. Long-tail 0.1: fewer images, a visibly decaying profile.
    choose(pg, "ds-subset", "long-tail")
    expect(pg.locator("#ds-imbalance")).to_be_visible()
    expect(pg.locator("#ds-shots")).to_be_hidden()
    set_number(pg, "ds-imbalance", 0.1)
    _load_and_wait(pg, "long-tail 0.1")
    row = _subset_row(pg, "long-tail 0.1")
    assert row[2] == str(DEMO_CLASSES)
    assert DEMO_CLASSES < int(row[3]) < 720, row
    y = _chart_series(pg)[1]["y"]
    assert y == sorted(y, reverse=True) and y[0] >= 5 * y[-1], y
    screenshot(pg, "dataset-longtail")

    # 3. The selection survives a reload (later pages read it from the browser).
    pg.reload()
    expect(pg.locator("#ds-current")).to_contain_text("long-tail 0.1")


def test_dataset_page_shows_errors_not_tracebacks(app_server: AppServer, page: Any) -> None:  # noqa: F811
    expect = _expect()
    pg = page
    open_app(pg, app_server.url)
    choose(pg, "ds-source", "Server folder")
    missing = "/definitely/not/a/dataset"
    pg.locator("#ds-folder textarea, #ds-folder input").first.fill(missing)
    pg.click("#ds-load")
    error = pg.locator("#ds-status .dm-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(missing)
    assert "Traceback" not in error.inner_text()
    screenshot(pg, "dataset-error")


def test_load_dataset_api(app_server: AppServer) -> None:  # noqa: F811
    from gradio_client import Client

    client = Client(app_server.url, verbose=False)
    assert (
        "/load_dataset"
        in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    out = client.predict(
        source="Demo",
        folder="",
        upload=None,
        hub="",
        split="train",
        subset="few-shot",
        shots=2,
        imbalance=0.1,
        seed=1,
        api_name="/load_dataset",
    )
    selection = out[0]
    assert selection["spec"] == "demo" and selection["seed"] == 1
    assert len(selection["indices"]) == 2 * DEMO_CLASSES
    assert len(selection["class_names"]) == DEMO_CLASSES


@pytest.fixture(scope="module")
def public_server(workspace_home: Path) -> Iterator[AppServer]:
    """A second server in public mode (as on a Hugging Face Space)."""
    env = {"DIFFMIX_PUBLIC": "1", "DIFFMIX_MAX_UPLOAD_MB": "5"}
    server = start_app(workspace_home, env=env, name="app-public")
    yield server
    server.stop()


def _tiny_zip(folder: Path) -> Path:
    """A zip of 3 classes x 3 small PNGs."""
    with zipfile.ZipFile(folder / "tiny-birds.zip", "w") as zf:
        for c, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), tuple(v + 10 * i for v in color)).save(buf, "PNG")
                zf.writestr(f"tiny/class{c}/img{i}.png", buf.getvalue())
    return folder / "tiny-birds.zip"


def test_public_mode_refuses_paths_and_accepts_uploads(
    public_server: AppServer,
    page: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    expect = _expect()
    pg = page
    open_app(pg, public_server.url)
    expect(pg.locator("#app-header")).to_contain_text("Public mode")
    # server folders: the box is there but disabled, with a note saying why
    choose(pg, "ds-source", "Server folder")
    expect(pg.locator("#ds-folder textarea, #ds-folder input").first).to_be_disabled()
    expect(pg.get_by_text("DIFFMIX_ALLOW_LOCAL_PATHS=1")).to_be_visible()
    # an uploaded zip is staged in the workspace and loads
    choose(pg, "ds-source", "Upload zip")
    pg.locator("#ds-upload input[type=file]").set_input_files(str(_tiny_zip(tmp_path)))
    expect(pg.locator("#ds-upload")).to_contain_text("tiny-birds")
    _load_and_wait(pg, "3 classes, 6 images")
    rows = dataframe_rows(pg, "ds-summary")
    assert rows[0][2:4] == ["3", "6"], rows
    assert rows[0][0] == "upload:tiny-birds.zip", rows
    assert [s["y"] for s in _chart_series(pg)] == [[2, 2, 2]]
    screenshot(pg, "dataset-public-upload")
