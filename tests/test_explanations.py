"""Issue 16, item 6: γ, p, faithfulness, diversity, "kept" and the soft label are explained
where they first appear on the way Dataset -> ... -> Inspect, and the soft label is said to
follow s^γ, not the image. Checked on the built pages' own texts (markdown, labels, infos)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from diffmix.settings import Settings
from pages import generate, inspect, train, translate


def _texts(page: gr.Blocks) -> str:
    """Every static text of ``page``: markdown values, labels and info lines."""
    out: list[Any] = []
    for block in page.blocks.values():
        for attr in ("value", "label", "info"):
            value = getattr(block, attr, None)
            if isinstance(value, str):
                out.append(value)
    return "\n".join(out)


def test_each_term_is_explained_where_it_first_appears(private: Settings) -> None:
    tr = _texts(translate.build(private))
    # Translate: where faithfulness, diversity and the soft label first show
    assert "**faithfulness** = a reference classifier's probability of the target class" in tr
    assert "**diversity** = distance from the source (0 = unchanged)" in tr
    assert "(1 − s^γ)·source + s^γ·target" in tr and "**not the image**" in tr
    # Generate: where "kept" first shows (its filter)
    gen = _texts(generate.build(private))
    assert "Drop the least faithful fraction (kept: false)" in gen
    # Train: p and γ, each with its meaning and the authors' values
    tn = _texts(train.build(private))
    assert "swapped for a synthetic one with probability p" in tn
    assert "(1-s^γ)·A + s^γ·B (authors: 0.5)" in tn
    # Inspect: all of them again, in one glossary above the gallery
    glossary = _texts(inspect.build(private))
    for term in ("**Faithfulness**", "**Diversity**", "**Kept**", "**Soft label**"):
        assert term in glossary, term
    assert "it follows s^γ, not what the image looks like" in glossary
