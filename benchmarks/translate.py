"""Benchmark: a 5-strength sweep of one source as ONE batched call vs five single-item calls.

    python benchmarks/translate.py [--model nano] [--adapter DIR] [--steps 25] [--repeats 3]

Both sides run :func:`diffmix.translate.translate` with the same model, strategy, steps,
guidance and seeds, in the same process after a warm-up call (model loading excluded). The
batched call walks the 25-step grid once, running the UNet on every active item per step
(about ``max(steps_i)`` UNet calls); the one-by-one calls run ``sum(steps_i)`` UNet calls of
batch 1. The last stdout line is a JSON object whose ``ratio`` is batched / individual time
(< 1: batching is faster). The outputs of the two sides are also compared (max abs
difference of the float pixels; round-off only).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or hub id")
    p.add_argument("--adapter", help="adapter folder: benchmark diff-mix (default: real-mix)")
    p.add_argument("--dataset", default="demo", help="dataset spec of the source (default: demo)")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps (default: 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument(
        "--strengths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9], metavar="S"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per side (median)")
    p.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch

    from diffmix.data import load_dataset
    from diffmix.translate import TranslateConfig, TranslationItem, translate

    # 1. One source and a target of another class
    ds = load_dataset(args.dataset, split="train")
    src = ds.image(0)
    src_cls = ds.class_names[ds.items[0].label]
    tgt_cls = next(c for c in ds.class_names if c != src_cls)
    cfg = TranslateConfig(strategy="diff-mix" if args.adapter else "real-mix", model=args.model,
                          adapter=args.adapter, num_inference_steps=args.steps,
                          guidance_scale=args.guidance_scale, batch_size=len(args.strengths),
                          device=args.device)  # fmt: skip
    items = [TranslationItem(src, src_cls, tgt_cls, s, seed=0) for s in args.strengths]
    kw = {"class_names": ds.class_names, "superclass": ds.superclass}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def batched():
        return translate(items, cfg, **kw)

    def individual():
        return [translate([it], cfg, **kw)[0] for it in items]

    # 2. Warm up (loads the model), then time both sides alternately
    translate(items[:1], cfg, **kw)
    times: dict[str, list[float]] = {"batched": [], "individual": []}
    outs = {}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("individual", individual)):
            sync()
            t0 = time.perf_counter()
            outs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    tb, ti = statistics.median(times["batched"]), statistics.median(times["individual"])
    diff = max(
        float(np.abs(a.pixels - b.pixels).max())
        for a, b in zip(outs["batched"], outs["individual"], strict=True)
    )
    unet_batched = max(r.steps_run for r in outs["batched"])
    unet_individual = sum(r.steps_run for r in outs["individual"])

    # 3. Report
    print(
        f"model {args.model}  strategy {cfg.strategy}  steps {args.steps}  strengths {args.strengths}"
    )
    lb = f"batched (1 call, {unet_batched} UNet calls):"
    li = f"individual ({len(items)} calls, {unet_individual} UNet calls):"
    print(f"{lb:<40} {tb:8.3f} s")
    print(f"{li:<40} {ti:8.3f} s")
    print(f"ratio batched/individual: {tb / ti:.3f}   max |pixel diff|: {diff:.2e}")
    print(json.dumps({
        "model": args.model, "strategy": cfg.strategy, "steps": args.steps,
        "strengths": args.strengths, "repeats": args.repeats,
        "batched_s": round(tb, 4), "individual_s": round(ti, 4), "ratio": round(tb / ti, 4),
        "unet_calls_batched": unet_batched, "unet_calls_individual": unet_individual,
        "max_abs_pixel_diff": diff,
        "device": str(torch.device(args.device)) if args.device else ("cuda" if torch.cuda.is_available() else "cpu"),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
