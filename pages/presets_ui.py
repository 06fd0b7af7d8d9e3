"""Presets on a page (kohya_ss-style): save the page's settings under a name, load them back.

The files and their checks are :mod:`diffmix.presets`; this module is the row of widgets and
its listeners. Each page says how its widget values become config fields (``to_fields``) and
back (``from_fields``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffmix import presets
from diffmix.settings import Settings
from pages import common, jobs_ui

logger = logging.getLogger(__name__)


@dataclass
class PresetPanel:
    """The preset widgets of one page."""

    stage: str
    menu: gr.Dropdown
    name: gr.Textbox
    save: gr.Button
    load: gr.Button
    message: gr.Markdown


def preset_panel(stage: str, prefix: str) -> PresetPanel:
    """A collapsed "Presets" row: saved presets + built-in recipes, a name box, Load / Save."""
    with gr.Accordion("Presets: save or load these settings", open=False,
                      elem_id=f"{prefix}-presets"):  # fmt: skip
        with gr.Row(equal_height=True):
            menu = gr.Dropdown([], label="Preset", allow_custom_value=True, scale=3,
                               info="yours, then the authors' recipes (recipe:…, read-only)",
                               elem_id=f"{prefix}-preset")  # fmt: skip
            load = gr.Button("Load", scale=1, min_width=80, elem_id=f"{prefix}-preset-load")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Save as", max_lines=1, scale=3, placeholder="my settings",
                              elem_id=f"{prefix}-preset-name")  # fmt: skip
            save = gr.Button("Save", scale=1, min_width=80, elem_id=f"{prefix}-preset-save")
        message = gr.Markdown(elem_id=f"{prefix}-preset-message")
    return PresetPanel(stage, menu, name, save, load, message)


def _where(settings: Settings, owner: str | None) -> dict[str, Any]:
    return {"home": settings.home, "public": settings.public, "owner": owner}


def wire_presets(
    panel: PresetPanel,
    *,
    page: gr.Blocks,
    settings: Settings,
    owner: gr.BrowserState,
    widgets: Sequence[Any],
    to_fields: Callable[..., dict[str, Any]],
    from_fields: Callable[[dict[str, Any]], list[Any]],
) -> None:
    """Connect a :class:`PresetPanel`: the menu filled on page load, Save and Load.

    ``to_fields(*widget_values)`` turns the page's values into config fields (``ValueError``
    for a bad value); ``from_fields(fields)`` gives one update per widget (``gr.skip()`` for
    a field the preset does not hold).
    """
    stage = panel.stage

    def choices(owner: str | None, current: str | None = None) -> Any:
        names = presets.list_presets(stage, **_where(settings, owner))
        return gr.update(choices=names, value=current if current in names else None)

    def list_fn(owner: str | None) -> Any:
        """This visitor's presets of the stage, then the built-in recipes."""
        return choices(owner)

    def save_fn(owner: str | None, name: str | None, *values: Any) -> tuple[str, Any]:
        """Save the page's settings as preset ``name`` (checked by the stage's config)."""
        try:
            fields = to_fields(*values)
            path = presets.save_preset(stage, name, fields, **_where(settings, owner))
        except jobs_ui.USER_ERRORS as err:
            return common.error_box(jobs_ui.readable_error(err), settings), gr.skip()
        msg = common.info_box(f"Saved preset {path.stem} ({len(fields)} settings).", settings)
        return msg, choices(owner, path.stem)

    def load_fn(owner: str | None, name: str | None) -> list[Any]:
        """Fill the page's settings from a preset (checked by the stage's config first)."""
        skip = [gr.skip()] * len(widgets)
        try:
            fields = presets.load_preset(stage, name, **_where(settings, owner))
        except jobs_ui.USER_ERRORS as err:
            return [*skip, common.error_box(jobs_ui.readable_error(err), settings)]
        if not fields:
            return [*skip, common.info_box(f"{name} sets nothing on this page.", settings)]
        shown = ", ".join(f"{k}={v}" for k, v in fields.items())
        return [*from_fields(fields), common.info_box(f"Loaded {name}: {shown}.", settings)]

    page.load(list_fn, owner, panel.menu, queue=False, api_name=f"{stage}_presets")
    panel.save.click(save_fn, [owner, panel.name, *widgets], [panel.message, panel.menu],
                     api_name=f"{stage}_preset_save")  # fmt: skip
    panel.load.click(load_fn, [owner, panel.menu], [*widgets, panel.message],
                     api_name=f"{stage}_preset_load")  # fmt: skip
