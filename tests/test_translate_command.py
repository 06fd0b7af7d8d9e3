"""The Translate page shows the ``diffmix translate`` command of its preview (issue 16: "the
equivalent CLI command on every page"): it parses back to the same request, carries the typed
prompt and the guidance, follows the page's settings, and makes the same image."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffmix import cli
from diffmix.cli.translate import ITEM_DEFAULTS, request_fields
from diffmix.command import UPLOAD_PLACEHOLDER, translate_command
from diffmix.settings import Settings
from diffmix.translate import TranslateConfig
from pages import dataset, translate

STEPS = 4


@pytest.fixture
def private(workspace_home: Path) -> Settings:
    return Settings.from_env({"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": "nano"})


@pytest.fixture(scope="module")
def fewshot() -> dict[str, Any]:
    return dataset.load_selection("demo", subset="few-shot", shots=2, seed=0).selection


@pytest.fixture
def quick_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrained reference classifier instead of the one fitted in minutes per dataset."""
    import torch

    from diffmix import score
    from diffmix.refclf import SmallCNN

    def fake(ds, **_kw):
        torch.manual_seed(0)
        net = SmallCNN(ds.num_classes).eval()
        return score.ReferenceClassifier(net, list(ds.class_names), 32, ds.fingerprint)

    monkeypatch.setattr(score, "reference_classifier", fake)


def _request(sel: dict, settings: Settings, **kw: Any):
    args = {"source_mode": "Dataset image", "source_index": sel["indices"][0], "upload": None,
            "source_class": None, "target_class": sel["class_names"][3], "strengths": [0.6],
            "strategy": "real-mix", "seed": 5, "steps": STEPS, "settings": settings}  # fmt: skip
    return translate.build_request(sel, None, **{**args, **kw})


def _parse(command: str) -> tuple[TranslateConfig, dict[str, Any], Any]:
    """What ``diffmix translate`` makes of the command's last line: config, items, namespace."""
    argv = shlex.split(command.splitlines()[-1])
    assert argv[:2] == ["diffmix", "translate"]
    ns = cli.build_parser().parse_args(argv[1:])
    fields = request_fields(ns)
    item = {k: fields.pop(k, d) for k, d in ITEM_DEFAULTS.items()}
    return TranslateConfig(**fields), item, ns


def test_the_shown_command_parses_back_to_the_preview(fewshot: dict, private: Settings) -> None:
    names = fewshot["class_names"]
    word = names[3].replace("_", " ")
    typed = f"an oil painting of a {word}, soft light"
    req = _request(fewshot, private, prompt=typed, guidance=4.5, strengths=[0.35])
    command = translate.preview_command(req, private)
    assert command.startswith("diffmix translate ")  # nothing to warn about: one line
    cfg, item, ns = _parse(command)
    assert cfg == translate.translate_config(req)
    assert cfg.prompt_template == "an oil painting of a {token}, soft light"
    assert cfg.guidance_scale == 4.5 and cfg.num_inference_steps == STEPS
    assert item == {"dataset": "demo", "source": str(fewshot["indices"][0]),
                    "source_class": None, "target": names[3], "strength": [0.35], "seed": 5}  # fmt: skip
    assert ns.out == "OUT_DIR"


def test_translate_command_says_the_prompt_template_and_refuses_what_has_no_flag() -> None:
    cfg = TranslateConfig(strategy="real-aug", prompt_template="a {token} in {superclass} snow")
    cmd = translate_command(cfg, dataset="demo", target="b", strengths=[1.0], source=2)
    back, item, _ = _parse(cmd)
    assert back == cfg and item["strength"] == [1.0]
    with pytest.raises(ValueError, match="dtype have no command-line flag"):
        translate_command(TranslateConfig(dtype="fp16"), dataset="demo", target="b",
                          strengths=[0.5])  # fmt: skip


def test_an_uploaded_source_is_named_by_a_placeholder(
    fewshot: dict, private: Settings, tmp_path: Path
) -> None:
    names = fewshot["class_names"]
    upload = tmp_path / "mine.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(upload)
    req = _request(fewshot, private, source_mode="Upload", upload=str(upload),
                   source_class=names[1])  # fmt: skip
    command = translate.preview_command(req, private)
    assert str(upload) not in command and str(tmp_path) not in command
    first, last = command.splitlines()[0], command.splitlines()[-1]
    assert first.startswith(f"# {UPLOAD_PLACEHOLDER}: ")
    _, item, _ = _parse(command)
    assert (item["source"], item["source_class"]) == (UPLOAD_PLACEHOLDER, names[1])
    assert f"--source {UPLOAD_PLACEHOLDER} --source-class" in last


def test_the_page_box_follows_strength_prompt_and_guidance(
    fewshot: dict, private: Settings
) -> None:
    names = fewshot["class_names"]
    listener = translate._command_action(private)
    base = (fewshot, None, None, "Dataset image", fewshot["indices"][0], None, None, names[2],
            "real-mix", 0, STEPS)  # fmt: skip
    plain = listener(*base, 0.5, "", None)
    assert "--strength 0.5 " in plain and "--guidance-scale 7.5" in plain
    assert "--prompt-template" not in plain
    word = names[2].replace("_", " ")
    moved = listener(*base, 0.8, f"a sketch of a {word}", 3.0)
    assert "--strength 0.8 " in moved and "--guidance-scale 3.0" in moved
    assert "--prompt-template 'a sketch of a {token}'" in moved
    missing = listener(*base[:4], None, *base[5:], 0.5, "", None)
    assert missing.startswith("# ") and "pick a source image" in missing
    # the page wires the box to those settings (and names the listener in its API)
    page = translate.build(private)
    ids = {b.elem_id: k for k, b in page.blocks.items() if getattr(b, "elem_id", None)}
    fns = [d for d in page.fns.values() if ids["tr-command"] in [o._id for o in d.outputs]]
    triggers = {(t[0], t[1]) for d in fns for t in d.targets}
    for elem in ("tr-strength", "tr-prompt", "tr-guidance", "tr-seed", "tr-target"):
        assert (ids[elem], "change") in triggers, elem
    assert "translate_command" in {d.api_name for d in fns}


def test_the_command_makes_the_same_image(
    fewshot: dict, private: Settings, quick_judge: None, tmp_path: Path
) -> None:
    names = fewshot["class_names"]
    req = _request(fewshot, private, prompt=f"a watercolour {names[3].replace('_', ' ')}",
                   guidance=5.0)  # fmt: skip
    shown = translate.run_translation(req).results[0]
    argv = shlex.split(translate.preview_command(req, private, out=str(tmp_path / "o")))
    assert cli.main(argv[1:]) == 0
    made = Image.open(next((tmp_path / "o").glob("*.png")))
    diff = np.abs(np.asarray(made, np.float32) - np.asarray(shown.image, np.float32))
    assert diff.mean() < 2.0, diff.mean()  # float round-off only
