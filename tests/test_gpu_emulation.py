"""The Stable Diffusion GPU path, emulated on a CPU (issue 13).

What only a GPU used to show, reproduced here: bf16 autocast with a bf16 VAE (personalization
with sample grids), fp16 weights, SD 2.x v-prediction, models the code cannot run (SDXL,
inpainting), the dtype chosen per GPU generation, and two processes (gloo) generating and
cancelling together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_util import free_port  # tests/ is on sys.path under pytest
from datautil import write_color_folder
from PIL import Image

from diffmix import personalize as P
from diffmix.pipeline import (
    ModelError,
    clear_cache,
    cuda_half_dtype,
    load_pipeline,
    pick_dtype,
    resolve_model,
    vae_dtype,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tiny_sd_dir, **kw) -> P.PersonalizeConfig:
    base = dict(dataset="demo", shots=2, seed=0, model=str(tiny_sd_dir), steps=2, batch_size=2,
                rank=4, lr=1e-3, ti_lr=1e-2, checkpoint_every=100)  # fmt: skip
    return P.PersonalizeConfig(**{**base, **kw})


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one AcceleratorState per process, fixed by the first Accelerator's
    mixed precision; reset it around tests that use another (a CLI run is its own process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


# --------------------------------------------------------------------------- mixed precision


def test_personalize_bf16_autocast_with_bf16_vae_and_capped_chunked_grids(
    tiny_sd_dir, tmp_path, monkeypatch, fresh_accelerate
):
    """The app's default on a GPU: mixed precision + a grid every N steps (died at step N)."""
    from diffmix import translate

    calls = []
    real = translate.denoise_batch

    def spy(pipe, prompts, *a, **kw):
        calls.append((len(prompts), pipe.vae.dtype, torch.is_autocast_enabled("cpu")))
        return real(pipe, prompts, *a, **kw)

    monkeypatch.setattr(translate, "denoise_batch", spy)
    from diffmix.personalize import samples as grids  # where the grid constants are read

    monkeypatch.setattr(grids, "GRID_MAX_CLASSES", 5)  # demo: 12 classes -> 5 shown, chunks 4 + 1
    monkeypatch.setattr(grids, "GRID_STEPS", 3)
    out = P.personalize(_cfg(tiny_sd_dir, mixed_precision="bf16", sample_every=2), tmp_path / "a")
    assert [n for n, _, _ in calls] == [4, 1]
    assert all(dt == torch.bfloat16 and autocast for _, dt, autocast in calls)
    with Image.open(out / "samples" / "step-000002.png") as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (32, 5 * 32, 3)
    assert grid.std() > 1  # pictures, not a blank canvas
    assert P.read_adapter(out)["config"]["mixed_precision"] == "bf16"


def test_grid_classes_spread_evenly_and_capped():
    assert P.grid_classes(5) == [0, 1, 2, 3, 4]
    shown = P.grid_classes(200)  # CUB
    assert len(shown) == P.GRID_MAX_CLASSES and shown[0] == 0 and shown[-1] == 199
    assert shown == sorted(set(shown))
    assert P.grid_classes(200, limit=1) == [0]


def test_fp16_weights_on_cpu_with_the_vae_upcast(tiny_sd_dir):
    """fp16 inference on the CPU (as on a T4): finite images, the fp16 VAE run in fp32."""
    from diffmix.translate import denoise_batch

    x = torch.ones(2, 4, dtype=torch.float16)
    try:
        (x @ x.T).sum()
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16),
                                   torch.ones(1, 1, 1, 1, dtype=torch.float16))  # fmt: skip
    except RuntimeError as e:  # old torch builds lack CPU fp16 kernels
        pytest.skip(f"this torch has no CPU fp16 kernels: {e}")
    clear_cache()
    pipe = load_pipeline(str(tiny_sd_dir), dtype="fp16")
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
    assert pipe.vae.config.force_upcast  # the AutoencoderKL default, SD 1.x/2.x VAEs
    seen = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    try:
        src = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        pix = denoise_batch(pipe, ["a red bird", "a blue bird"], [src, None], [0.7, 1.0], gens,
                            num_inference_steps=3)  # fmt: skip
    finally:
        hook.remove()
        clear_cache()
    assert seen == [torch.float32]  # decoded in fp32 (force_upcast) ...
    assert pipe.vae.dtype == torch.float16  # ... and the shared VAE is fp16 again after
    assert pix.shape == (2, 3, 32, 32) and torch.isfinite(pix).all()


