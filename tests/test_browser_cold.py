"""The first minute of a newcomer, in a real browser: a fresh workspace, the demo, Translate.

Issue 16, item 1: the first translation's image must not wait for scoring (the first score
used to fit the demo's reference classifier: 561 s on a busy 2-core CPU, and the next slider
move waited behind it). This test starts ``app.py`` with the shipped nano model on an *empty*
workspace, loads the demo, opens Translate and measures (printed, and in the log):

- the time from the first Translate click to the result image (target < 15 s on 2 cores);
- the time from the next slider move to its image (target < 3 s).

The assertions are generous (the CI machine may be busy); the figures are what to read.
Screenshot: ``test-artifacts/cold-translate.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser_util import AppServer, browser_skips, choose, open_app, screenshot, start_app

pytestmark = [pytest.mark.browser, *browser_skips()]
logger = logging.getLogger(__name__)

#: Generous bounds (s): a failure means "waits for something it should not" (a judge fit took
#: 561 s), not "slow CPU": on a 2-core machine at load 8 one nano img2img call alone took 45 s.
FIRST_IMAGE_LIMIT_S = 120.0
SECOND_IMAGE_LIMIT_S = 120.0


@pytest.fixture(scope="module")
def cold_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """``app.py`` with its default model on a workspace nothing was ever written to."""
    home = tmp_path_factory.mktemp("cold-home")
    server = start_app(home, env={"DIFFMIX_MODEL": "nano"}, name="app-cold")
    yield server
    server.stop()


def _result_src(pg: Any) -> str:
    imgs = pg.locator("#tr-result img")
    return imgs.last.get_attribute("src") or "" if imgs.count() else ""


def _wait_new_result(pg: Any, old: str, timeout_s: float) -> float:
    """Seconds until the result image's source differs from ``old`` (fails after timeout)."""
    t0 = time.perf_counter()
    pg.wait_for_function(
        """old => { const imgs = document.querySelectorAll('#tr-result img');
                    if (!imgs.length) return false;
                    const src = imgs[imgs.length - 1].getAttribute('src') || '';
                    return src && src !== old; }""",
        arg=old,
        timeout=timeout_s * 1000,
    )
    return time.perf_counter() - t0


def test_first_translation_and_next_slider_move_are_fast(
    cold_server: AppServer, page: Any, record_property: Any
) -> None:
    from playwright.sync_api import expect

    pg = page
    open_app(pg, cold_server.url)
    choose(pg, "ds-source", "Demo")
    pg.click("#ds-load")  # renders the demo into the fresh workspace (not timed)
    expect(pg.locator("#ds-status .dm-info")).to_be_visible(timeout=180_000)
    pg.goto(f"{cold_server.url}/translate")
    pg.wait_for_selector(".gradio-container", state="visible")
    expect(pg.locator("#tr-selection")).to_contain_text("demo", timeout=90_000)
    expect(pg.locator("#tr-source img")).to_be_visible(timeout=90_000)  # first image picked

    # 1. First Translate click -> image (the model loads now: nothing was warmed)
    pg.click("#tr-go")
    first_s = _wait_new_result(pg, "", 300)
    # the page says scores follow, and then they come (the demo's judge ships fitted)
    expect(pg.locator("#tr-scores")).to_contain_text("Faithfulness", timeout=120_000)

    # 2. Next slider move -> its image
    old = _result_src(pg)
    track = pg.locator("#tr-strength input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    pg.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2)
    second_s = _wait_new_result(pg, old, 120)
    expect(pg.locator("#tr-scores")).to_contain_text("Faithfulness", timeout=120_000)
    assert pg.locator("#tr-info .dm-error").count() == 0, pg.locator("#tr-info").inner_text()
    screenshot(pg, "cold-translate")

    logger.warning("cold start: first Translate click -> image %.1f s; next slider move -> "
                   "image %.1f s", first_s, second_s)  # fmt: skip
    record_property("cold_first_image_s", round(first_s, 2))
    record_property("cold_second_image_s", round(second_s, 2))
    print(f"\ncold_first_image_s={first_s:.2f} cold_second_image_s={second_s:.2f}")  # noqa: T201
    assert first_s < FIRST_IMAGE_LIMIT_S, first_s
    assert second_s < SECOND_IMAGE_LIMIT_S, second_s
