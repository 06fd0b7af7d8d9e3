"""Make the walkthrough's six screenshots from one browser session on the demo.

    python docs/walkthrough/make_shots.py [--out docs/walkthrough] [--keep-home DIR]

Starts ``app.py`` with the shipped nano model (``DIFFMIX_MODEL=nano``) on a fresh workspace
and walks Dataset -> Personalize -> Translate -> Generate -> Train -> Inspect through each
page's "Next step" link (and Translate's "Send to Generate"), as docs/walkthrough.md tells it:

1. Dataset: the demo, 5-shot (60 images), seed 0.
2. Personalize: a run with the page's defaults (steps sized to this machine) is started.
   With ``--finish-personalize`` it runs to the end and its adapter is carried to the later
   pages (diff-mix); without, it is shown while it trains and cancelled, and the later pages
   use the base nano model (real-mix).
3. Translate: one source image toward another class with the base model at strength 0.7,
   the strength x seed grid and the strength sweep; "Send to Generate" carries the plan.
4. Generate: the sent plan, every selected image translated twice (multiplier 2).
5. Train: the Train page's defaults with that synthetic set pre-filled.
6. Inspect: the synthetic set, one sample's details open.

Each page is saved as a full-page JPEG under 200 KB (quality 80 or less, 1280 px wide) in
``--out``. Needs Debian's chromium and playwright (the browser tests' setup, ``make
browser-deps``).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's code, the test helpers

from browser_util import CHROMIUM, CHROMIUM_ARGS, choose, set_number, start_app  # noqa: E402

logger = logging.getLogger("make_shots")
#: Longest wait for one background job (s); the CPU is shared.
JOB_TIMEOUT_S = 1800
PAGE_TIMEOUT_MS = 180_000
#: Generate: images per selected image (the demo's 5-shot subset has 60).
GENERATE_MULTIPLIER = 2
#: Translate's strength for the single preview (the sweep shows 0.1 ... 0.9).
TRANSLATE_STRENGTH = 0.7


#: Largest JPEG kept in the repository (bytes); quality drops in steps of 5 to stay under it.
MAX_BYTES = 200_000


def to_jpeg(png: bytes, path: Path, quality: int = 80, min_quality: int = 50) -> int:
    """``png`` as a JPEG at ``path`` under :data:`MAX_BYTES` (quality ``quality`` down to
    ``min_quality``, then the width scaled down); returns its size in bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        for q in range(quality, min_quality - 1, -5):
            img.save(path, "JPEG", quality=q, optimize=True, progressive=True)
            if path.stat().st_size <= MAX_BYTES:
                logger.info("saved %s (%d KB, quality %d, %dx%d)", path,
                            path.stat().st_size // 1024, q, *img.size)  # fmt: skip
                return path.stat().st_size
        img = img.resize((int(img.width * 0.9), int(img.height * 0.9)), Image.LANCZOS)


def save_jpeg(pg: Any, path: Path) -> int:
    """A full-page screenshot of ``pg`` as a JPEG at ``path`` (:func:`to_jpeg`)."""
    png = pg.screenshot(full_page=True)
    return to_jpeg(png, path)


def _next(pg: Any, ready: str, text: str) -> None:
    """Follow the page's "Next step" link; wait until ``ready`` shows ``text``."""
    from playwright.sync_api import expect

    link = pg.locator("#next-step")
    link.scroll_into_view_if_needed()
    with pg.expect_navigation():
        link.click()
    pg.wait_for_selector(".gradio-container", state="visible")
    expect(pg.locator(ready)).to_contain_text(text, timeout=PAGE_TIMEOUT_MS)


def _wait_state(pg: Any, prefix: str, states: tuple[str, ...]) -> str:
    sel = ", ".join(f"#{prefix}-progress .dm-progress[data-state={s}]" for s in states)
    pg.wait_for_selector(sel, timeout=JOB_TIMEOUT_S * 1000)
    return pg.locator(f"#{prefix}-progress .dm-progress").get_attribute("data-state")


def _points(pg: Any, elem_id: str) -> int:
    """How many points the first trace of the plotly chart in ``elem_id`` has."""
    plot = pg.locator(f"#{elem_id} .js-plotly-plot")
    if plot.count() == 0:
        return 0
    return plot.evaluate("el => (el.data[0] && el.data[0].x) ? el.data[0].x.length : 0")


def _settle(pg: Any, seconds: float = 2.0) -> None:
    """Let plots and images finish drawing before a screenshot."""
    time.sleep(seconds)


def walk(url: str, out: Path, *, finish_personalize: bool) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        pg.set_default_timeout(PAGE_TIMEOUT_MS)

        # 1. Dataset
        pg.goto(url)
        pg.wait_for_selector(".gradio-container", state="visible")
        choose(pg, "ds-source", "Demo")
        choose(pg, "ds-subset", "few-shot")
        set_number(pg, "ds-shots", 5)
        pg.click("#ds-load")
        expect(pg.locator("#ds-status .dm-info")).to_contain_text("5-shot")
        _settle(pg)
        save_jpeg(pg, out / "1-dataset.jpg")

        # 2. Personalize: start with the page's defaults; finish (the adapter is carried) or
        # show it training and cancel (the later pages then use the base model)
        _next(pg, "#pz-selection", "5-shot")
        pg.click("#pz-start")
        _wait_state(pg, "pz", ("running",))
        if finish_personalize:
            state = _wait_state(pg, "pz", ("done", "failed", "crashed"))
            if state != "done":
                raise RuntimeError(f"personalize {state}: {pg.locator('#pz-status').inner_text()}")
            expect(pg.locator("#pz-sample img")).to_be_visible()
        else:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and _points(pg, "pz-loss") < 3:
                time.sleep(2)  # a few points on the loss curve (a progress event per 10 steps)
        _settle(pg, 4)
        save_jpeg(pg, out / "2-personalize.jpg")
        if not finish_personalize:
            pg.click("#pz-cancel")
            logger.info("personalize: %s", _wait_state(pg, "pz", ("cancelled", "done")))

        # 3. Translate: a source, one preview, the strength x seed grid, the sweep
        _next(pg, "#tr-selection", "5-shot")
        expect(pg.locator("#tr-gallery img").first).to_be_visible()
        pg.locator("#tr-gallery .thumbnail-item").nth(2).click()
        expect(pg.locator("#tr-source img")).to_be_visible()
        set_number(pg, "tr-strength", TRANSLATE_STRENGTH)
        pg.click("#tr-go")
        expect(pg.locator("#tr-scores")).to_contain_text("Faithfulness")
        expect(pg.locator("#tr-info")).to_contain_text("1 image(s)")
        pg.click("#tr-grid-go")  # the strength x seed grid, with its defaults
        expect(pg.locator("#tr-grid img")).to_have_count(9)
        pg.click("#tr-sweep")
        pg.wait_for_function(
            "() => { const el = document.querySelector('#tr-sweep-plot .js-plotly-plot');"
            " return el && el.data && el.data.length >= 2; }"
        )
        _settle(pg, 4)
        save_jpeg(pg, out / "3-translate.jpg")

        strategy = pg.locator("#tr-strategy input").input_value()
        logger.info("translate strategy: %s", strategy)

        # 4. Generate: the plan sent from Translate, every selected image twice
        pg.locator("#tr-send").scroll_into_view_if_needed()
        pg.click("#tr-send")
        pg.wait_for_url("**/generate")
        expect(pg.locator("#gen-sent")).to_contain_text("Sent from Translate")
        set_number(pg, "gen-multiplier", GENERATE_MULTIPLIER)
        pg.click("#gen-estimate-btn")
        expect(pg.locator("#gen-estimate")).to_contain_text(f"{60 * GENERATE_MULTIPLIER} images")
        pg.click("#gen-start")
        state = _wait_state(pg, "gen", ("done", "failed", "crashed"))
        if state != "done":
            raise RuntimeError(f"generation {state}: {pg.locator('#gen-status').inner_text()}")
        expect(pg.locator("#gen-gallery img").first).to_be_visible()
        _settle(pg, 4)
        save_jpeg(pg, out / "4-generate.jpg")

        # 5. Train: the synthetic set pre-filled, the page's defaults
        _next(pg, "#tn-selection", "5-shot")
        expect(pg.locator("#tn-synthetic")).to_contain_text(strategy)  # the set just made
        pg.click("#tn-start")
        state = _wait_state(pg, "tn", ("done", "failed", "crashed"))
        if state != "done":
            raise RuntimeError(f"training {state}: {pg.locator('#tn-status').inner_text()}")
        expect(pg.locator("#tn-confusion .js-plotly-plot")).to_be_visible()
        _settle(pg, 4)
        save_jpeg(pg, out / "5-train.jpg")

        # 6. Inspect: the synthetic set, one sample's details
        _next(pg, "#in-summary", "images")
        expect(pg.locator("#in-gallery img").first).to_be_visible()
        pg.locator("#in-gallery .thumbnail-item").nth(0).click()
        expect(pg.locator("#in-detail")).not_to_be_empty()
        _settle(pg, 4)
        save_jpeg(pg, out / "6-inspect.jpg")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "walkthrough")
    ap.add_argument("--finish-personalize", action="store_true",
                    help="let the Personalize run finish (its adapter is then used on the later "
                         "pages) instead of cancelling it after a few steps")  # fmt: skip
    ap.add_argument("--keep-home", type=Path, default=None,
                    help="workspace folder to use and keep (default: a temporary one)")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffmix-shots-") as tmp:
        home = args.keep_home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        server = start_app(home, env={"DIFFMIX_MODEL": "nano"}, name="app-walkthrough", timeout=600)
        try:
            walk(server.url, args.out, finish_personalize=args.finish_personalize)
        finally:
            server.stop()
            from diffmix import jobs

            for stage_dir in ("adapters", "synthetic", "runs"):  # jobs outlive the app
                for run in (home / stage_dir).glob("*"):
                    job = jobs.read_job(run)
                    if job is not None and jobs.is_alive(job):
                        jobs.cancel_job(run, grace_s=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