def test_vae_and_half_dtype_rules():
    assert cuda_half_dtype((7, 5)) == torch.float16  # T4: bf16 only emulated
    assert cuda_half_dtype((7, 0)) == torch.float16  # V100
    assert cuda_half_dtype((8, 0)) == torch.bfloat16  # A100
    assert cuda_half_dtype((9, 0)) == torch.bfloat16  # H100 / H200
    assert vae_dtype({"force_upcast": True}, torch.float16) == torch.float32
    assert vae_dtype({}, torch.float16) == torch.float32  # the config default is True
    assert vae_dtype({"force_upcast": False}, torch.float16) == torch.float16  # fp16-fix VAEs
    assert vae_dtype({"force_upcast": True}, torch.bfloat16) == torch.bfloat16


def test_dtype_per_gpu_generation(monkeypatch):
    """T4/V100 report bf16 'supported' (emulated); the choice must be fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for cap, want, mp in (((7, 5), torch.float16, "fp16"), ((8, 6), torch.bfloat16, "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        assert pick_dtype(torch.device("cuda")) == want
        assert P.auto_mixed_precision(torch.device("cuda")) == mp
    assert P.auto_mixed_precision(torch.device("cpu")) == "no"


# --------------------------------------------------------------------------- SD 2.x


@pytest.fixture(scope="module")
def vpred_sd_dir(tiny_sd_dir, tmp_path_factory) -> Path:
    """The tiny SD as an SD 2.x (768-v style) model: v-prediction scheduler."""
    path = tmp_path_factory.mktemp("vpred") / "tiny-sd-v"
    shutil.copytree(tiny_sd_dir, path)
    cfg_path = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    return path


def test_sd2_v_prediction_personalize_and_translate(vpred_sd_dir, tmp_path, fresh_accelerate):
    from diffmix.translate import denoise_batch

    out, pipe = P.personalize(_cfg(vpred_sd_dir), tmp_path / "v", return_pipeline=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert np.isfinite(P.read_adapter(out)["final_loss"])
    clear_cache()
    base = load_pipeline(str(vpred_sd_dir))
    assert base.scheduler.config.prediction_type == "v_prediction"  # kept by the DPM swap
    src = Image.fromarray(np.full((32, 32, 3), 90, np.uint8))
    gens = [torch.Generator().manual_seed(0)]
    pix = denoise_batch(base, ["a bird"], [src], [0.7], gens, num_inference_steps=4)
    assert torch.isfinite(pix).all()
    clear_cache()


# --------------------------------------------------------------------------- model checks


def _relabel(src: Path, dst: Path, cls: str, **index) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model_index.json").read_text())
    meta.update(_class_name=cls, **index)
    (dst / "model_index.json").write_text(json.dumps(meta))
    return dst


def test_sdxl_and_inpainting_folders_are_refused_by_name(tiny_sd_dir, tmp_path):
    xl = _relabel(tiny_sd_dir, tmp_path / "xl", "StableDiffusionXLPipeline",
                  text_encoder_2=["transformers", "CLIPTextModelWithProjection"])  # fmt: skip
    with pytest.raises(ModelError, match=r"StableDiffusionXLPipeline.*XL.*stable-diffusion-v1-5"):
        resolve_model(str(xl))
    inpaint = _relabel(tiny_sd_dir, tmp_path / "inp", "StableDiffusionInpaintPipeline")
    with pytest.raises(ModelError, match=r"StableDiffusionInpaintPipeline.*inpainting"):
        resolve_model(str(inpaint))


def test_a_relabelled_sdxl_unet_is_refused_before_its_first_call(tiny_sd_dir, tmp_path):
    """model_index.json says StableDiffusionPipeline, the UNet is SDXL's (a TypeError later)."""
    path = _relabel(tiny_sd_dir, tmp_path / "fake", "StableDiffusionPipeline")
    cfg_path = path / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(addition_embed_type="text_time", addition_time_embed_dim=8,
               projection_class_embeddings_input_dim=8 * 6 + 32)  # fmt: skip
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="SDXL-style UNet.*text_time"):
        load_pipeline(str(path), device="cpu")
    clear_cache()


