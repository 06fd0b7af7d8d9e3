"""The Translate page without a browser: sources, requests, one batched sweep with scores.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pageutil import DEMO_CLASSES  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix.settings import Settings
from pages import common, translate


def test_source_gallery_and_defaults(fewshot: dict, private: Settings) -> None:
    ds, sub = common.open_selection(fewshot, private)
    thumbs, chosen = translate.source_gallery(ds, sub.indices, per_class=2)
    assert len(thumbs) == len(chosen) == 2 * DEMO_CLASSES
    assert set(chosen) <= set(sub.indices)
    assert thumbs[0][1] == f"#{chosen[0]} {ds.class_names[ds.items[chosen[0]].label]}"
    names = ["a", "b", "c"]
    assert translate.other_class(names, "c") == "a" and translate.other_class(names, None) == "a"
    assert translate.default_strategy(None) == "real-mix"
    assert translate.default_strategy({"name": "x"}) == "diff-mix"
    assert translate.default_strategy({"name": "x", "ti_only": True}) == "ti-mix"
    assert translate.display(Image.new("RGB", (64, 32))).size == (512, 256)
    assert translate.display(Image.new("RGB", (300, 300))).size == (300, 300)


def _request(fewshot: dict, settings: Settings, **kw: Any) -> translate.Request:
    ds, _ = common.open_selection(fewshot, settings)
    base = dict(source_mode="Dataset image", source_index=fewshot["indices"][0], upload=None,
                source_class=None, target_class=ds.class_names[3], strengths=[0.5],
                strategy="real-mix", seed=0, steps=8, settings=settings)  # fmt: skip
    return translate.build_request(fewshot, None, **{**base, **kw})


def test_sweep_is_one_call_with_scores(
    fewshot: dict, private: Settings, untrained_judge: None
) -> None:
    req = _request(fewshot, private, strengths=translate.SWEEP_STRENGTHS)
    assert req.source_class != req.target_class and req.model == private.model
    preview = translate.run_translation(req)
    assert [r.strength for r in preview.results] == list(translate.SWEEP_STRENGTHS)
    assert all(r.image.size == req.source.size for r in preview.results)
    assert [r.steps_run for r in preview.results] == [int(8 * s) for s in translate.SWEEP_STRENGTHS]
    lab = preview.results[-1].soft_label
    assert set(lab) == {req.source_class, req.target_class}
    assert sum(lab.values()) == pytest.approx(1.0)
    assert lab[req.target_class] == pytest.approx(0.9**0.5)
    assert "Scoring" in translate.scores_markdown(preview)
    translate.score_translation(preview)
    assert len(preview.faithfulness) == len(preview.diversity) == 5
    assert all(0 <= x <= 1 for x in preview.faithfulness + preview.diversity)
    assert "Faithfulness" in translate.scores_markdown(preview, 2)
    assert "5 image(s)" in translate.timing_line(preview) and "0–7 of 8" in translate.timing_line(
        preview
    )
    fig = translate.sweep_figure(
        req.strengths, preview.faithfulness, preview.diversity, chance=1 / 12
    )
    assert [t.name for t in fig.data] == ["faithfulness", "diversity"]
    assert list(fig.data[0].x) == list(translate.SWEEP_STRENGTHS)


def test_translate_requests_are_checked(fewshot: dict, private: Settings, tmp_path: Path) -> None:
    ds, _ = common.open_selection(fewshot, private)
    rgb, rgba = tmp_path / "rgb.png", tmp_path / "rgba.png"  # uploads arrive as file paths
    Image.new("RGB", (20, 30)).save(rgb)
    Image.new("RGBA", (20, 30)).save(rgba)
    with pytest.raises(ValueError, match="needs an adapter"):
        _request(fewshot, private, strategy="diff-mix")
    with pytest.raises(ValueError, match="choose a target class"):
        _request(fewshot, private, target_class="not-a-class")
    with pytest.raises(ValueError, match="pick a source image"):
        _request(fewshot, private, source_index=None)
    with pytest.raises(ValueError, match="upload a source image"):
        _request(fewshot, private, source_mode="Upload")
    with pytest.raises(ValueError, match="class of the uploaded image"):
        _request(fewshot, private, source_mode="Upload", upload=str(rgb))
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        _request(fewshot, private, strengths=[1.5])
    up = _request(fewshot, private, source_mode="Upload", upload=str(rgba),
                  source_class=ds.class_names[0])  # fmt: skip
    assert up.source.mode == "RGB" and up.source_class == ds.class_names[0]
    gen = _request(fewshot, private, strategy="real-gen", strengths=[0.3, 0.5])
    assert gen.source is None and gen.strengths == [1.0]
    mix = _request(fewshot, private, strategy="mixup", strengths=[0.4])
    assert mix.partner is not None
    out = translate.run_translation(mix)  # no model involved
    assert out.results[0].soft_label[mix.target_class] == pytest.approx(0.4)


def test_translate_listener_reports_errors_as_messages(fewshot: dict, private: Settings) -> None:
    listener = translate._translate_action(private)
    ds, _ = common.open_selection(fewshot, private)
    outs = list(listener(fewshot, None, None, "Dataset image", fewshot["indices"][0], None, None,
                         ds.class_names[0], "diff-mix", 0, 8, 0.5))  # fmt: skip
    assert len(outs) == 1 and "dm-error" in outs[0][3] and "Traceback" not in outs[0][3]
    assert "Personalize page" in outs[0][3]
