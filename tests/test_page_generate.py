"""The Generate page without a browser: the plan as a CLI command, estimates, the probe, newest images.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from pageutil import _fake_adapter, _fake_run, _name  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix.settings import Settings
from pages import generate


def test_parse_strengths() -> None:
    assert generate.parse_strengths("0.7") == [0.7]
    assert generate.parse_strengths(" 0.3, 0.5;0.9 ") == [0.3, 0.5, 0.9]
    assert generate.parse_strengths("") is None and generate.parse_strengths(None) is None
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        generate.parse_strengths("0.5, 1.2")
    with pytest.raises(ValueError, match="separated by commas"):
        generate.parse_strengths("half")


def test_generate_plan_becomes_the_cli_command(fewshot: dict, private: Settings) -> None:
    owner = "g" * 24
    adapter = _fake_adapter(_name("gad"), owner)
    cfg = generate.generate_config(
        fewshot, {"name": adapter.name}, strategy=None, multiplier=2, strengths="0.5, 0.9",
        filter_bottom=0.1, limit=7, steps=5, seed=3, settings=private, owner=owner,
    )  # fmt: skip
    assert cfg.strategy == "diff-mix" and cfg.adapter == str(adapter) and cfg.model == "nano"
    args = generate.generate_args(cfg)
    from diffmix import cli

    ns = cli.build_parser().parse_args(["generate", "--out", "x", *args])
    assert (ns.spec, ns.strategy, ns.adapter, ns.multiplier) == (
        "demo",
        "diff-mix",
        str(adapter),
        2,
    )
    assert ns.strengths == [0.5, 0.9] and ns.limit == 7 and ns.num_inference_steps == 5
    assert (ns.shots, ns.filter_bottom, ns.seed) == (5, 0.1, 3)
    assert ns.subset_seed in (None, 0)  # the selection's seed (0 is the CLI default)
    # without an adapter the default strategy uses the base model
    base = generate.generate_config(fewshot, None, strategy=None, multiplier=1, strengths="0.7",
                                    settings=private)  # fmt: skip
    assert base.strategy == "real-mix" and base.model == private.model and base.adapter is None
    assert "--strength 0.7" in shlex.join(generate.generate_args(base))


def test_generate_plan_errors(fewshot: dict, private: Settings) -> None:
    kw = dict(multiplier=1, strengths="0.7", settings=private)
    with pytest.raises(ValueError, match="needs an adapter"):
        generate.generate_config(fewshot, None, strategy="diff-mix", **kw)
    with pytest.raises(ValueError, match="needs a finished training run"):
        generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion", **kw)
    with pytest.raises(ValueError, match="multiplier must be a whole number >= 1"):
        generate.generate_config(fewshot, None, strategy="real-mix", **{**kw, "multiplier": 0})
    run = _fake_run("train", _name("conf"), owner=None)
    with pytest.raises(ValueError, match="no confusion matrix yet"):
        generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion",
                                 confusion_run=run.name, **kw)  # fmt: skip
    (run / "confusion.json").write_text("{}")
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion",
                                   confusion_run=run.name, **kw)  # fmt: skip
    assert cfg.confusion == str(run / "confusion.json")


def test_estimate_uses_the_probe_when_it_matches(
    fewshot: dict, private: Settings, tmp_path, monkeypatch
) -> None:
    from diffmix import costs

    monkeypatch.setattr(costs, "_store_path", lambda: tmp_path / "calibration.json")  # unmeasured
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=3,
                                   strengths="0.5", steps=20, settings=private)  # fmt: skip
    n = 3 * 60
    guess = generate.estimate(cfg, fewshot, None, pixels=64 * 64)
    assert guess["images"] == n and "rough guess" in guess["basis"]
    assert guess["bytes"] == n * (64 * 64 * generate.PNG_BYTES_PER_PIXEL + generate.ROW_BYTES)
    probe = {"model": cfg.model, "bytes_per_image": 1000}
    est = generate.estimate(cfg, fewshot, probe)
    assert est["bytes"] == n * (1000 + generate.ROW_BYTES)
    limited = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=3,
                                       strengths="0.5", limit=10, settings=private)  # fmt: skip
    assert generate.estimate(limited, fewshot)["images"] == 10
    text = generate.estimate_markdown(est, cfg)
    assert "**180 images**" in text and "diffmix generate --model" in text and "-- demo" in text


def test_probe_times_one_image(fewshot: dict, private: Settings) -> None:
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=1,
                                   strengths="0.5", steps=6, settings=private)  # fmt: skip
    result = generate.probe(cfg, fewshot, settings=private)
    assert result["bytes_per_image"] > 100
    assert "measured on this machine" in generate.estimate(cfg, fewshot, result)["basis"]


def test_tail_rows_and_newest_images(tmp_path: Path) -> None:
    rows = []
    for k in range(30):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), (k, 0, 0)).save(tmp_path / "c" / f"{k:03d}.png")
        rows.append({"file_name": f"c/{k:03d}.png", "source_class": "a", "target_class": "c",
                     "strength": 0.5, "faithfulness": 0.25, "task": k})  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"torn": '
    (tmp_path / "metadata.jsonl").write_text(text)
    tail = generate.tail_rows(tmp_path / "metadata.jsonl", 5, chunk=300)
    assert [r["task"] for r in tail] == [29, 28, 27, 26, 25]
    imgs = generate.newest_images(tmp_path, 3)
    assert len(imgs) == 3 and imgs[0][1] == "a → c · s=0.5 · f=0.25"
    assert generate.newest_images(None) == [] and generate.tail_rows(tmp_path / "none") == []
