"""Presets (diffmix.presets + the page rows): saved as YAML in the workspace, checked on load."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from diffmix import presets
from diffmix.settings import Settings
from pages import generate, personalize, presets_ui, train

OWNER_A, OWNER_B = "a" * 24, "b" * 24


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def _where(home: Path, public: bool = False, owner: str | None = None) -> dict:
    return {"home": home, "public": public, "owner": owner}


def test_save_then_load_gives_the_same_settings(home: Path) -> None:
    fields = {"p": 0.3, "gamma": 0.25, "arch": None, "epochs": 12, "mix": "cutmix"}
    path = presets.save_preset("train", "few shot v2", fields, **_where(home))
    assert path == home / "presets" / "train" / "few shot v2.yaml"
    assert presets.load_preset("train", "few shot v2", **_where(home)) == fields
    names = presets.list_presets("train", **_where(home))
    assert names[0] == "few shot v2" and "recipe:fewshot" in names
    # a built-in recipe loads read-only, with the stage's fields only
    assert presets.load_preset("train", "recipe:fewshot", **_where(home)) == {
        "gamma": 0.5,
        "p": 0.3,
    }
    assert presets.load_preset("generate", "recipe:conventional", **_where(home)) == {
        "strengths": [0.7], "multiplier": 5}  # fmt: skip
    with pytest.raises(ValueError, match="built-in recipe and read-only"):
        presets.save_preset("train", "recipe:fewshot", fields, **_where(home))
    presets.delete_preset("train", "few shot v2", **_where(home))
    with pytest.raises(ValueError, match="no train preset named 'few shot v2'"):
        presets.load_preset("train", "few shot v2", **_where(home))


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "a..b", "semi;colon"])
def test_names_are_checked_and_stay_in_the_workspace(home: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        presets.save_preset("train", bad, {"epochs": 2}, **_where(home))
    assert not (home.parent / "x.yaml").exists()


def test_public_presets_are_per_visitor(home: Path) -> None:
    presets.save_preset("generate", "mine", {"multiplier": 3}, **_where(home, True, OWNER_A))
    assert (home / "presets" / "visitors" / OWNER_A / "generate" / "mine.yaml").is_file()
    assert "mine" in presets.list_presets("generate", **_where(home, True, OWNER_A))
    assert "mine" not in presets.list_presets("generate", **_where(home, True, OWNER_B))
    with pytest.raises(ValueError, match="no generate preset named 'mine'"):
        presets.load_preset("generate", "mine", **_where(home, True, OWNER_B))
    with pytest.raises(ValueError, match="no visitor token"):
        presets.save_preset("generate", "mine", {"multiplier": 3}, **_where(home, True, "../x"))


def test_a_bad_preset_gives_one_clear_line(home: Path) -> None:
    folder = home / "presets" / "train"
    folder.mkdir(parents=True)
    cases = {
        "typo": ("epochz: 3\n", "epochz is not a train setting"),
        "value": ("epochs: 0\n", "preset 'value': epochs must be >= 1, got 0"),
        "kind": ("mix: blender\n", "preset 'kind': mix"),
        "list": ("- 1\n- 2\n", "must hold a mapping of settings, got list"),
        "yaml": ("epochs: [1,\n", "not valid YAML"),
        "dataset": ("dataset: /etc\n", "dataset is not a train setting of a preset"),
    }
    for name, (text, message) in cases.items():
        (folder / f"{name}.yaml").write_text(text)
        with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
            presets.load_preset("train", name, **_where(home))
        assert "\n" not in str(info.value)
    # saving checks too: nothing is written for a bad value
    with pytest.raises(ValueError, match="filter_bottom"):
        presets.save_preset(
            "generate", "bad", {"filter_bottom": 0.2, "score": False}, **_where(home)
        )
    assert not (home / "presets" / "generate" / "bad.yaml").exists()


def test_page_settings_round_trip_through_a_preset(home: Path) -> None:
    cases = [
        (personalize, "personalize",
         ["nano", 40, 4, 1e-3, 0, 2, True, "off"]),
        (train, "train",
         [0.3, 0.5, "smallcnn", 7, 32, 16, 0.01, 3, 1, "mixup", True, "drw"]),
        (train, "train",
         [0.1, 0.5, "auto", 30, None, 32, 0.05, 0, None, "none", False, "ce"]),
        (generate, "generate",
         ["real-mix", 3, "0.5, 0.9", "tail", 0.1, None, 10, 2, True]),
    ]  # fmt: skip
    for page, stage, values in cases:
        fields = page.preset_fields(*values)
        presets.save_preset(stage, "p1", fields, **_where(home))
        loaded = presets.load_preset(stage, "p1", **_where(home))
        updates = page.preset_updates(loaded)
        assert len(updates) == len(values) == len(page.PRESET_WIDGETS)
        back = [u["value"] for u in updates]
        expect = [float(v) if isinstance(v, float) else v for v in values]
        if stage == "generate":
            expect[2] = "0.5, 0.9"
        assert back == expect, (stage, back)


def test_page_rows_save_and_load_through_their_listeners(home: Path) -> None:
    settings = Settings.from_env({"DIFFMIX_HOME": str(home)})
    with gr.Blocks() as demo:
        owner = gr.BrowserState(None)
        panel = presets_ui.preset_panel("train", "tn")
        widgets = [gr.Number() for _ in train.PRESET_WIDGETS]
        presets_ui.wire_presets(panel, page=demo, settings=settings, owner=owner, widgets=widgets,
                                to_fields=train.preset_fields, from_fields=train.preset_updates)  # fmt: skip
    fns = {d.api_name: d.fn for d in demo.fns.values()}
    values = [0.3, 0.5, "auto", 5, None, 8, 0.02, 1, None, "none", False, "ce"]
    msg, menu = fns["train_preset_save"](None, "quick", *values)
    assert "Saved preset quick" in msg and menu["value"] == "quick"
    out = fns["train_preset_load"](None, "quick")
    assert [u["value"] for u in out[:-1]] == values and "Loaded quick" in out[-1]
    bad = fns["train_preset_save"](None, "../up", *values)
    assert "dm-error" in bad[0] and "not allowed" in bad[0]
    (home / "presets" / "train" / "broken.yaml").write_text("epochs: -3\n")
    out = fns["train_preset_load"](None, "broken")
    assert "epochs must be &gt;= 1" in out[-1] and all(u == gr.skip() for u in out[:-1])
    assert "recipe:longtail" in fns["train_presets"](None)["choices"]
