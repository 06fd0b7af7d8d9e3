"""The new Translate controls through the app's API (gradio_client) and in a headless browser.

One app server on the demo with the shipped nano model (4 denoising steps): the typed prompt is
the prompt used, the strength × seed grid and its download, "Send to Generate" landing on
Generate with its fields filled. Screenshots go to ``test-artifacts/translate-ux-*.png``.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from browser_util import (
    REPO,
    UI_TIMEOUT_MS,
    AppServer,
    browser_skips,
    choose,
    open_app,
    screenshot,
    set_number,
    start_app,
)

from diffmix import grid

STEPS = 4
#: The browser test needs chromium + playwright; the API test runs without them.
_BROWSER_SKIPS = browser_skips()


@pytest.fixture(scope="module")
def ux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The app with nano on a workspace of its own (adapters other tests leave in the shared
    one would be carried forward and change the prompts); the developer workspace's fitted demo
    judge is copied in if present."""
    workspace_home = tmp_path_factory.mktemp("translate-ux-home")
    cached = REPO / "workspace" / "refclf"
    if cached.is_dir():
        dest = workspace_home / "refclf"
        dest.mkdir(exist_ok=True)
        for f in cached.iterdir():
            if not (dest / f.name).exists():
                shutil.copy2(f, dest / f.name)
    env = {"DIFFMIX_MODEL": "nano", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    server = start_app(workspace_home, env=env, name="app-translate-ux", timeout=400)
    yield server
    server.stop()


@pytest.mark.slow
def test_prompt_grid_download_and_send_through_the_api(ux_server: AppServer) -> None:
    from gradio_client import Client

    client = Client(ux_server.url, verbose=False)
    # a subset seed no other test personalizes on: no adapter of this selection is carried
    # forward from the shared workspace, so the page uses the class names throughout
    sel = client.predict(source="Demo", folder="", upload=None, hub="", split="train",
                         subset="few-shot", shots=2, imbalance=0.1, seed=4242,
                         api_name="/load_dataset")[0]  # fmt: skip
    names = sel["class_names"]
    opened = client.predict(selection=sel, adapter=None, owner=None, api_name="/translate_open")
    assert not opened[-1], "an adapter was carried forward; the test needs a fresh selection"
    prompt = opened[-3]  # ..., pager, prompt, prompt word, adapter
    word = names[1].replace("_", " ")
    assert prompt.startswith("a photo of a") and word in prompt, opened
    base = dict(selection=sel, adapter=None, owner=None, source_mode="Dataset image",
                source_index=sel["indices"][0], upload=None, source_class=None, target=names[1],
                strategy="real-mix", steps=STEPS)  # fmt: skip
    typed = prompt.replace("a photo of", "a pencil drawing of")
    *_, info = client.predict(**base, seed=0, strength=0.6, prompt=typed, guidance=6.0,
                              api_name="/translate")  # fmt: skip
    assert f"Prompt: “{html.escape(typed)}”" in info, info  # the info box is HTML
    cells, table, grid_info, zip_path = client.predict(
        **base, prompt=typed, guidance=6.0, strengths="0.4, 0.8", seeds="1, 2, 5",
        api_name="/translate_grid",
    )  # fmt: skip
    assert cells["columns"] == 2 and len(cells["value"]) == 6  # rows = seeds, columns = s
    assert "f=" in cells["value"][0]["caption"]  # the last update carries the scores
    assert "3 seeds (rows) × 2 strengths" in grid_info, grid_info
    assert [r[0] for r in table["data"]] == [1, 1, 2, 2, 5, 5]
    meta, images = grid.read_bundle(zip_path)
    assert [(c["seed"], c["strength"]) for c in meta["cells"]] == [
        (1, 0.4), (1, 0.8), (2, 0.4), (2, 0.8), (5, 0.4), (5, 0.8)]  # fmt: skip
    assert {c["prompt"] for c in meta["cells"]} == {typed}
    assert meta["settings"]["translate"]["guidance_scale"] == 6.0 and len(images) >= 7
    plan, msg, _watched = client.predict(selection=sel, adapter=None, owner=None, strategy="real-mix",
                               strength=0.6, guidance=6.0, prompt=typed,
                               source_index=sel["indices"][0], source_class=names[0],
                               target=names[1], api_name="/send_to_generate")  # fmt: skip
    assert not msg and "{token}" in plan["prompt_template"] and plan["strengths"] == "0.6"
    # Generate's plan endpoints take the new fields, and older clients that omit them still work
    plan_args = dict(probe=None, owner=None, selection=sel, adapter=None, strategy="real-mix",
                     multiplier=1, strengths="0.6", targets="uniform", confusion_run=None,
                     filter_bottom=0, limit=None, steps=STEPS, seed=0, score=True)  # fmt: skip
    plain = client.predict(**plan_args, api_name="/generate_estimate")
    assert "images**" in plain and "--prompt-template" not in plain, plain
    carried = client.predict(**plan_args, guidance=plan["guidance"],
                             prompt_template=plan["prompt_template"],
                             api_name="/generate_estimate")  # fmt: skip
    assert "--guidance-scale 6" in carried and "--prompt-template" in carried, carried


@pytest.mark.browser
@pytest.mark.slow
def test_translate_page_in_a_browser(browser: Any, ux_server: AppServer) -> None:
    if _BROWSER_SKIPS:
        pytest.skip(_BROWSER_SKIPS[0].kwargs["reason"])
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    try:
        open_app(pg, ux_server.url)
        choose(pg, "ds-subset", "few-shot")
        set_number(pg, "ds-shots", 3)
        pg.click("#ds-load")
        expect(pg.locator("#ds-status .dm-info")).to_contain_text("3-shot")
        expect(pg.locator("#ds-pager")).to_contain_text("Page 1 of 1")
        pg.goto(f"{ux_server.url}/translate")
        expect(pg.locator("#tr-gallery img").first).to_be_visible()
        expect(pg.locator("#tr-prompt textarea")).not_to_have_value("")
        assert "a photo of a" in pg.locator("#tr-prompt textarea").input_value()
        expect(pg.locator("#tr-pager")).to_contain_text("Page 1 of")
        pg.wait_for_load_state("networkidle", timeout=240_000)  # after start-up work
        set_number(pg, "tr-steps", STEPS)
        pg.locator("#tr-prompt textarea").fill("a pencil drawing of a flower")
        pg.locator("#tr-grid-seeds textarea, #tr-grid-seeds input").first.fill("0, 1")
        pg.click("#tr-grid-go")
        expect(pg.locator("#tr-grid img")).to_have_count(6, timeout=120_000)  # 2 seeds × 3 s
        expect(pg.locator("#tr-grid-download a").first).to_be_attached(timeout=60_000)
        pg.click("#tr-go")
        expect(pg.locator("#tr-result img").first).to_be_visible(timeout=120_000)
        expect(pg.locator("#tr-info")).to_contain_text("a pencil drawing of a flower")
        screenshot(pg, "translate-ux-page")
        # an out-of-range index answers with the range
        set_number(pg, "tr-source-index", 99999)
        pg.click("#tr-go")
        expect(pg.locator("#tr-info .dm-error")).to_contain_text("out of range 0..")
        set_number(pg, "tr-source-index", 0)
        # Send to Generate: Generate opens with the strategy, strength, guidance and prompt
        set_number(pg, "tr-guidance", 5.5)
        pg.click("#tr-send")
        pg.wait_for_url("**/generate", timeout=60_000)
        expect(pg.locator("#gen-selection")).to_contain_text("From Translate")
        expect(pg.locator("#gen-strengths input, #gen-strengths textarea").first).to_have_value(
            "0.5"
        )
        pg.get_by_text("More options").click()
        expect(pg.locator("#gen-guidance input").first).to_have_value("5.5")
        template = pg.locator("#gen-prompt-template textarea, #gen-prompt-template input").first
        expect(template).to_have_value("a pencil drawing of a flower")
        screenshot(pg, "translate-ux-generate")
    finally:
        context.close()
