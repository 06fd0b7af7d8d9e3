"""The Personalize page without a browser: arguments, model choice, loss figure, adapters.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pageutil import _fake_adapter, _fake_run, _name  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix.settings import Settings
from pages import jobs_ui, personalize


def test_personalize_args_follow_the_selection(
    fewshot: dict, private: Settings, tiny_sd_dir: Path
) -> None:
    args = personalize.personalize_args(
        fewshot, model=None, steps=20, rank=4, lr=None, seed=0, sample_every=10,
        batch_size=2, settings=private,
    )  # fmt: skip
    assert args[-2:] == ["--", "demo"]  # the spec after "--": never read as an option
    pairs = dict(zip(args[0::2], args[1::2], strict=False))
    assert pairs["--model"] == str(tiny_sd_dir) and pairs["--shots"] == "5"
    assert pairs["--steps"] == "20" and pairs["--rank"] == "4" and pairs["--seed"] == "0"
    assert pairs["--sample-every"] == "10" and pairs["--batch-size"] == "2"
    assert "--lr" not in args  # the model's default
    # the CLI accepts exactly these arguments
    from diffmix import cli

    ns = cli.build_parser().parse_args(["personalize", "--out", "x", *args])
    assert (ns.spec, ns.shots, ns.steps, ns.rank, ns.sample_every) == ("demo", 5, 20, 4, 10)


def test_personalize_args_errors(fewshot: dict, private: Settings) -> None:
    kw = dict(model=None, steps=10, rank=4, lr=None, sample_every=0, settings=private)
    with pytest.raises(ValueError, match="would draw another few-shot subset"):
        personalize.personalize_args(fewshot, seed=3, **kw)
    with pytest.raises(ValueError, match="no dataset selected"):
        personalize.personalize_args(None, seed=0, **kw)
    with pytest.raises(ValueError, match="test split"):
        personalize.personalize_args({**fewshot, "split": "test"}, seed=0, **kw)
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        personalize.personalize_args(fewshot, seed=0, **{**kw, "steps": 0})


def test_model_choice_respects_the_deployment(
    private: Settings, public: Settings, tmp_path: Path
) -> None:
    assert personalize.check_model("", public) == public.model
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_LOCAL_PATHS=1"):
        personalize.check_model(str(tmp_path), public)
    no_hub = Settings.from_env({"DIFFMIX_HOME": str(tmp_path), "DIFFMIX_ALLOW_HUB": "0"})
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_HUB=1"):
        personalize.check_model("owner/model", no_hub)
    assert personalize.check_model("owner/model", public) == "owner/model"
    with pytest.raises(ValueError, match="does not exist"):
        personalize.check_model(str(tmp_path / "missing"), private)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        personalize.check_model(str(tmp_path), private)


def test_loss_figure_and_latest_sample(tmp_path: Path) -> None:
    events = [{"kind": "progress", "step": s, "loss": 1.0 / s} for s in (10, 20, 30)]
    fig = personalize.loss_figure(events)
    assert list(fig.data[0].x) == [10, 20, 30] and fig.data[0].y[-1] == pytest.approx(1 / 30)
    assert personalize.loss_figure([]).layout.annotations[0].text == "no progress yet"
    assert personalize.latest_sample(tmp_path) == (None, None)
    (tmp_path / "samples").mkdir()
    for step in (10, 200, 30):
        Image.new("RGB", (8, 8)).save(tmp_path / "samples" / f"step-{step:06d}.png")
    (tmp_path / "samples" / "other.png").write_bytes(b"")
    path, step = personalize.latest_sample(tmp_path)
    assert step == 200 and path.name == "step-000200.png"
    strip = Image.new("RGB", (12 * 8, 8))
    strip.paste((255, 0, 0), (11 * 8, 0, 12 * 8, 8))  # the last cell
    grid = personalize.regrid(strip)
    assert grid.size == (6 * 8, 2 * 8) and grid.getpixel((5 * 8 + 1, 8 + 1)) == (255, 0, 0)
    assert personalize.regrid(Image.new("RGB", (40, 8))).size == (40, 8)


def test_adapters_are_listed_chosen_and_resolved(private: Settings, public: Settings) -> None:
    owner = "o" * 24
    done, busy = _name("ad"), _name("busy")
    _fake_adapter(done, owner)
    _fake_run("personalize", busy, owner=owner, state="queued")
    runs = jobs_ui.list_runs("personalize", owner=owner, settings=public)
    table = personalize.adapter_rows(runs)
    row = table[table["name"] == done].iloc[0]
    assert (
        row["state"] == "done" and row["steps"] == "20/20" and row["final loss (EMA)"] == "0.1250"
    )
    assert row["dataset"] == "demo (5-shot)"
    assert done in personalize.adapter_choices(runs) and busy not in personalize.adapter_choices(
        runs
    )
    state = personalize.choose_adapter(done, owner=owner, settings=public)
    assert state == {"name": done, "base_model": "nano", "ti_only": False, "classes": 3,
                     "dataset": "demo", "fingerprint": "f"}  # fmt: skip
    assert done in personalize.adapter_line(state)
    path, meta = personalize.resolve_adapter(state, owner=owner, settings=public)
    assert path.name == done and meta["final_loss"] == 0.125
    with pytest.raises(PermissionError):
        personalize.resolve_adapter(state, owner="x" * 24, settings=public)
    with pytest.raises(ValueError, match="not allowed"):
        personalize.resolve_adapter({"name": "../../etc"}, owner=owner, settings=private)
    with pytest.raises(ValueError, match="has no adapter yet"):
        personalize.choose_adapter(busy, owner=owner, settings=public)
    assert personalize.resolve_adapter(None, owner=owner, settings=public) is None