def test_an_sdxl_hub_id_is_refused_from_its_model_index(monkeypatch, tmp_path):
    """A hub id is checked from its model_index.json alone (here: in an offline HF cache)."""
    hub = tmp_path / "hf" / "hub" / "models--someone--sdxl-model"
    commit = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    snap = hub / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0",
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }))  # fmt: skip
    import huggingface_hub.constants as hf_constants

    # the hub library reads these once, at import: set the live values too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError, match="'someone/sdxl-model' is a 'StableDiffusionXLPipeline'"):
        load_pipeline("someone/sdxl-model", device="cpu")


# --------------------------------------------------------------------------- two processes


def _two_ranks(tmp_path, dataset, model, out, *extra: str) -> list[dict]:
    """Run tests/mp_generate_worker.py as ranks 0 and 1 (gloo on CPU, 1 thread each)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
        "DIFFMIX_HOME": str(tmp_path / "home"),  # a fresh workspace: the judge is fitted here
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, str(ROOT / "tests" / "mp_generate_worker.py"), "--dataset",
           str(dataset), "--model", str(model), "--out", str(out), *extra]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    results = []
    for r, proc in enumerate(procs):
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank {r} hung")
        assert proc.returncode == 0, f"rank {r} failed:\n{stderr[-3000:]}"
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return write_color_folder(tmp_path_factory.mktemp("colors") / "colors")


@pytest.mark.slow
def test_two_processes_generate_while_one_fits_the_judge(colors, tiny_sd_dir, tmp_path):
    """The judge's fit (made to outlast the group's 20 s timeout) keeps no process in a collective."""
    from diffmix.generate import read_rows

    out = tmp_path / "gen"
    results = _two_ranks(tmp_path, colors, tiny_sd_dir, out, "--timeout", "20", "--fit-delay", "30")
    assert [r["state"] for r in results] == ["done", "done"]
    rows = read_rows(out / "metadata.jsonl")
    assert [r["task"] for r in rows] == list(range(24)) and results[0]["images"] == 24
    assert all(0 <= r["faithfulness"] <= 1 for r in rows)
    assert len(list((tmp_path / "home" / "refclf").glob("*.safetensors"))) == 1  # fitted once


@pytest.mark.slow
def test_two_processes_agree_on_a_cancel(colors, tiny_sd_dir, tmp_path):
    """Rank 1 sees the cancel at its second check, rank 0 never: both stop at the same round."""
    out = tmp_path / "gen"
    results = _two_ranks(tmp_path, colors, tiny_sd_dir, out, "--timeout", "120",
                         "--cancel-rank", "1", "--no-score")  # fmt: skip
    assert [r["state"] for r in results] == ["cancelled", "cancelled"]
    assert [r["rows"] for r in results] == [4, 4]  # one batch of 4 each, then both stopped


# --------------------------------------------------------------------------- CPU fallback


def test_the_app_says_plainly_when_it_falls_back_to_the_cpu(monkeypatch):
    from diffmix import pipeline
    from diffmix.settings import Settings
    from pages import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(pipeline.shutil, "which", lambda name: f"/usr/bin/{name}")
    on_gpu, line = pipeline.device_report()
    assert not on_gpu
    assert "running on the CPU" in line and "CUDA 13.0 build" in line
    assert "driver" in line and "CUDA 12 build" in line and "README" in line
    header = common.header(Settings.from_env({})).value
    assert "⚠️ running on the CPU" in header
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "no CUDA support" in pipeline.device_report()[1]
