"""Translation on a tiny SD built from configs: strategies, batching == diffusers, labels, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from diffmix.mixing import cutmix_box
from diffmix.personalize import AdapterError, PersonalizeConfig, personalize
from diffmix.translate import (
    STRATEGIES,
    Strategy,
    TranslateConfig,
    TranslationItem,
    build_prompt,
    denoise_batch,
    get_strategy,
    img2img_start,
    load_adapted_pipeline,
    soft_label,
    translate,
)

STEPS = 3


def _image(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def demo_names():
    from diffmix.data import load_dataset

    ds = load_dataset("demo", split="train")
    return ds.class_names, ds.superclass


@pytest.fixture(scope="module")
def adapters(tiny_sd_dir, tmp_path_factory):
    """A full (tokens + LoRA) and a token-only adapter of the tiny SD on the demo classes."""
    root = tmp_path_factory.mktemp("adapters")
    common = dict(dataset="demo", shots=2, model=str(tiny_sd_dir), batch_size=2, rank=4)
    full = personalize(PersonalizeConfig(steps=2, **common), root / "full")
    ti = personalize(PersonalizeConfig(steps=1, ti_only=True, **common), root / "ti")
    return full, ti


def _cfg(tiny_sd_dir, **kw) -> TranslateConfig:
    base = dict(strategy="real-mix", model=str(tiny_sd_dir), num_inference_steps=STEPS)
    return TranslateConfig(**{**base, **kw})


# --------------------------------------------------------------------------- pure parts


def test_strategy_table():
    assert list(STRATEGIES) == ["diff-mix", "diff-aug", "diff-gen", "real-mix", "real-aug",
                                "real-gen", "ti-mix", "ti-aug", "mixup", "cutmix"]  # fmt: skip
    rows = {n: (s.uses_adapter, s.adapter_kind, s.target, s.generative, s.prompt)
            for n, s in STRATEGIES.items()}  # fmt: skip
    assert rows["diff-mix"] == (True, "full", "other", "img2img", "adapter")
    assert rows["diff-aug"] == (True, "full", "same", "img2img", "adapter")
    assert rows["diff-gen"] == (True, "full", "any", "txt2img", "adapter")
    assert rows["real-mix"] == (False, "none", "other", "img2img", "class-name")
    assert rows["real-aug"] == (False, "none", "same", "img2img", "class-name")
    assert rows["real-gen"] == (False, "none", "any", "txt2img", "class-name")
    assert rows["ti-mix"] == (True, "ti", "other", "img2img", "adapter")
    assert rows["ti-aug"] == (True, "ti", "same", "img2img", "adapter")
    assert rows["mixup"] == rows["cutmix"] == (False, "none", "any", "none", "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        STRATEGIES["diff-mix"].target = "any"
    with pytest.raises(ValueError, match="uses_adapter"):
        Strategy("bad", True, "none", "any", "img2img", "class-name", "")
    with pytest.raises(ValueError, match="unknown strategy 'diff-mixx'.*diff-mix"):
        get_strategy("diff-mixx")
    from diffmix.cli import TRANSLATE_STRATEGIES

    assert tuple(STRATEGIES) == TRANSLATE_STRATEGIES  # the CLI help lists the same names


def test_soft_label_values():
    lab = soft_label(0, 2, 0.25, num_classes=4)  # s^γ = 0.5
    np.testing.assert_allclose(lab, [0.5, 0, 0.5, 0])
    lab = soft_label(3, 1, 0.9, gamma=0.5, num_classes=5)
    assert lab[1] == pytest.approx(0.9**0.5) and lab[3] == pytest.approx(1 - 0.9**0.5)
    assert lab.sum() == pytest.approx(1.0) and (lab >= 0).all()
    np.testing.assert_allclose(soft_label(1, 1, 0.3, num_classes=3), [0, 1, 0])  # same class
    np.testing.assert_allclose(soft_label(0, 1, 0.3, gamma=1.0, num_classes=2), [0.7, 0.3])
    np.testing.assert_allclose(soft_label(0, 1, 1.0, num_classes=2), [0, 1])
    assert soft_label(0, 1, 0.5, 0.5, num_classes=2)[1] == pytest.approx(0.5**0.5)
    with pytest.raises(ValueError, match="1.5"):
        soft_label(0, 1, 1.5, num_classes=2)
    with pytest.raises(ValueError, match="gamma"):
        soft_label(0, 1, 0.5, gamma=0, num_classes=2)
    with pytest.raises(ValueError, match="target class index 7"):
        soft_label(0, 7, 0.5, num_classes=2)


def test_img2img_start_is_diffusers_get_timesteps(tiny_sd_dir):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_dir)
    for n in (1, 3, 25):
        pipe.scheduler.set_timesteps(n)
        for s in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
            ts, run = pipe.get_timesteps(n, s, "cpu")
            t_start, steps = img2img_start(n, s)
            assert steps == run == len(ts)
            assert t_start == n - run


def test_build_prompt(demo_names):
    names, sup = demo_names
    meta = {"class_tokens": {names[0]: "<class_0>"}, "prompt_template": "a photo of a {token} bird"}
    assert build_prompt("diff-mix", names[0], adapter_meta=meta) == "a photo of a <class_0> bird"
    assert build_prompt("real-mix", "red_tail", superclass="bird") == "a photo of a red tail bird"
    assert build_prompt("real-gen", "x") == "a photo of a x"
    assert build_prompt("cutmix", names[0]) == ""
    both = {**meta, "prompt_template": "a {token} {superclass}"}
    assert build_prompt("diff-mix", names[0], adapter_meta=both, superclass="bird") == (
        "a <class_0> bird"
    )


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("a photo of a {token:>30000000}", "no format spec"),  # a 30 MB prompt
        ("a photo of a {token.__class__}", "no format spec, conversion or attribute"),
        ("a photo of a {token!r}", "conversion"),
        ("a {token} {colour}", "found {colour}"),  # was a KeyError traceback
        ("a photo", "must contain {token}"),
        ("a {token} " + "x" * 400, "more than 300"),
        ("a {token", "not a valid template"),
    ],
)
def test_prompt_templates_are_checked_before_format(template, needle, tmp_path):
    from diffmix.personalize import check_prompt_template, read_adapter

    meta = {"class_tokens": {"a": "<class_0>"}, "prompt_template": template}
    with pytest.raises(AdapterError, match=needle):
        build_prompt("diff-mix", "a", adapter_meta=meta)
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=needle):
        read_adapter(tmp_path)
    assert check_prompt_template("a photo of a {token} {superclass}")


def test_mixup_and_cutmix_images_and_labels(demo_names):
    names, _ = demo_names
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    partner = Image.new("RGB", (64, 64), (255, 255, 255))  # other size: fitted to the source's
    items = [
        TranslationItem(src, names[0], names[1], 0.25, seed=s, partner=partner) for s in (0, 1)
    ]
    mix = translate(items[:1], strategy="mixup", class_names=names)[0]
    assert mix.image.size == (40, 20)
    np.testing.assert_allclose(mix.pixels, 0.25, atol=1e-6)
    assert mix.soft_label == {names[0]: pytest.approx(0.75), names[1]: pytest.approx(0.25)}
    cut = translate(items, strategy="cutmix", class_names=names)
    for r in cut:
        share = float((np.asarray(r.image) == 255).all(-1).mean())
        assert share == pytest.approx(r.soft_label[names[1]]) and 0.15 < share < 0.35
        assert r.label_vector.sum() == pytest.approx(1.0)
    again = translate(items, strategy="cutmix", class_names=names)
    assert np.array_equal(np.asarray(again[0].image), np.asarray(cut[0].image))  # seeded box
    boxes = {cutmix_box(20, 40, 0.25, torch.Generator().manual_seed(s)) for s in range(20)}
    assert len(boxes) > 1  # the box position depends on the seed


# --------------------------------------------------------------------------- sampling


def test_batched_equals_plain_diffusers_per_item(tiny_sd_dir, demo_names):
    names, sup = demo_names
    items = [
        TranslationItem(_image(1), names[0], names[1], 0.4, seed=11),
        TranslationItem(_image(2), names[2], names[3], 1.0, seed=12),
        TranslationItem(_image(3), names[4], names[5], 0.7, seed=13),
    ]
    # fp32: the shared loop must equal the plain pipelines to round-off (in bf16 the kernels,
    # and so the last bits, depend on the batch size)
    got = translate(items, _cfg(tiny_sd_dir, dtype="fp32"), class_names=names, superclass=sup)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for it, r in zip(items, got, strict=True):
        assert r.prompt == f"a photo of a {it.target_class.replace('_', ' ')} bird"
        ref = pipe(prompt=r.prompt, image=it.source, strength=it.strength,
                   num_inference_steps=STEPS, guidance_scale=7.5,
                   generator=torch.Generator().manual_seed(it.seed), output_type="np").images[0]  # fmt: skip
        np.testing.assert_allclose(r.pixels, ref, atol=1e-4)
    # text-to-image items share the loop too and match StableDiffusionPipeline
    t2i = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None)
    t2i.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    out = denoise_batch(t2i, ["a red bird", "a blue bird"], [None, _image(4)], [1.0, 0.5], gens,
                        num_inference_steps=STEPS)  # fmt: skip
    ref = t2i("a red bird", num_inference_steps=STEPS, output_type="np",
              generator=torch.Generator().manual_seed(5)).images[0]  # fmt: skip
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-4)


@pytest.mark.parametrize(("dtype", "atol"), [("fp32", 1e-4), ("bf16", 2e-2)])
def test_diff_mix_matches_diffusers_with_the_adapter(
    tiny_sd_dir, adapters, demo_names, dtype, atol
):
    """One item through the adapter equals plain diffusers calls in the same dtype (bf16: the
    CPU default on AMX machines; same batch shape, so only accumulation order may differ)."""
    full, _ = adapters
    names, _ = demo_names
    it = TranslationItem(_image(7), names[0], names[4], 0.7, seed=3)
    cfg = _cfg(tiny_sd_dir, strategy="diff-mix", adapter=str(full), dtype=dtype)
    r = translate([it], cfg)[0]
    assert r.prompt == "a photo of a <class_4> bird"
    assert r.soft_label == {
        names[0]: pytest.approx(1 - 0.7**0.5),
        names[4]: pytest.approx(0.7**0.5),
    }
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_dir, safety_checker=None,
                                                          dtype=torch_dtype)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(sorted(str(p) for p in (full / "embeddings").glob("*.safetensors")))
    pipe.load_lora_weights(str(full))
    ref = pipe(prompt=r.prompt, image=it.source, strength=0.7, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(3), output_type="np").images[0]  # fmt: skip
    np.testing.assert_allclose(r.pixels, ref.astype(np.float32), atol=atol)


def test_determinism_per_seed(tiny_sd_dir, demo_names):
    names, sup = demo_names
    cfg = _cfg(tiny_sd_dir)
    item = TranslationItem(_image(1), names[0], names[1], 0.7, seed=5)
    a = translate([item], cfg, class_names=names, superclass=sup)[0]
    b = translate([item], cfg, class_names=names, superclass=sup)[0]
    c = translate([dataclasses.replace(item, seed=6)], cfg, class_names=names, superclass=sup)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.abs(a.pixels - c.pixels).max() > 1e-3


def test_strength_sweep_one_call_in_order_at_source_size(tiny_sd_dir, demo_names):
    names, sup = demo_names
    src = _image(9, size=(45, 29))  # odd size and aspect
    strengths = [0.9, 0.1, 0.5, 1.0, 0.3]
    items = [TranslationItem(src, names[2], names[7], s, seed=1) for s in strengths]
    calls = []
    # fp32 throughout: batch invariance is an fp32 property (in bf16 the CPU kernels, and so the
    # last bits, depend on the batch size and thread count; see README "Precision on the CPU")
    res = translate(items, _cfg(tiny_sd_dir, num_inference_steps=5, dtype="fp32"), class_names=names,
                    superclass=sup, progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    assert [r.strength for r in res] == strengths
    assert [r.steps_run for r in res] == [int(5 * s) for s in strengths]
    assert all(r.image.size == (45, 29) for r in res)
    assert all(r.pixels.shape == (32, 32, 3) for r in res)
    assert calls == [(k, 5) for k in range(1, 6)]  # one batched loop over the 5-step grid
    # each item equals its own single-item call (the batch changes nothing but speed)
    alone = translate(items[2:3], _cfg(tiny_sd_dir, num_inference_steps=5, dtype="fp32"), class_names=names,
                      superclass=sup)[0]  # fmt: skip
    np.testing.assert_allclose(alone.pixels, res[2].pixels, atol=1e-4)
    # chunking keeps the order
    chunked = translate(items, _cfg(tiny_sd_dir, num_inference_steps=5, batch_size=2, dtype="fp32"),
                        class_names=names, superclass=sup)  # fmt: skip
    for a, b in zip(chunked, res, strict=True):
        np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-4)


def test_gen_and_ti_strategies(tiny_sd_dir, adapters, demo_names):
    full, ti = adapters
    names, _ = demo_names
    gen = translate([TranslationItem(None, None, names[3], 1.0, seed=0)],
                    _cfg(tiny_sd_dir, strategy="diff-gen", adapter=str(full)))[0]  # fmt: skip
    assert gen.image.size == (32, 32) and gen.soft_label == {names[3]: 1.0}
    tim = translate([TranslationItem(_image(2), names[0], names[1], 0.5)],
                    _cfg(tiny_sd_dir, strategy="ti-mix", adapter=str(ti)))[0]  # fmt: skip
    assert tim.prompt == "a photo of a <class_1> bird"


def test_adapter_pipeline_cache(tiny_sd_dir, adapters):
    from diffmix.pipeline import load_pipeline

    full, ti = adapters
    a = load_adapted_pipeline(str(tiny_sd_dir), full)
    assert load_adapted_pipeline(str(tiny_sd_dir), full) is a
    b = load_adapted_pipeline(str(tiny_sd_dir), ti)
    assert b is not a and "<class_0>" in b.tokenizer.get_vocab()
    base = load_pipeline(str(tiny_sd_dir))
    assert "<class_0>" not in base.tokenizer.get_vocab()  # the shared base stays clean


# --------------------------------------------------------------------------- errors


def test_errors(tiny_sd_dir, adapters, demo_names, tmp_path):
    full, ti = adapters
    names, _ = demo_names
    src = _image(1)
    ok = TranslationItem(src, names[0], names[1], 0.5)
    cfg = _cfg(tiny_sd_dir)
    with pytest.raises(ValueError, match=r"unknown target class 'nope'.*" + names[0]):
        translate([dataclasses.replace(ok, target_class="nope")], cfg, class_names=names)
    for bad in (0, 0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            translate([dataclasses.replace(ok, strength=bad)], cfg, class_names=names)
    with pytest.raises(ValueError, match="another class"):
        translate([dataclasses.replace(ok, target_class=names[0])], cfg, class_names=names)
    with pytest.raises(ValueError, match="keeps the source class"):
        translate([ok], cfg.model_copy(update={"strategy": "real-aug"}), class_names=names)
    with pytest.raises(ValueError, match="strength must be 1"):
        translate([ok], cfg, strategy="real-gen", class_names=names)
    with pytest.raises(ValueError, match="partner"):
        translate([ok], cfg, strategy="mixup", class_names=names)
    with pytest.raises(ValueError, match="unknown strategy"):
        TranslateConfig(strategy="bogus")
    with pytest.raises(AdapterError, match="needs a personalized adapter"):
        translate([ok], cfg, strategy="diff-mix", class_names=names)
    with pytest.raises(AdapterError, match="classes do not match"):
        translate([ok], cfg, strategy="diff-mix", adapter=str(full), class_names=names[:5])
    with pytest.raises(AdapterError, match="ti_only"):
        translate([ok], cfg, strategy="ti-mix", adapter=str(full), class_names=names)
    with pytest.raises(AdapterError, match="token-only"):
        translate([ok], cfg, strategy="diff-mix", adapter=str(ti), class_names=names)
    other = tmp_path / "other"
    shutil.copytree(full, other, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((other / "adapter.json").read_text())
    meta.update(base_model="some/other-model", base_model_source="some/other-model")
    (other / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="base model"):
        translate([ok], cfg, strategy="diff-mix", adapter=str(other), class_names=names)


# --------------------------------------------------------------------------- CLI & eval


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Three colour classes x 5 images of 24 px: a dataset whose judge fits in a second."""
    root = tmp_path_factory.mktemp("colors") / "colors"
    return write_color_folder(root)


