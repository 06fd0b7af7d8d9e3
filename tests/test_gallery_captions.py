"""Issue 16, item 7 ("captions cut"): every gallery of the app wraps its captions instead of
cutting them ("corbane → sintaro · s=0.…" on Inspect, "mervish → pel…" on Generate)."""

from __future__ import annotations

import re

import gradio as gr

import app
from diffmix.settings import Settings
from pages import common


def _caption_rule_ids(css: str) -> set[str]:
    """The element ids named by the style sheet's caption-wrapping rule."""
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        if ".caption-label" in selectors and "white-space: normal" in body:
            return set(re.findall(r"#([\w-]+) \.caption-label", selectors))
    return set()


def test_every_gallery_wraps_its_captions(private: Settings) -> None:
    demo = app.create_app(private)
    galleries = {b.elem_id for b in demo.blocks.values() if isinstance(b, gr.Gallery)}
    assert {"tr-gallery", "gen-gallery", "in-gallery"} <= galleries, galleries
    wrapped = _caption_rule_ids(common.CSS_PATH.read_text())
    assert galleries - {None} <= wrapped, sorted(galleries - wrapped)
