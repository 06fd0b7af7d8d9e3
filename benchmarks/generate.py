"""Benchmark: images/second of ``diffmix generate`` vs a reference-style one-image-per-call loop.

    python benchmarks/generate.py [--model nano] [--adapter DIR] [--dataset demo] [--n 32]
                                  [--steps 25] [--strengths 0.5,0.7,0.9] [--batch-size 16]

Three sides, each in its own child process (so each peak RSS is its own), the model loaded and
warmed up before the clock starts, the *same* planned tasks (sources, targets, strengths, seeds)
and the same model, steps and guidance:

- ``baseline`` mimics the Diff-Mix reference implementation: one
  ``StableDiffusionImg2ImgPipeline`` call per image (source resized to the model resolution),
  then the PNG saved -- ``sum(steps_i)`` UNet calls of batch 1 (x2 for guidance);
- ``generate`` is :func:`diffmix.generate.generate` end to end (plan, batches of
  ``--batch-size`` in one shared denoising loop, grouped by strength, atomic PNG writes,
  metadata rows; scores off, as the baseline computes none);
- ``generate-order`` the same with batches in plain plan order (mixed strengths per batch);
- ``baseline-same`` (only when the generator's dtype differs from the baseline's): the
  baseline loop in the generator's dtype, so the gain of batching alone is also printed.

Dtypes: the baseline runs as the reference does by default (fp32 on CPU, fp16 on CUDA); the
generator runs at ``--dtype`` (default ``auto``: what ``diffmix generate`` picks on this
machine, see :func:`diffmix.pipeline.pick_dtype`).

Also printed: the UNet (+VAE) FLOPs per image, counted with ``torch.utils.flop_counter`` on
one forward pass, against this machine's measured fp32 matmul throughput, to say whether the
generator is compute-bound (near the matmul rate) or overhead-bound (tiny kernels, Python).
The last stdout line is a JSON object; ``speedup`` = generate images/s / baseline images/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("baseline", "generate", "generate-order", "baseline-same")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or hub id")
    p.add_argument("--adapter", help="adapter folder: benchmark diff-mix (default: real-mix)")
    p.add_argument("--dataset", default="demo", help="dataset spec of the sources (demo)")
    p.add_argument("--n", type=int, default=32, help="images per side (default 32)")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps (25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--strengths", default="0.5,0.7,0.9", help="drawn uniformly per image")
    p.add_argument("--batch-size", type=int, default=16, help="generate's batch (16)")
    p.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    p.add_argument("--dtype", default="auto", help="generator dtype: auto, fp32, bf16, fp16")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one child
    return p.parse_args(argv)


def baseline_dtype(device) -> str:
    """The reference implementation's dtype: fp16 on CUDA, diffusers' fp32 elsewhere."""
    return "fp16" if device.type == "cuda" else "fp32"


def _dtypes(args: argparse.Namespace) -> tuple[str, str]:
    """(baseline dtype, generator dtype) as names, resolved on this machine."""
    from diffmix.pipeline import pick_device, pick_dtype

    dev = pick_device(args.device)
    names = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}
    return baseline_dtype(dev), names[str(pick_dtype(dev, args.dtype))]


def _config(args: argparse.Namespace, grouping: str = "strength", dtype: str | None = None):
    from diffmix.data import load_dataset
    from diffmix.generate import GenerateConfig

    n_src = len(load_dataset(args.dataset, split="train"))
    return GenerateConfig(
        dataset=args.dataset, model=args.model, adapter=args.adapter,
        strategy="diff-mix" if args.adapter else "real-mix",
        multiplier=max(1, math.ceil(args.n / n_src)), limit=args.n,
        strengths=[float(s) for s in args.strengths.split(",")],
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        batch_size=args.batch_size, grouping=grouping, score=False, device=args.device,
        dtype=dtype or args.dtype,
    )  # fmt: skip


def _pipeline(cfg):
    from diffmix.pipeline import load_pipeline
    from diffmix.translate import load_adapted_pipeline

    if cfg.adapter:
        return load_adapted_pipeline(cfg.model, cfg.adapter, device=cfg.device)
    return load_pipeline(cfg.model, device=cfg.device)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_side(args: argparse.Namespace) -> dict:
    """One side, in this process: warm up, then time ``--n`` images."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from diffmix.data import load_dataset, make_subset
    from diffmix.generate import _save_png, generate, make_plan
    from diffmix.personalize import read_adapter
    from diffmix.translate import _to_canvas, build_prompt

    base_dt, gen_dt = _dtypes(args)
    dtype = {"baseline": base_dt, "baseline-same": gen_dt}.get(args.side, gen_dt)
    grouping = "order" if args.side == "generate-order" else "strength"
    cfg = _config(args, grouping, dtype).resolved()
    pipe = _pipeline(cfg)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with tempfile.TemporaryDirectory() as tmp:
        if args.side in ("baseline", "baseline-same"):
            ds = load_dataset(cfg.dataset, split="train")
            plan = make_plan(cfg, ds, make_subset(ds))
            i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
            i2i.set_progress_bar_config(disable=True)
            meta = read_adapter(cfg.adapter) if cfg.adapter else None
            prompts = [build_prompt(cfg.strategy, t.target_class, adapter_meta=meta,
                                    superclass=ds.superclass) for t in plan]  # fmt: skip
            sources = [_to_canvas(ds.image(t.source_index), side)[0] for t in plan]

            def one(k: int):
                t = plan[k]
                return i2i(prompt=prompts[k], image=sources[k], strength=t.strength,
                           num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale,
                           generator=torch.Generator().manual_seed(t.seed)).images[0]  # fmt: skip

            one(0)  # warm-up
            _sync()
            t0 = time.perf_counter()
            for k in range(len(plan)):
                _save_png(one(k), Path(tmp) / f"{k}.png")
            _sync()
            seconds = time.perf_counter() - t0
            images = len(plan)
        else:
            warm = cfg.model_copy(update={"limit": 1})
            generate(warm, Path(tmp) / "warm")  # warm-up: pipeline, kernels, dataset
            _sync()
            t0 = time.perf_counter()
            images = generate(cfg, Path(tmp) / "out")["images"]
            _sync()
            seconds = time.perf_counter() - t0
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"side": args.side, "dtype": dtype, "images": images, "seconds": round(seconds, 4),
           "images_per_s": round(images / seconds, 4), "peak_rss_mib": round(peak_rss_mib, 1)}  # fmt: skip
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def flops_per_image(args: argparse.Namespace) -> dict:
    """UNet/VAE FLOPs of one image (mean strength, guidance doubling) and the matmul rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _config(args, dtype=_dtypes(args)[1]).resolved()
    pipe = _pipeline(cfg)
    unet, vae = pipe.unet, pipe.vae
    dev, dt = unet.device, unet.dtype
    h = unet.config.sample_size
    lat = torch.randn(1, unet.config.in_channels, h, h, device=dev, dtype=dt)
    ctx_dim = unet.config.cross_attention_dim
    ctx = torch.randn(1, pipe.tokenizer.model_max_length, ctx_dim, device=dev, dtype=dt)
    img = torch.randn(1, 3, h * pipe.vae_scale_factor, h * pipe.vae_scale_factor, device=dev,
                      dtype=dt)  # fmt: skip
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            unet(lat, 10, encoder_hidden_states=ctx)
        unet_f = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.decode(vae.encode(img).latent_dist.mean)
        vae_f = fc.get_total_flops()
    from diffmix.translate import img2img_start

    steps = sum(img2img_start(cfg.num_inference_steps, s)[1] for s in cfg.strengths) / len(
        cfg.strengths
    )
    cfg_mult = 2 if cfg.guidance_scale > 1 else 1
    per_image = unet_f * cfg_mult * steps + vae_f
    # measured matmul throughput in the generator's dtype
    n = 2048 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dt)
    torch.matmul(a, a)
    _sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        torch.matmul(a, a)
        reps += 1
    _sync()
    rate = 2 * n**3 * reps / (time.perf_counter() - t0)
    return {"unet_gflop_per_call": unet_f / 1e9, "vae_gflop": vae_f / 1e9, "mean_steps": steps,
            "gflop_per_image": per_image / 1e9, "matmul_gflops": rate / 1e9}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.side:  # a child: one side, one JSON line
        print(json.dumps(run_side(args)))
        return 0

    # 1. Each side in a fresh child process (its own peak memory)
    results = {}
    base = [sys.executable, os.path.abspath(__file__)] + (
        argv if argv is not None else sys.argv[1:]
    )
    base_dt, gen_dt = _dtypes(args)
    sides = SIDES if base_dt != gen_dt else SIDES[:3]
    for side in sides:
        proc = subprocess.run(base + ["--side", side], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"side {side} failed (exit {proc.returncode})")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])

    # 2. What bounds the speed
    fl = flops_per_image(args)
    b, g, o = (results[s] for s in SIDES[:3])
    same = results.get("baseline-same", b)
    achieved = fl["gflop_per_image"] * g["images_per_s"]
    util = achieved / fl["matmul_gflops"]
    bound = (
        "compute-bound (near the matmul rate)"
        if util > 0.5
        else "overhead/memory-bound (kernels too small to reach the matmul rate)"
    )

    # 3. Report
    print(f"model {args.model}  n {args.n}  steps {args.steps}  strengths {args.strengths}  "
          f"batch {args.batch_size}")  # fmt: skip
    for r in results.values():
        print(f"{r['side']:<16} {r['dtype']:<5} {r['images_per_s']:9.3f} img/s  {r['seconds']:8.2f} s  "
              f"peak RSS {r['peak_rss_mib']:8.1f} MiB"
              + (f"  peak CUDA {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else ""))  # fmt: skip
    speedup = g["images_per_s"] / b["images_per_s"]
    same_speedup = g["images_per_s"] / same["images_per_s"]
    print(f"speedup generate ({g['dtype']}) / baseline ({b['dtype']}): {speedup:.2f}x   "
          f"(order-grouped batches: {o['images_per_s'] / b['images_per_s']:.2f}x; "
          f"batching alone, both {g['dtype']}: {same_speedup:.2f}x)")  # fmt: skip
    print(f"FLOPs/image: {fl['gflop_per_image']:.3f} GFLOP (UNet {fl['unet_gflop_per_call']:.4f} "
          f"GFLOP/call x {fl['mean_steps']:.1f} steps x CFG + VAE {fl['vae_gflop']:.3f}); "
          f"matmul {fl['matmul_gflops']:.1f} GFLOP/s; generate reaches {achieved:.2f} GFLOP/s "
          f"= {util:.1%}: {bound}")  # fmt: skip
    print(json.dumps({
        "model": args.model, "n": args.n, "steps": args.steps, "strengths": args.strengths,
        "batch_size": args.batch_size,
        "baseline_images_per_s": b["images_per_s"], "generate_images_per_s": g["images_per_s"],
        "generate_order_images_per_s": o["images_per_s"],
        "baseline_dtype": b["dtype"], "generate_dtype": g["dtype"],
        "speedup": round(speedup, 3), "speedup_same_dtype": round(same_speedup, 3),
        "speedup_order_grouping": round(o["images_per_s"] / b["images_per_s"], 3),
        "peak_rss_mib": {r["side"]: r["peak_rss_mib"] for r in results.values()},
        "gflop_per_image": round(fl["gflop_per_image"], 4),
        "matmul_gflops": round(fl["matmul_gflops"], 2), "compute_utilization": round(util, 4),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