def test_cli_translate_json(tiny_sd_dir, tiny_folder, tmp_path, capsys):
    from diffmix.cli import main

    out = tmp_path / "out"
    argv = ["translate", "--model", str(tiny_sd_dir), "--dataset", str(tiny_folder),
            "--source", "0", "--target", "green", "--strength", "0.5", "1.0",
            "--strategy", "real-mix", "--steps", "2", "--seed", "3", "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = payload["results"]
    assert [r["strength"] for r in rows] == [0.5, 1.0]
    for r in rows:
        assert set(r) == {"strength", "file", "soft_label", "faithfulness", "diversity", "judge",
                          "diversity_metric"}  # fmt: skip
        assert (r["judge"], r["diversity_metric"]) == ("lite0", "lite0-imagenet-feature-cosine")
        assert Image.open(r["file"]).size == (24, 24)
        assert 0 <= r["faithfulness"] <= 1 and 0 <= r["diversity"] <= 1
        assert sum(r["soft_label"].values()) == pytest.approx(1.0)
    assert rows[0]["soft_label"] == {"blue": pytest.approx(1 - 0.5**0.5),
                                     "green": pytest.approx(0.5**0.5)}  # fmt: skip
    assert rows[1]["soft_label"] == {"green": 1.0}
    assert len(json.loads((out / "translations.json").read_text())) == 2
    # a path source with an explicit class, and cutmix (no model involved)
    path = next((tiny_folder / "red").glob("*.png"))
    argv2 = ["translate", "--dataset", str(tiny_folder), "--source", str(path), "--source-class",
             "red", "--target", "blue", "--strength", "0.5", "--strategy", "cutmix",
             "--out", str(tmp_path / "cut"), "--json"]  # fmt: skip
    assert main(argv2) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    assert set(row["soft_label"]) == {"red", "blue"}


def test_cli_translate_bad_input_exits_2(tiny_sd_dir, tiny_folder, tmp_path, capsys):
    from diffmix.cli import main

    base = ["translate", "--model", str(tiny_sd_dir), "--dataset", str(tiny_folder),
            "--source", "0", "--strategy", "real-mix", "--out", str(tmp_path)]  # fmt: skip
    assert main(base + ["--target", "purple", "--strength", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown class 'purple'") and "green" in err[-1]
    assert main(base + ["--target", "green", "--strength", "1.5"]) == 2
    assert "1.5" in capsys.readouterr().err
    assert main(base + ["--target", "green", "--strength", "0.5", "--strategy", "diff-mix"]) == 2
    assert "adapter" in capsys.readouterr().err


def test_cli_translate_corrupt_or_hostile_adapter_is_one_line(
    tiny_sd_dir, adapters, tmp_path, capsys
):
    from diffmix.cli import main
    from diffmix.personalize import LORA_FILE

    full, _ = adapters
    broken = tmp_path / "broken"
    shutil.copytree(full, broken, ignore=shutil.ignore_patterns("checkpoints"))
    lora = broken / LORA_FILE
    lora.write_bytes(lora.read_bytes()[:100])  # truncated
    hostile = tmp_path / "hostile"
    shutil.copytree(full, hostile, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((hostile / "adapter.json").read_text())
    (hostile / "adapter.json").write_text(json.dumps({**meta, "prompt_template": "{token.x}"}))
    for adapter, needle in (
        (broken, LORA_FILE + " is not a readable LoRA file"),
        (hostile, "{token.x}"),
    ):
        argv = ["translate", "--model", str(tiny_sd_dir), "--adapter", str(adapter),
                "--source", "0", "--target", "doravik", "--strength", "0.5", "--steps", "2",
                "--strategy", "diff-mix", "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], err
        assert "Traceback" not in "\n".join(err)


def test_translate_eval_runs(tiny_sd_dir, adapters, capsys):
    from diffmix.translate_eval import main

    full, _ = adapters
    argv = ["--model", str(tiny_sd_dir), "--adapter", str(full), "--pairs", "2", "--steps", "3",
            "--judge-epochs", "1", "--judge-size", "32", "--json"]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["pairs"] == 2 and rep["strengths"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert set(rep["results"]) == {"diff-mix", "real-mix"}
    for rows in rep["results"].values():
        assert [r["strength"] for r in rows] == rep["strengths"]
        for r in rows:
            for k in ("faithfulness", "target_win", "source_win", "diversity", "pixel_change"):
                assert 0 <= r[k] <= 1
    assert set(rep["checks"]) >= {"faithfulness_rises", "target_wins_at_0.9",
                                  "source_wins_at_0.1", "diversity_rises",
                                  "diff_mix_beats_real_mix", "all"}  # fmt: skip
