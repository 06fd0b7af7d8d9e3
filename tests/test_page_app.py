"""The app: every page and its API, and page listeners wired in the whole app.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

import gradio as gr
import pytest

import app
from diffmix.settings import Settings
from pages import dataset, generate, inspect, personalize, train, translate


def test_app_has_every_page_and_its_api(private: Settings) -> None:
    demo = app.create_app(private)
    assert [p[0] for p in demo.pages] == [
        "",
        "personalize",
        "translate",
        "generate",
        "train",
        "inspect",
    ]
    public_api = {
        d.api_name for d in demo.fns.values() if getattr(d, "api_visibility", "public") == "public"
    }
    for stage in ("personalize", "generate", "train"):
        assert {
            f"{stage}_{a}" for a in ("open", "start", "cancel", "resume", "status", "runs")
        } <= public_api
    assert {"use_adapter", "clear_adapter", "list_adapters", "translate", "translate_sweep",
            "translate_open", "generate_estimate", "generate_probe", "train_compare",
            "inspect_list", "inspect_open", "inspect_filter", "inspect_export"} <= public_api  # fmt: skip
    # no gr.State anywhere: it would make Gradio hold a heartbeat connection on every page
    assert not [b for b in demo.blocks.values() if type(b) is gr.State]
    for page in (personalize, translate, generate, train, inspect):
        assert isinstance(page.build(private), gr.Blocks)


def test_personalize_page_class_balanced_menu(private: Settings) -> None:
    lt = dataset.load_selection("demo", subset="long-tail", imbalance=0.1, seed=0).selection
    kw = dict(model=None, steps=2, rank=4, lr=None, seed=0, sample_every=0, settings=private)
    assert "--no-class-balanced" in personalize.personalize_args(lt, class_balanced="off", **kw)
    assert "--class-balanced" in personalize.personalize_args(lt, class_balanced="on", **kw)
    auto = personalize.personalize_args(lt, class_balanced="auto (on for long-tail)", **kw)
    assert not any("class-balanced" in a for a in auto)  # the config's default: on for long-tail
    from diffmix import cli
    from diffmix.personalize import PersonalizeConfig

    ns = cli.build_parser().parse_args(["personalize", "--out", "x", *auto])  # spec after "--"
    cfg = PersonalizeConfig(**cli._stage_fields(ns, PersonalizeConfig, "personalize"))
    assert cfg.resolved().class_balanced is True
    with pytest.raises(ValueError, match="class-balanced sampling 'sometimes'"):
        personalize.personalize_args(lt, class_balanced="sometimes", **kw)
