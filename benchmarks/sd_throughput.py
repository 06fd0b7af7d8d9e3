"""Diff-mix generation throughput at Stable Diffusion 1.5's real size, on the device at hand.

Builds an SD-1.5-shaped pipeline from its published configs with random weights (nothing is
downloaded; speed does not depend on the weights) and times diff-mix img2img at 512 px,
25 steps, strength 0.7, guidance 7.5 (int(25 * 0.7) = 17 denoising steps per image), two ways:

- ``generator``: this studio's batched sampler (``translate.denoise_batch``), B images per call;
- ``reference``: a reference-style loop, one ``StableDiffusionImg2ImgPipeline`` call per image.

For each dtype and batch size it prints images/s and peak memory, then the FLOPs of one image
(``torch.utils.flop_counter``: UNet, and UNet + VAE + text encoder) and the fraction of the
device's dense matmul rate reached, that rate measured here in the same dtype (a square
matmul, 8192 on a GPU, 1024 on a CPU). ``--size full`` on a CUDA device, ``reduced`` elsewhere
(SD 1.5's block structure at a tenth of its widths, 64 px, 2 text layers: seconds on a CPU).
The last line is a JSON object with ``speedup`` (generator / reference, same dtype, the best
batch), ``images_per_s``, ``peak_mb``, ``fraction_of_peak`` and the full table.

    python benchmarks/sd_throughput.py                        # the device at hand, its size
    python benchmarks/sd_throughput.py --size full --dtypes fp16,bf16 --batch-sizes 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("benchmarks.sd_throughput")

#: SD 1.5's UNet (runwayml / stable-diffusion-v1-5 ``unet/config.json``).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
#: SD 1.5's VAE (``vae/config.json``).
SD15_VAE = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, scaling_factor=0.18215,
)  # fmt: skip
#: CLIP ViT-L/14's text encoder (``text_encoder/config.json``).
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)  # fmt: skip
#: SD 1.5's training noise schedule (``scheduler/scheduler_config.json``).
SD15_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def sd15_configs(size: str) -> tuple[dict, dict, dict, int]:
    """(unet, vae, text) configs and the image side in px: ``full`` SD 1.5 or ``reduced``."""
    if size == "full":
        return dict(SD15_UNET), dict(SD15_VAE), dict(SD15_TEXT), 512
    unet = {**SD15_UNET, "block_out_channels": (32, 64, 128, 128), "sample_size": 8,
            "cross_attention_dim": 64, "norm_num_groups": 8}  # fmt: skip
    vae = {**SD15_VAE, "block_out_channels": (16, 32, 64, 64), "sample_size": 64,
           "norm_num_groups": 8, "layers_per_block": 1}  # fmt: skip
    text = {**SD15_TEXT, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "projection_dim": 64}  # fmt: skip
    return unet, vae, text, 64


def build_pipeline(size: str, device: torch.device, dtype: torch.dtype):
    """An SD-1.5-shaped ``StableDiffusionPipeline`` with random weights (seeded)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffmix.nano.build import build_clip_tokenizer

    unet_cfg, vae_cfg, text_cfg, _ = sd15_configs(size)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_cfg),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=build_clip_tokenizer(),
        unet=UNet2DConditionModel(**unet_cfg),
        scheduler=DPMSolverMultistepScheduler(**SD15_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator on a GPU, the process's RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _inputs(n: int, side: int):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(side, side, 3, generator=g) * 255).byte().numpy())
        for _ in range(n)
    ]
    prompts = [f"a photo of a <class_{i % 7}> bird" for i in range(n)]
    return images, prompts


def time_generator(pipe, images, prompts, batch: int, args, device) -> tuple[float, float]:
    """Seconds and peak MB for all images through ``denoise_batch``, ``batch`` per call."""
    from diffmix.translate import denoise_batch

    def run(k0: int, k1: int) -> None:
        gens = [torch.Generator().manual_seed(k) for k in range(k0, k1)]
        denoise_batch(pipe, prompts[k0:k1], images[k0:k1], [args.strength] * (k1 - k0), gens,
                      num_inference_steps=args.steps, guidance_scale=7.5)  # fmt: skip

    run(0, min(batch, len(images)))  # warm-up (kernels, allocator)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for k in range(0, len(images), batch):
        run(k, min(k + batch, len(images)))
    _sync(device)
    return time.perf_counter() - t0, _peak_mb(device)


