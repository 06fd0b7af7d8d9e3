"""Pages 2-6 in a real headless browser, on the demo with a tiny Stable Diffusion.

One app server (``DIFFMIX_MODEL`` = the tiny SD built by the ``tiny_sd_dir`` fixture) and one
browser page for the module, so the browser's localStorage carries the dataset selection, the
chosen adapter and the watched runs from page to page, as for a user. The tests run in file
order and walk Dataset -> Personalize -> Translate -> Generate -> Train -> Inspect through each
page's "Next step" link and the carried-forward selections only (issue 16): load the demo,
personalize a few steps (the finished adapter is carried, nobody presses "Use"), translate
with it (slider move -> image, then scores), generate a few images with it, train a small
classifier on real + the synthetic set the Train page pre-fills and watch its curve, inspect
the synthetic images and export a subset. Screenshots go
to ``test-artifacts/pages-*.png``.

Scoring needs the demo's reference classifier, which takes minutes to fit on a busy CPU: the
cached one of the developer workspace (``./workspace/refclf``) is copied in when present.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_util import (
    REPO,
    UI_TIMEOUT_MS,
    AppServer,
    browser_skips,
    choose,
    dataframe_rows,
    open_app,
    screenshot,
    set_number,
    start_app,
)

pytestmark = [pytest.mark.browser, *browser_skips()]

#: Longest wait for a background job (process start + a few steps on a shared CPU), ms.
JOB_TIMEOUT_MS = 150_000
DEMO_CLASSES = 12


def _generate_blocker() -> str | None:
    """Why a generation job cannot run in this version (None when it can)."""
    from pages import generate

    return generate.unavailable_reason()


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


@pytest.fixture(scope="module")
def pages_server(workspace_home: Path, tiny_sd_dir: Path) -> Iterator[AppServer]:
    """The app with the tiny SD as its model; jobs inherit the single-thread settings."""
    cached = REPO / "workspace" / "refclf"
    if cached.is_dir():
        dest = workspace_home / "refclf"
        dest.mkdir(exist_ok=True)
        for f in cached.iterdir():
            if not (dest / f.name).exists():
                shutil.copy2(f, dest / f.name)
    # The first score on a dataset fits its reference classifier (minutes on a CPU); do it
    # here, before the server starts, so no browser wait depends on it. Instant when cached.
    from diffmix.score import reference_classifier

    reference_classifier("demo")
    env = {"DIFFMIX_MODEL": str(tiny_sd_dir), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip
    server = start_app(workspace_home, env=env, name="app-pages")
    yield server
    server.stop()
    _stop_jobs(workspace_home)


def _stop_jobs(home: Path) -> None:
    """Jobs run in their own sessions and outlive the app: stop any a failed test left."""
    from diffmix import jobs

    for stage_dir in ("adapters", "synthetic", "runs"):
        for run in (home / stage_dir).glob("*"):
            job = jobs.read_job(run)
            if job is not None and jobs.is_alive(job):
                jobs.cancel_job(run, grace_s=20)


@pytest.fixture(scope="module")
def pg(browser: Any, pages_server: AppServer) -> Iterator[Any]:  # noqa: F811
    """One browser page for the module (localStorage persists between the tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    open_app(page, pages_server.url)
    choose(page, "ds-subset", "few-shot")
    set_number(page, "ds-shots", 5)
    page.click("#ds-load")
    _expect()(page.locator("#ds-status .dm-info")).to_contain_text("5-shot")
    yield page
    context.close()


def _goto(pg: Any, server: AppServer, path: str, ready: str, text: str) -> None:
    """Open a page and wait until its load events filled ``ready`` with ``text``.

    (Not ``networkidle``: on a busy CPU the page's first events can keep it waiting.)
    """
    pg.goto(f"{server.url}/{path}")
    pg.wait_for_selector(".gradio-container", state="visible")
    _expect()(pg.locator(ready)).to_contain_text(text, timeout=90_000)


def _next(pg: Any, ready: str, text: str) -> None:
    """Follow the page's "Next step" link; wait until the next page's ``ready`` shows ``text``."""
    link = pg.locator("#next-step")
    link.scroll_into_view_if_needed()
    with pg.expect_navigation():
        link.click()
    pg.wait_for_selector(".gradio-container", state="visible")
    _expect()(pg.locator(ready)).to_contain_text(text, timeout=90_000)


def _wait_state(pg: Any, prefix: str, states: tuple[str, ...], timeout: float = JOB_TIMEOUT_MS):
    """Wait until the job panel's progress bar shows one of ``states``; return it."""
    sel = ", ".join(f"#{prefix}-progress .dm-progress[data-state={s}]" for s in states)
    pg.wait_for_selector(sel, timeout=timeout)
    state = pg.locator(f"#{prefix}-progress .dm-progress").get_attribute("data-state")
    assert state in states, (state, pg.locator(f"#{prefix}-status").inner_text())
    return state


def _set(pg: Any, elem_id: str, value: float) -> None:
    """``set_number``, then check that the box kept the value (inputs re-render on open)."""
    box = pg.locator(f"#{elem_id} input[type=number]").first
    _expect()(box).to_be_visible()
    for _ in range(3):
        set_number(pg, elem_id, value)
        if float(box.input_value() or "nan") == float(value):
            return
        time.sleep(0.5)
    _expect()(box).to_have_value(str(value))


def _more_options(pg: Any) -> None:
    """Open the page's "More options" accordion and let it render."""
    pg.get_by_text("More options").first.click()
    time.sleep(0.5)


def _points(pg: Any, elem_id: str, trace: int = 0) -> int:
    """How many points trace ``trace`` of the plotly chart in ``elem_id`` has."""
    plot = pg.locator(f"#{elem_id} .js-plotly-plot")
    if plot.count() == 0:
        return 0
    return plot.evaluate(
        f"el => (el.data[{trace}] && el.data[{trace}].x) ? el.data[{trace}].x.length : 0"
    )


def _no_error(pg: Any, elem_id: str) -> None:
    errors = pg.locator(f"#{elem_id} .dm-error")
    assert errors.count() == 0, errors.first.inner_text()


# --------------------------------------------------------------------------- personalize


def test_personalize_a_few_steps_and_use_the_adapter(pg: Any, pages_server: AppServer) -> None:
    expect = _expect()
    screenshot(pg, "pages-dataset")
    _next(pg, "#pz-selection", "5-shot")  # the Dataset page's "next step"
    _more_options(pg)
    _set(pg, "pz-sample-every", 10)
    _set(pg, "pz-batch", 2)
    _set(pg, "pz-steps", 20)
    _set(pg, "pz-rank", 4)
    _set(pg, "pz-seed", 3)  # another subset than the selection's: refused with a message
    pg.click("#pz-start")
    expect(pg.locator("#pz-message .dm-error")).to_contain_text("would draw another few-shot")
    assert "Traceback" not in pg.locator("#pz-message").inner_text()
    _set(pg, "pz-seed", 0)
    pg.locator("#pz-name input, #pz-name textarea").first.fill("ui-adapter")
    pg.click("#pz-start")
    expect(pg.locator("#pz-message .dm-info")).to_contain_text("ui-adapter")
    _wait_state(pg, "pz", ("running", "done"))
    screenshot(pg, "pages-personalize-running")
    state = _wait_state(pg, "pz", ("done", "failed", "crashed"))
    assert state == "done", pg.locator("#pz-status").inner_text()
    expect(pg.locator("#pz-status")).to_contain_text("step 20/20")
    assert _points(pg, "pz-loss") == 2  # progress events every 10 steps
    expect(pg.locator("#pz-sample img")).to_be_visible()
    expect(pg.locator("#pz-sample")).to_contain_text("step 20")
    rows = dataframe_rows(pg, "pz-adapters")
    assert any(r[0] == "ui-adapter" and r[1] == "done" for r in rows), rows
    # the finished run is offered for later pages; nobody has to press "Use": it is carried
    expect(pg.locator("#pz-use-name input")).to_have_value("ui-adapter")
    screenshot(pg, "pages-personalize")


# --------------------------------------------------------------------------- translate


def test_translate_slider_gives_image_and_scores(pg: Any, pages_server: AppServer) -> None:
    expect = _expect()
    _next(pg, "#tr-selection", "5-shot")  # Personalize's "next step"
    # the adapter just trained is carried forward (not the base model)
    expect(pg.locator("#tr-selection")).to_contain_text("ui-adapter")
    expect(pg.locator("#tr-strategy input")).to_have_value("diff-mix")
    expect(pg.locator("#tr-gallery img").first).to_be_visible()
    assert pg.locator("#tr-gallery img").count() >= DEMO_CLASSES
    # pick the third image as the source
    pg.locator("#tr-gallery .thumbnail-item").nth(2).click()
    expect(pg.locator("#tr-source-index input")).not_to_have_value("")
    expect(pg.locator("#tr-source img")).to_be_visible()
    # move the slider to ~0.7 with the mouse: its release translates
    track = pg.locator("#tr-strength input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    pg.mouse.click(box["x"] + box["width"] * 0.68, box["y"] + box["height"] / 2)
    expect(pg.locator("#tr-scores")).to_contain_text("Faithfulness", timeout=120_000)
    _no_error(pg, "tr-info")
    strength = float(pg.locator("#tr-strength input[type=number]").input_value())
    assert 0.55 <= strength <= 0.85, strength
    expect(pg.locator("#tr-result img").first).to_be_visible()
    expect(pg.locator("#tr-label")).to_contain_text("%")
    info = pg.locator("#tr-info").inner_text()
    assert "1 image(s) in" in info, info
    # a sweep: five strengths in one call, then the score curves
    pg.click("#tr-sweep")
    plot = pg.locator("#tr-sweep-plot .js-plotly-plot")
    expect(plot).to_be_visible(timeout=120_000)
    # the empty plot ("no data yet") is visible before the sweep: wait for its curves
    pg.wait_for_function(
        "() => { const el = document.querySelector('#tr-sweep-plot .js-plotly-plot');"
        " return el && el.data && el.data.length >= 2; }",
        timeout=120_000,
    )
    names = plot.evaluate("el => el.data.map(t => t.name)")
    assert names[:2] == ["faithfulness", "diversity"], names
    assert _points(pg, "tr-sweep-plot") == 5
    assert pg.locator("#tr-sweep-gallery img").count() == 6  # source + 5 strengths
    screenshot(pg, "pages-translate")


# --------------------------------------------------------------------------- generate


def test_generate_a_few_images_with_the_adapter(pg: Any, pages_server: AppServer) -> None:
    blocker = _generate_blocker()
    if blocker:
        pytest.skip(blocker)
    expect = _expect()
    _next(pg, "#gen-selection", "ui-adapter")  # Translate's "next step", adapter carried
    expect(pg.locator("#gen-strategy input")).to_have_value("diff-mix")
    pg.locator("#gen-strengths input, #gen-strengths textarea").first.fill("0.5, 0.9")
    _more_options(pg)
    _set(pg, "gen-limit", 12)
    _set(pg, "gen-steps", 5)
    _set(pg, "gen-multiplier", 1)
    pg.click("#gen-estimate-btn")
    expect(pg.locator("#gen-estimate")).to_contain_text("12 images")
    expect(pg.locator("#gen-estimate")).to_contain_text("--strengths 0.5,0.9")
    pg.locator("#gen-name input, #gen-name textarea").first.fill("ui-synthetic")
    pg.click("#gen-start")
    expect(pg.locator("#gen-message .dm-info")).to_contain_text("ui-synthetic")
    state = _wait_state(pg, "gen", ("done", "failed", "crashed"))
    assert state == "done", pg.locator("#gen-status").inner_text()
    expect(pg.locator("#gen-gallery img").first).to_be_visible()
    assert pg.locator("#gen-gallery img").count() == 12
    expect(pg.locator("#gen-summary")).to_contain_text("12 images")
    screenshot(pg, "pages-generate")


# --------------------------------------------------------------------------- train


def test_train_smallcnn_with_synthetic_data(pg: Any, pages_server: AppServer) -> None:
    expect = _expect()
    with_synthetic = _generate_blocker() is None
    if with_synthetic:  # Generate's "next step"; the set just made is pre-filled
        _next(pg, "#tn-selection", "ui-synthetic")
        expect(pg.locator("#tn-synthetic")).to_contain_text("ui-synthetic")
    else:
        _goto(pg, pages_server, "train", "#tn-selection", "5-shot")
    pg.locator("#tn-arch input").fill("smallcnn")
    pg.locator("#tn-arch input").press("Enter")
    _more_options(pg)
    _set(pg, "tn-threads", 1)
    _set(pg, "tn-epochs", 2)
    _set(pg, "tn-resolution", 32)
    pg.locator("#tn-name input, #tn-name textarea").first.fill("ui-train")
    pg.click("#tn-start")
    expect(pg.locator("#tn-message .dm-info")).to_contain_text("ui-train")
    # the curve updates live: one point after the first epoch, two at the end
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    seen = set()
    while time.monotonic() < deadline:
        seen.add(_points(pg, "tn-curves"))
        if 2 in seen:
            break
        time.sleep(0.5)
    assert 2 in seen, (seen, pg.locator("#tn-status").inner_text())
    state = _wait_state(pg, "tn", ("done", "failed", "crashed"))
    assert state == "done", pg.locator("#tn-status").inner_text()
    heat = pg.locator("#tn-confusion .js-plotly-plot")
    expect(heat).to_be_visible()
    assert heat.evaluate("el => el.data[0].type") == "heatmap"
    assert _points(pg, "tn-per-class") == DEMO_CLASSES
    expect(pg.locator("#tn-compare")).to_contain_text("ui-train")
    rows = dataframe_rows(pg, "tn-compare")
    assert any(("ui-synthetic" if with_synthetic else "baseline") in r[0] for r in rows), rows
    screenshot(pg, "pages-train")


def test_cancel_then_resume_a_training_run(pg: Any, pages_server: AppServer) -> None:
    expect = _expect()
    _goto(pg, pages_server, "train", "#tn-selection", "5-shot")
    pg.locator("#tn-arch input").fill("smallcnn")
    pg.locator("#tn-arch input").press("Enter")
    _more_options(pg)
    _set(pg, "tn-threads", 1)
    _set(pg, "tn-epochs", 40)
    _set(pg, "tn-resolution", 32)
    pg.locator("#tn-name input, #tn-name textarea").first.fill("ui-cancel")
    pg.click("#tn-start")
    expect(pg.locator("#tn-message .dm-info")).to_contain_text("ui-cancel")
    _wait_state(pg, "tn", ("running",))
    expect(pg.locator("#tn-cancel")).to_be_enabled()
    pg.click("#tn-cancel")
    expect(pg.locator("#tn-message .dm-info")).to_contain_text("Cancel requested")
    assert _wait_state(pg, "tn", ("cancelled", "done", "failed", "crashed")) == "cancelled"
    expect(pg.locator("#tn-resume")).to_be_enabled()
    # a reload shows the same run, still resumable
    _goto(pg, pages_server, "train", "#tn-status", "ui-cancel")
    expect(pg.locator("#tn-status")).to_contain_text("cancelled")
    pg.click("#tn-resume")
    expect(pg.locator("#tn-message .dm-info")).to_contain_text("Resumed ui-cancel")
    _wait_state(pg, "tn", ("running",))
    pg.click("#tn-cancel")  # leave no job behind
    assert _wait_state(pg, "tn", ("cancelled", "done", "failed", "crashed")) in (
        "cancelled",
        "done",
    )
    screenshot(pg, "pages-train-cancelled")


# --------------------------------------------------------------------------- inspect


def test_inspect_filter_and_export(pg: Any, pages_server: AppServer) -> None:
    blocker = _generate_blocker()
    if blocker:
        pytest.skip(f"no synthetic dataset to inspect: {blocker}")
    expect = _expect()
    _goto(pg, pages_server, "train", "#tn-selection", "5-shot")
    _next(pg, "#in-summary", "12 of 12 images")  # Train's "next step"
    expect(pg.locator("#in-folder input")).to_have_value("ui-synthetic")
    expect(pg.locator("#in-gallery img").first).to_be_visible()
    assert pg.locator("#in-gallery img").count() == 12
    _set(pg, "in-s-min", 0.8)
    pg.click("#in-apply")
    expect(pg.locator("#in-summary")).not_to_contain_text("12 of 12")
    rows = dataframe_rows(pg, "in-table")
    assert rows and all(float(r[3]) >= 0.8 for r in rows), rows
    pg.get_by_text("Export the filtered images").click()
    pg.locator("#in-export-name input, #in-export-name textarea").first.fill("ui-strong")
    pg.click("#in-export")
    expect(pg.locator("#in-export-message .dm-info")).to_contain_text(
        f"Exported {len(rows)} images"
    )
    screenshot(pg, "pages-inspect")


# --------------------------------------------------------------------------- API


def test_translate_and_job_endpoints_through_gradio_client(pages_server: AppServer) -> None:
    from gradio_client import Client

    client = Client(pages_server.url, verbose=False)
    selection = client.predict(
        source="Demo", folder="", upload=None, hub="", split="train", subset="few-shot",
        shots=2, imbalance=0.1, seed=0, api_name="/load_dataset",
    )[0]  # fmt: skip
    names = selection["class_names"]
    pair, label, scores, info = client.predict(
        selection=selection, adapter=None, owner=None, source_mode="Dataset image",
        source_index=selection["indices"][0], upload=None, source_class=None, target=names[5],
        strategy="real-mix", seed=1, steps=10, strength=0.6, api_name="/translate",
    )  # fmt: skip
    assert len(pair) == 2 and "Faithfulness" in scores, (scores, info)
    assert label["label"] == names[5]
    # the plan of a generation, checked and estimated without starting it
    estimate = client.predict(
        probe=None, owner=None, selection=selection, adapter=None, strategy="real-mix",
        multiplier=3, strengths="0.5", targets="uniform", confusion_run=None, filter_bottom=0,
        limit=None, steps=25, seed=0, score=True, api_name="/generate_estimate",
    )  # fmt: skip
    assert "**72 images**" in estimate, estimate
