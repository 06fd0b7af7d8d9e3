"""The Translate page as AUTOMATIC1111's img2img users expect it (issue 16 items 6-7, issue 15).

An editable prompt pre-filled with the class prompt (and the typed text is the prompt used),
a guidance control, a strength × seed grid whose download regenerates every cell, "Send to
Generate", the real message for an out-of-range source index, the public-mode prompt checks, a
paged source gallery for 200 classes. On the demo with the shipped nano model, 4 denoising steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from diffmix import grid
from diffmix.settings import Settings, check_request
from pages import common, dataset, generate, translate

STEPS = 4


@pytest.fixture
def private(workspace_home: Path) -> Settings:
    return Settings.from_env({"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": "nano"})


@pytest.fixture
def public(workspace_home: Path) -> Settings:
    return Settings.from_env(
        {"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": "nano", "DIFFMIX_PUBLIC": "1"}
    )


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
    monkeypatch.setattr(score, "warm_reference_classifier", lambda *_a, **_k: None)


def _values(sel: dict, target: str, *, index: Any = None, strategy: str = "real-mix") -> tuple:
    src = sel["indices"][0] if index is None else index
    return (sel, None, None, "Dataset image", src, None, None, target, strategy)


# --------------------------------------------------------------------------- prompt, guidance


def test_prompt_is_prefilled_and_the_typed_prompt_is_the_prompt_used(
    fewshot: dict, private: Settings, quick_judge: None
) -> None:
    names = fewshot["class_names"]
    ds, _ = common.open_selection(fewshot, private)
    shown, word = translate.default_prompt(fewshot, None, strategy="real-mix",
                                           target_class=names[3], settings=private)  # fmt: skip
    assert word == names[3].replace("_", " ") and word in shown and shown.startswith("a photo of")
    # the target changes: the user's wording stays, the class word follows
    typed = f"an oil painting of a {word}, {{soft}} light"
    again, new_word = translate.default_prompt(fewshot, None, strategy="real-mix",
                                               target_class=names[5], settings=private)  # fmt: skip
    moved = translate.retarget_prompt(typed, word, again, new_word)
    assert moved == typed.replace(word, new_word)
    assert translate.retarget_prompt("", word, again, new_word) == again
    # the image is made with exactly the typed text, at the typed guidance
    listener = translate._translate_action(private)
    outs = list(listener(*_values(fewshot, names[5]), 0, STEPS, 0.5, None, moved, 3.0))
    assert "dm-error" not in outs[0][3], outs[0][3]
    assert f"Prompt: “{moved}”" in outs[-1][3]
    req = translate.build_request(fewshot, None, source_mode="Dataset image",
                                  source_index=fewshot["indices"][0], upload=None,
                                  source_class=None, target_class=names[5], strengths=[0.5],
                                  strategy="real-mix", seed=0, steps=STEPS, settings=private,
                                  prompt=moved, guidance=3.0)  # fmt: skip
    assert req.guidance == 3.0 and translate.translate_config(req).guidance_scale == 3.0
    preview = translate.run_translation(req)
    assert preview.results[0].prompt == moved
    # guidance changes the pixels (it reaches the sampler); no prompt: the strategy's own
    default = translate.build_request(fewshot, None, source_mode="Dataset image",
                                      source_index=fewshot["indices"][0], upload=None,
                                      source_class=None, target_class=names[5], strengths=[0.5],
                                      strategy="real-mix", seed=0, steps=STEPS, settings=private)  # fmt: skip
    assert default.guidance == translate.DEFAULT_GUIDANCE == 7.5 and default.prompt_template is None
    plain = translate.run_translation(default).results[0]
    assert plain.prompt == again
    assert not np.array_equal(np.asarray(plain.image), np.asarray(preview.results[0].image))
    assert ds.num_classes == len(names)


def test_public_mode_refuses_long_prompts_and_server_paths(
    fewshot: dict, public: Settings, workspace_home: Path
) -> None:
    names = fewshot["class_names"]
    listener = translate._translate_action(public)
    for bad, words in ((f"a photo of {workspace_home}/secret.png", "server path"),
                       ("a photo of a bird " * 30, "more than 300")):  # fmt: skip
        outs = list(listener(*_values(fewshot, names[1]), 0, STEPS, 0.5, None, bad, None))
        assert len(outs) == 1 and "dm-error" in outs[0][3] and words in outs[0][3], outs[0][3]
        assert str(workspace_home) not in outs[0][3]
    # the same rule guards the generate job's arguments (job launcher, CLI) and Send to Generate
    with pytest.raises(ValueError, match="server path"):
        check_request("generate", {"prompt_template": "a {token} at /etc/passwd"}, public)
    msg = translate._send_action(public)(fewshot, None, None, "real-mix", 0.5, 7.5,
                                         "x" * 400, None, None, names[1])[1]  # fmt: skip
    assert "dm-error" in msg and "more than 300" in msg
    # a template with a format field other than {token} / {superclass} is refused, not run
    with pytest.raises(ValueError, match="may only use"):
        generate.generate_config(fewshot, None, strategy="real-mix", multiplier=1,
                                 strengths="0.5", prompt_template="a {token.__class__}",
                                 settings=public)  # fmt: skip


# --------------------------------------------------------------------------- grid + download


def test_grid_is_seeds_by_strengths_and_its_download_regenerates_each_cell(
    fewshot: dict, private: Settings, quick_judge: None
) -> None:
    from diffmix.translate import translate as core_translate

    names = fewshot["class_names"]
    values = (fewshot, None, None, "Dataset image", fewshot["indices"][1], None, None, names[4],
              "real-mix", STEPS, "", 5.0, "0.5, 1.0", "3, 7")  # fmt: skip
    outs = list(translate._grid_action(private)(*values))
    assert len(outs) == 2  # the images first, then the same with scores
    first, scored = outs
    cells = first[0]["value"]
    assert len(cells) == 4 and first[0]["columns"] == 2
    assert [r[:2] for r in first[1]] == [[3, 0.5], [3, 1.0], [7, 0.5], [7, 1.0]]
    assert all(r[3] == "…" for r in first[1])  # scores follow in the second update
    assert all(r[3] != "…" for r in scored[1]) and "f=" in scored[0]["value"][0][1]
    meta, images = grid.read_bundle(scored[3])
    assert (meta["rows"], meta["cols"]) == (2, 2)
    assert meta["settings"]["translate"]["guidance_scale"] == 5.0
    assert meta["settings"]["translate"]["num_inference_steps"] == STEPS
    assert all(isinstance(c["faithfulness"], float) for c in meta["cells"])
    assert {"r0_c0.png", "r1_c1.png", "source.png", "grid.png"} <= set(images)
    # every cell again from the metadata alone (+ the source PNG of the zip)
    cfg = grid.bundle_config(meta)
    ds, _ = common.open_selection(fewshot, private)
    for cell in meta["cells"]:
        item = grid.bundle_item(cell, images["source.png"])
        again = core_translate([item], cfg, class_names=ds.class_names,
                               superclass=meta["settings"]["superclass"])[0]  # fmt: skip
        saved = np.asarray(images[cell["file"]], dtype=np.float32)
        diff = np.abs(np.asarray(again.image, dtype=np.float32) - saved)
        assert diff.mean() < 2.0, (cell, diff.mean())  # float round-off of batching only
        assert again.prompt == cell["prompt"] and again.soft_label == cell["soft_label"]


def test_grid_size_is_bounded_by_the_public_limit(fewshot: dict, public: Settings) -> None:
    names = fewshot["class_names"]
    cap = public.limits.max_batch
    seeds = ", ".join(str(i) for i in range(cap // 4 + 1))
    values = (fewshot, None, None, "Dataset image", fewshot["indices"][0], None, None, names[1],
              "real-mix", STEPS, "", None, "0.2, 0.4, 0.6, 0.8", seeds)  # fmt: skip
    outs = list(translate._grid_action(public)(*values))
    assert len(outs) == 1 and f"limit of {cap}" in outs[0][2], outs[0][2]
    with pytest.raises(ValueError, match="seeds must be whole numbers"):
        grid.parse_numbers("1, 2.5", "seeds", whole=True)


# --------------------------------------------------------------------------- send to generate


def test_send_to_generate_fills_generates_fields(fewshot: dict, private: Settings) -> None:
    names = fewshot["class_names"]
    word = names[2].replace("_", " ")
    plan, msg, watched = translate._send_action(private)(
        fewshot, None, None, "real-mix", 0.6, 4.5, f"a sketch of a {word}", fewshot["indices"][0],
        names[0], names[2],
    )  # fmt: skip
    assert msg == "" and plan["prompt_template"] == "a sketch of a {token}"
    assert watched is None  # Generate then restores no earlier run's settings over the plan
    opened = generate._on_open(private)(None, fewshot, None, plan)
    line, strategy, _conf, strengths, guidance, template, cleared, adapter = opened
    assert strategy["value"] == "real-mix" and strengths["value"] == "0.6"
    assert guidance["value"] == 4.5 and template["value"] == "a sketch of a {token}"
    assert cleared is None  # the plan is used once
    # no adapter in the plan: Generate's adapter is its usual carry-forward choice (the newest
    # finished adapter of this dataset in the workspace, if earlier tests left one), as on a
    # plain open
    assert adapter == generate._on_open(private)(None, fewshot, None, None)[-1]
    assert "From Translate" in line and f"#{fewshot['indices'][0]}" in line
    # the filled fields make a valid plan, and the job's command line carries them
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=1,
                                   strengths="0.6", guidance=4.5,
                                   prompt_template=template["value"], settings=private)  # fmt: skip
    args = generate.generate_args(cfg)
    assert args[args.index("--guidance-scale") + 1] == "4.5"
    assert args[args.index("--prompt-template") + 1] == "a sketch of a {token}"
    # without a plan, Generate opens with its own defaults
    plain = generate._on_open(private)(None, fewshot, None, None)
    assert plain[3] == {"__type__": "update"}
    assert plain[1]["value"] == generate.default_strategy(plain[-1])  # diff-mix with an adapter


# --------------------------------------------------------------------------- polish, 200 classes


def test_out_of_range_source_index_names_the_range(fewshot: dict, private: Settings) -> None:
    names = fewshot["class_names"]
    ds, _ = common.open_selection(fewshot, private)
    outs = list(translate._translate_action(private)(*_values(fewshot, names[1], index=99999),
                                                     0, STEPS, 0.5))  # fmt: skip
    assert f"source index 99999 is out of range 0..{len(ds) - 1}" in outs[0][3], outs[0][3]
    outs = list(translate._translate_action(private)(*_values(fewshot, names[1], index=-3),
                                                     0, STEPS, 0.5))  # fmt: skip
    assert "source index -3 is out of range" in outs[0][3]
    empty = list(translate._translate_action(private)(*_values(fewshot, names[1], index=""),
                                                      0, STEPS, 0.5))  # fmt: skip
    assert "pick a source image" in empty[0][3]
    # typing an index shows that image and its class, or the range
    view, cls, msg = translate._show_index(private)(fewshot, fewshot["indices"][3])
    assert msg == "" and cls["value"] == ds.class_names[ds.items[fewshot["indices"][3]].label]
    assert "out of range 0.." in translate._show_index(private)(fewshot, len(ds))[2]


def test_source_gallery_is_paged_and_filtered_for_200_classes() -> None:
    from PIL import Image

    decoded: list[int] = []

    def image(i: int) -> Image.Image:
        decoded.append(i)
        return Image.new("RGB", (40, 30))

    names = [f"class_{k:03d}" for k in range(200)]
    items = [SimpleNamespace(label=k % 200) for k in range(6000)]
    ds = SimpleNamespace(items=items, class_names=names, image=image)
    thumbs, chosen, page, pages = translate.source_page(ds, range(6000), page=3)
    assert len(thumbs) == translate.SOURCES_PER_PAGE == len(decoded)  # only one page decoded
    assert (page, pages) == (3, 6000 // translate.SOURCES_PER_PAGE)
    assert [ds.items[i].label for i in chosen] == sorted(ds.items[i].label for i in chosen)
    _, chosen, page, pages = translate.source_page(ds, range(6000), class_name="class_150",
                                                   page=99)  # fmt: skip
    assert pages == 2 and page == 1 and {ds.items[i].label for i in chosen} == {150}
    assert "Page 2 of 2" in translate.page_line(page, pages, len(chosen), "class_150")
    with pytest.raises(ValueError, match="unknown class"):
        translate.source_page(ds, range(10), class_name="nope")


def test_empty_plot_says_no_data_instead_of_axes() -> None:
    fig = common.empty_figure("no data yet")
    assert fig.layout.annotations[0].text == "no data yet"
    assert fig.layout.xaxis.visible is False and not fig.data


def test_page_builds_with_the_new_controls(private: Settings) -> None:
    page = translate.build(private)
    ids = {getattr(b, "elem_id", None) for b in page.blocks.values()}
    assert {"tr-prompt", "tr-guidance", "tr-grid", "tr-grid-download", "tr-send",
            "tr-class-filter", "tr-page", "tr-download"} <= ids  # fmt: skip
    guidance = next(b for b in page.blocks.values() if getattr(b, "elem_id", "") == "tr-guidance")
    assert guidance.value == 7.5
    api = json.dumps(page.get_api_info())
    assert "translate_grid" in api and "send_to_generate" in api


def test_dataset_page_browses_200_classes_a_page_at_a_time() -> None:
    from PIL import Image

    decoded: list[int] = []

    def image(i: int) -> Image.Image:
        decoded.append(i)
        return Image.new("RGB", (300, 200))

    names = [f"class_{k:03d}" for k in range(200)]
    ds = SimpleNamespace(items=[SimpleNamespace(label=k % 200) for k in range(6000)],
                         class_names=names, image=image)  # fmt: skip
    thumbs, page, pages = dataset.sample_page(ds, range(6000), page=2)
    assert pages == 200 // dataset.CLASSES_PER_PAGE + 1 and page == 2
    assert len(thumbs) == len(decoded) == 4 * dataset.CLASSES_PER_PAGE
    assert thumbs[0][1] == names[2 * dataset.CLASSES_PER_PAGE]
    one, _, pages = dataset.sample_page(ds, range(6000), class_name="class_199")
    assert pages == 1 and len(one) == 30 and {c for _, c in one} == {"class_199"}
    counts = {n: 10 + (k * 7) % 23 for k, n in enumerate(names)}
    fig = dataset.counts_figure(counts)
    assert list(fig.data[0].y) == sorted(counts.values(), reverse=True)  # a readable profile
    assert fig.layout.xaxis.showticklabels is False and "200 classes" in fig.layout.title.text


@pytest.mark.slow
def test_generation_with_a_prompt_template_gives_each_target_its_own_prompt(
    tmp_path: Path, quick_judge: None
) -> None:
    import shlex

    from diffmix.cli import build_parser
    from diffmix.generate import GenerateConfig, command_for, generate

    cfg = GenerateConfig(dataset="demo", strategy="real-mix", model="nano", shots=1, multiplier=1,
                         strengths=[0.5], limit=3, num_inference_steps=STEPS, score=False,
                         guidance_scale=4.0, prompt_template="a sketch of a {token}")  # fmt: skip
    args = build_parser().parse_args(shlex.split(command_for(cfg, "out"))[1:])
    assert args.prompt_template == "a sketch of a {token}" and args.guidance_scale == 4.0
    generate(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["prompt"] == f"a sketch of a {row['target_class'].replace('_', ' ')}"
        assert row["guidance_scale"] == 4.0