def time_reference(pipe, images, prompts, args, device) -> tuple[float, float]:
    """Seconds and peak MB for all images, one diffusers img2img pipeline call each."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)

    def run(k: int) -> None:
        i2i(prompts[k], image=images[k], strength=args.strength, num_inference_steps=args.steps,
            guidance_scale=7.5, generator=torch.Generator().manual_seed(k), output_type="pt")  # fmt: skip

    run(0)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for k in range(len(images)):
        run(k)
    _sync(device)
    return time.perf_counter() - t0, _peak_mb(device)


def flops_per_image(pipe, images, prompts, args) -> dict:
    """FLOPs of one image through the generator: UNet only, and everything (one counted call)."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffmix.translate import denoise_batch

    unet_flops = [0]
    fc = FlopCounterMode(display=False)
    real_forward = pipe.unet.forward

    def counted(*a, **kw):
        before = fc.get_total_flops()
        out = real_forward(*a, **kw)
        unet_flops[0] += fc.get_total_flops() - before
        return out

    pipe.unet.forward = counted
    try:
        with fc:
            denoise_batch(pipe, prompts[:1], images[:1], [args.strength],
                          [torch.Generator().manual_seed(0)], num_inference_steps=args.steps,
                          guidance_scale=7.5)  # fmt: skip
    finally:
        del pipe.unet.forward
    return {
        "unet_gflop_per_image": unet_flops[0] / 1e9,
        "gflop_per_image": fc.get_total_flops() / 1e9,
    }


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate in ``dtype`` (the device's practical peak)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, a)
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0 or reps < 3:
        torch.matmul(a, a)
        reps += 1
        _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("auto", "full", "reduced"), default="auto",
                   help="full SD 1.5 (default on CUDA) or reduced (default elsewhere)")  # fmt: skip
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: best available)")
    p.add_argument("--dtypes", help="comma list of fp32, fp16, bf16 (default: the device's auto "
                   "dtype, plus fp16 and bf16 on a GPU that runs both natively)")  # fmt: skip
    p.add_argument("--batch-sizes", help="comma list (default 1,4,8,16 full; 1,4 reduced)")
    p.add_argument("--n", type=int, help="images per measurement (default 16 full, 4 reduced)")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps (25)")
    p.add_argument("--strength", type=float, default=0.7, help="img2img strength (0.7)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from diffmix.pipeline import pick_device, pick_dtype

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _args(argv)
    device = pick_device(args.device)
    size = args.size if args.size != "auto" else ("full" if device.type == "cuda" else "reduced")
    if args.dtypes:
        dtypes = [pick_dtype(device, d) for d in args.dtypes.split(",")]
    else:
        dtypes = [pick_dtype(device)]
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            dtypes = [torch.float16, torch.bfloat16]
    batches = [
        int(b) for b in (args.batch_sizes or ("1,4,8,16" if size == "full" else "1,4")).split(",")
    ]
    n = args.n or (16 if size == "full" else 4)
    side = sd15_configs(size)[3]
    images, prompts = _inputs(n, side)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    logger.info("device %s, size %s (%d px), %d images per measurement, %d steps, s = %.2f",
                name, size, side, n, args.steps, args.strength)  # fmt: skip

    rows, flops = [], None
    for dtype in dtypes:
        dt = str(dtype).replace("torch.", "")
        pipe = build_pipeline(size, device, dtype)
        if flops is None:
            flops = flops_per_image(pipe, images, prompts, args)
        peak = matmul_tflops(device, dtype)
        secs, mb = time_reference(pipe, images, prompts, args, device)
        ref_ips = n / secs
        rows.append({"dtype": dt, "method": "reference", "batch": 1, "images_per_s": ref_ips,
                     "peak_mb": mb, "matmul_tflops": peak})  # fmt: skip
        for b in batches:
            secs, mb = time_generator(pipe, images, prompts, b, args, device)
            rows.append({"dtype": dt, "method": "generator", "batch": b, "images_per_s": n / secs,
                         "peak_mb": mb, "matmul_tflops": peak, "speedup": n / secs / ref_ips})  # fmt: skip
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        achieved = flops["gflop_per_image"] * r["images_per_s"] / 1e3  # TFLOP/s
        r["fraction_of_peak"] = achieved / r["matmul_tflops"]

    header = f"{'dtype':9} {'method':10} {'batch':>5} {'img/s':>9} {'speedup':>8} {'peak MB':>9} {'of peak':>8}"
    print(header)
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "1.00x"
        print(f"{r['dtype']:9} {r['method']:10} {r['batch']:>5} {r['images_per_s']:>9.3f} "
              f"{sp:>8} {r['peak_mb']:>9.0f} {r['fraction_of_peak']:>8.1%}")  # fmt: skip
    print(f"per image: UNet {flops['unet_gflop_per_image']:.1f} GFLOP, all {flops['gflop_per_image']:.1f} "
          f"GFLOP; matmul peak measured per dtype: "
          + ", ".join(f"{r['dtype']} {r['matmul_tflops']:.2f} TFLOP/s" for r in rows if r["method"] == "reference"))  # fmt: skip
    best = max((r for r in rows if r["method"] == "generator"), key=lambda r: r["images_per_s"])
    summary = {
        "device": name, "size": size, "side_px": side, "steps": args.steps,
        "strength": args.strength, "n": n, "dtype": best["dtype"], "batch": best["batch"],
        "images_per_s": round(best["images_per_s"], 4),
        "reference_images_per_s": round(next(r["images_per_s"] for r in rows if r["method"] == "reference" and r["dtype"] == best["dtype"]), 4),
        "speedup": round(best["speedup"], 3), "peak_mb": round(best["peak_mb"], 1),
        "fraction_of_peak": round(best["fraction_of_peak"], 4),
        "unet_gflop_per_image": round(flops["unet_gflop_per_image"], 2),
        "gflop_per_image": round(flops["gflop_per_image"], 2), "rows": rows,
    }  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
