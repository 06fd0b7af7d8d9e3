"""Diff-Mix Studio: the Gradio app (``python app.py``; a Hugging Face Space runs this file).

The app is a multipage ``gr.Blocks``: the first entry of :data:`PAGES` is the home page and
every other one is rendered under ``demo.route(TITLE, PATH)`` with its own URL and a navbar
entry. Each page module builds a standalone ``gr.Blocks`` (see :mod:`pages`), so a page can
also be run alone. Pages pass the dataset selection to each other through the browser
(:func:`pages.common.selection_state`), since every route is a separate page load.

Flags: ``--host`` (default 127.0.0.1, or ``$GRADIO_SERVER_NAME``), ``--port`` (default
``$GRADIO_SERVER_PORT`` or 7860), ``--share``. Operator settings come from the environment
(:mod:`diffmix.settings`). Nothing is downloaded at start-up and everything the app writes
goes to the workspace (``$DIFFMIX_HOME``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType

import gradio as gr

from diffmix.settings import Settings
from pages import common, dataset, generate, inspect, personalize, train, translate

logger = logging.getLogger("diffmix.app")

#: The pages in workflow order; the first one is served at "/". Later steps append here.
PAGES: list[ModuleType] = [dataset, personalize, translate, generate, train, inspect]


def _chrome(settings: Settings, home_title: str) -> None:
    """What every page shows above its content: the navbar names and the app header."""
    gr.Navbar(main_page_name=home_title, elem_id="app-navbar")
    common.header(settings)


def create_app(settings: Settings | None = None, pages: Sequence[ModuleType] = PAGES) -> gr.Blocks:
    """Build the multipage app without launching it (tests call this)."""
    settings = settings or common.get_settings()
    if not pages:
        raise ValueError("create_app needs at least one page")
    home, *rest = pages
    built = [page.build(settings) for page in pages]
    # Thumbnails and uploads in Gradio's cache are deleted hourly once a day old.
    with gr.Blocks(
        title=common.APP_TITLE, delete_cache=(3600, 86400), analytics_enabled=False
    ) as demo:
        _chrome(settings, home.TITLE)
        built[0].render()
    for page, blocks in zip(rest, built[1:], strict=True):
        with demo.route(page.TITLE, page.PATH):
            _chrome(settings, home.TITLE)
            blocks.render()
    logger.info("app built with pages: %s", ", ".join(p.TITLE for p in pages))
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: parse flags, build the app, serve it."""
    common.run(create_app, argv, description=f"{common.APP_TITLE} web app")


if __name__ == "__main__":
    main()
