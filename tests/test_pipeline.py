"""Base-model loading: nano / local folder / hub id, caching, shared weights, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffmix.nano.build import build_clip_tokenizer
from diffmix.pipeline import (
    NANO_DIR,
    ModelError,
    clear_cache,
    load_pipeline,
    pick_dtype,
    resolve_model,
)


def test_tokenizer_is_the_real_clip_vocabulary():
    tok = build_clip_tokenizer()
    assert len(tok) == 49408
    ids = tok("a photo of a bird", padding="max_length", max_length=77).input_ids
    # CLIP ids: <|startoftext|>=49406, a=320, photo=1125, of=539, bird=3329, <|endoftext|>=49407
    assert ids[:7] == [49406, 320, 1125, 539, 320, 3329, 49407]
    assert len(ids) == 77 and ids[-1] == 49407


def test_local_folder_loads_caches_and_shares_weights(tiny_sd_dir):
    clear_cache()
    pipe = load_pipeline(str(tiny_sd_dir))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert load_pipeline(str(tiny_sd_dir)) is pipe  # cached
    i2i = load_pipeline(str(tiny_sd_dir), kind="img2img")
    assert type(i2i).__name__ == "StableDiffusionImg2ImgPipeline"
    assert i2i.unet is pipe.unet and i2i.vae is pipe.vae and i2i.text_encoder is pipe.text_encoder
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_same_seed_same_pixels(tiny_sd_dir):
    pipe = load_pipeline(str(tiny_sd_dir))
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np")
    a = pipe("a red bird", generator=torch.Generator().manual_seed(1), **kw).images
    b = pipe("a red bird", generator=torch.Generator().manual_seed(1), **kw).images
    c = pipe("a red bird", generator=torch.Generator().manual_seed(2), **kw).images
    assert (a == b).all() and not (a == c).all()


def test_clear_errors_for_bad_models(tmp_path, tiny_sd_dir):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="no model_index.json"):
        resolve_model(str(tmp_path))
    other = tmp_path / "flux"
    shutil.copytree(tiny_sd_dir, other)
    meta = json.loads((other / "model_index.json").read_text())
    meta["_class_name"] = "FluxPipeline"
    (other / "model_index.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="FluxPipeline"):
        resolve_model(str(other))
    with pytest.raises(ModelError, match="hub id"):
        resolve_model("not a model")
    with pytest.raises(ValueError, match="kind"):
        load_pipeline(str(tiny_sd_dir), kind="inpaint")
    assert resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5").local is False


def test_uncached_hub_model_says_the_network_is_needed(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="network is needed"):
        load_pipeline("someone/not-cached-sd", device="cpu")


def test_dtype_choice(monkeypatch):
    from diffmix import pipeline

    for flag, want in (("0", torch.float32), ("1", torch.bfloat16)):
        monkeypatch.setenv(pipeline.ENV_CPU_BF16, flag)
        pipeline.cpu_has_native_bf16.cache_clear()
        assert pick_dtype(torch.device("cpu")) == want
        assert pick_dtype(torch.device("cpu"), "auto") == want
    monkeypatch.setenv(pipeline.ENV_CPU_BF16, "maybe")
    pipeline.cpu_has_native_bf16.cache_clear()
    with pytest.raises(ValueError, match="DIFFMIX_CPU_BF16='maybe'"):
        pick_dtype(torch.device("cpu"))
    pipeline.cpu_has_native_bf16.cache_clear()  # the monkeypatched env goes away after
    assert pick_dtype(torch.device("cpu"), "fp32") == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="'fp8'"):
        pick_dtype(torch.device("cpu"), "fp8")


@pytest.mark.skipif(not (NANO_DIR / "model_index.json").is_file(), reason="nano-SD not built yet")
def test_shipped_nano_is_small_and_loads_with_plain_diffusers(monkeypatch):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = sum(p.stat().st_size for p in NANO_DIR.rglob("*") if p.is_file())
    assert size <= 25_000_000, size
    pipe = StableDiffusionPipeline.from_pretrained(NANO_DIR)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    StableDiffusionImg2ImgPipeline.from_pretrained(NANO_DIR)
    assert resolve_model("nano").source == str(NANO_DIR)


@pytest.mark.skipif(not (NANO_DIR / "model_index.json").is_file(), reason="nano-SD not built yet")
def test_shipped_nano_scheduler_is_the_builders(tmp_path):
    """`make nano` must reproduce the sampling grid the README's measurements were made with."""
    import json

    from diffmix.nano.build import build_scheduler

    build_scheduler().save_config(tmp_path)
    built = json.loads((tmp_path / "scheduler_config.json").read_text())
    shipped = json.loads((NANO_DIR / "scheduler" / "scheduler_config.json").read_text())
    built.pop("_diffusers_version"), shipped.pop("_diffusers_version")
    assert built == shipped
    assert shipped["use_karras_sigmas"] is True
