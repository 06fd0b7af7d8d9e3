"""Measure what nano-SD draws, with plain diffusers calls at standard SD settings.

``python -m diffmix.nano.evaluate [--model nano] [--per-class 10] [--out DIR] [--json]``

A small CNN ("the judge") is trained on the *real* demo train images and checked on the
demo test split; it then classifies:

1. text-to-image samples prompted with each class's plain-word attribute prompt
   (the bar: >= 80% classified as that class),
2. text-to-image samples prompted with the class *names* ("a photo of a quellan bird"),
   which the base model never saw (expected: much worse),
3. img2img translations of real test images of class A with class B's attribute prompt at
   strengths 0.3 / 0.5 / 0.7 / 0.9: the fraction judged B (0.9: >= 70%) and still A (0.3:
   >= 70%), and the mean absolute pixel change inside vs outside the bird mask.

All sampling uses the scheduler saved with the model, 25 steps and guidance 7.5 by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffmix.refclf import SmallCNN, fit_judge, images_to_tensor, predict

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the judge


def load_demo_judge(seed: int = 0, size: int = 64) -> tuple[SmallCNN, list[str], float]:
    """The judge for the demo data, trained once and cached in the workspace.

    Returns ``(model, class_names, test_accuracy)``.
    """
    from diffmix.data.demo import DEMO_CLASSES, DemoConfig, render_demo_image
    from diffmix.workspace import subdir

    cfg = DemoConfig(seed=seed, size=size)
    names = list(DEMO_CLASSES)
    path = subdir("judges") / f"{cfg.key()}-smallcnn.pt"

    def split(split_name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ims, ys = [], []
        for c, name in enumerate(names):
            for i in range(n):
                ims.append(render_demo_image(name, i, split=split_name, seed=seed, size=size)[0])
                ys.append(c)
        return images_to_tensor(ims, size), torch.tensor(ys)

    xte, yte = split("test", cfg.test_per_class)
    model = SmallCNN(len(names))
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        xtr, ytr = split("train", cfg.train_per_class)
        t0 = time.time()
        model = fit_judge(xtr, ytr, len(names), seed=seed)
        torch.save(model.state_dict(), path)
        logger.info("trained the demo judge in %.0f s", time.time() - t0)
    acc = float((predict(model, xte).argmax(-1) == yte).float().mean())
    return model, names, acc


# --------------------------------------------------------------------------- evaluation


def _sample_t2i(
    pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 16
):
    out: list[Image.Image] = []
    for a in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[a : a + batch]]
        res = pipe(
            prompts[a : a + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
        )
        out += res.images
    return out


# ~150 lines: a measurement run by hand, its steps 1-3 mirror the report's sections (plain calls,
# text-to-image, img2img).
def evaluate_nano(
    model: str = "nano",
    *,
    per_class: int = 10,
    steps: int = 25,
    guidance: float = 7.5,
    strengths: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9),
    pairs_per_class: int = 3,
    seed: int = 0,
    out: Path | None = None,
    adapter: Path | None = None,
    skip_img2img: bool = False,
    dtype: str = "fp32",
) -> dict:
    """Run the three measurements of the module docstring; returns a JSON-able report.

    With ``adapter`` (a personalization output folder) it also samples every class through
    the adapter's ``prompt_template`` and class token (LoRA + token embeddings loaded with
    plain ``load_lora_weights`` / ``load_textual_inversion`` calls): ``t2i_adapter_tokens``.
    ``dtype`` (``fp32`` or ``bf16``) is the pipelines' weight dtype (``bf16`` measures the
    reduced-precision CPU path; the judge always runs in fp32).
    """
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from diffmix.data.demo import SUPERCLASS, class_prompt, render_demo_image
    from diffmix.pipeline import pick_dtype, resolve_model

    weight_dtype = pick_dtype(torch.device("cpu"), dtype)

    # 1. Plain diffusers calls: load the folder exactly as a user would.
    ref = resolve_model(model)
    pipe = StableDiffusionPipeline.from_pretrained(ref.source, dtype=weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    judge, names, judge_acc = load_demo_judge(seed=0, size=64)
    report: dict = {
        "model": model,
        "dtype": str(weight_dtype).replace("torch.", ""),
        "steps": steps,
        "guidance_scale": guidance,
        "judge_test_accuracy": judge_acc,
    }
    t0 = time.time()

    # 2. Text-to-image by attribute prompt and by class name.
    grids: dict[str, list[Image.Image]] = {}
    for mode in ("attributes", "class_name"):
        prompts, labels, seeds = [], [], []
        for c, name in enumerate(names):
            p = class_prompt(name) if mode == "attributes" else f"a photo of a {name} {SUPERCLASS}"
            for k in range(per_class):
                prompts.append(p)
                labels.append(c)
                seeds.append(seed * 100_000 + c * 1000 + k)
        imgs = _sample_t2i(pipe, prompts, seeds, steps, guidance)
        grids[mode] = imgs
        pred = predict(judge, images_to_tensor(imgs, 64)).argmax(-1)
        correct = pred == torch.tensor(labels)
        per = {
            n: float(correct[torch.tensor(labels) == c].float().mean()) for c, n in enumerate(names)
        }
        report[f"t2i_{mode}"] = {"accuracy": float(correct.float().mean()), "per_class": per}
        logger.info("t2i %s accuracy %.3f", mode, report[f"t2i_{mode}"]["accuracy"])

    if adapter is not None:
        meta = json.loads((Path(adapter) / "adapter.json").read_text())
        personal = StableDiffusionPipeline.from_pretrained(ref.source, dtype=weight_dtype)
        personal.set_progress_bar_config(disable=True)
        tokens = [meta["class_tokens"][n] for n in names]
        personal.load_textual_inversion(
            [str(Path(adapter) / "embeddings" / f"{t.strip('<>')}.safetensors") for t in tokens]
        )
        if (Path(adapter) / "pytorch_lora_weights.safetensors").is_file():
            personal.load_lora_weights(str(adapter))
        prompts, labels, seeds = [], [], []
        for c, tok in enumerate(tokens):
            for k in range(per_class):
                prompts.append(meta["prompt_template"].format(token=tok))
                labels.append(c)
                seeds.append(seed * 100_000 + c * 1000 + k)
        imgs = _sample_t2i(personal, prompts, seeds, steps, guidance)
        grids["adapter_tokens"] = imgs
        pred = predict(judge, images_to_tensor(imgs, 64)).argmax(-1)
        correct = pred == torch.tensor(labels)
        per = {
            n: float(correct[torch.tensor(labels) == c].float().mean()) for c, n in enumerate(names)
        }
        report["t2i_adapter_tokens"] = {
            "accuracy": float(correct.float().mean()),
            "per_class": per,
            "adapter": str(adapter),
        }
        logger.info("t2i adapter tokens accuracy %.3f", report["t2i_adapter_tokens"]["accuracy"])
    if skip_img2img:
        report["seconds"] = round(time.time() - t0, 1)
        _save_outputs(out, grids, [], per_class, report)
        return report

    # 3. img2img: real test image of A, prompt of B.
    rng = np.random.default_rng(seed)
    src_imgs, src_masks, a_lab, b_lab = [], [], [], []
    for a, name in enumerate(names):
        others = [b for b in range(len(names)) if b != a]
        for k, b in enumerate(rng.choice(others, size=pairs_per_class, replace=False)):
            im, m = render_demo_image(name, k, split="test", seed=0, size=64)
            src_imgs.append(im)
            src_masks.append(np.asarray(m) > 127)
            a_lab.append(a)
            b_lab.append(int(b))
    prompts = [class_prompt(names[b]) for b in b_lab]
    src_t = images_to_tensor(src_imgs, 64)
    i2i_rows = {}
    i2i_grid: list[Image.Image] = list(src_imgs[:12])
    for s in strengths:
        outs: list[Image.Image] = []
        for a0 in range(0, len(prompts), 16):
            gens = [
                torch.Generator().manual_seed(seed * 100_000 + j)
                for j in range(a0, min(a0 + 16, len(prompts)))
            ]
            res = i2i(
                prompts[a0 : a0 + 16],
                image=[im.resize((size, size), Image.BICUBIC) for im in src_imgs[a0 : a0 + 16]],
                strength=s,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
            )
            outs += [im.resize((64, 64), Image.BICUBIC) for im in res.images]
        i2i_grid += outs[:12]
        out_t = images_to_tensor(outs, 64)
        pred = predict(judge, out_t).argmax(-1)
        diff = (out_t - src_t).abs().mean(1).numpy()  # (n, H, W), 0-1 scale
        masks = np.stack(src_masks)
        fg = float(diff[masks].mean())
        bg = float(diff[~masks].mean())
        i2i_rows[str(s)] = {
            "target_rate": float((pred == torch.tensor(b_lab)).float().mean()),
            "source_rate": float((pred == torch.tensor(a_lab)).float().mean()),
            "foreground_change": fg,
            "background_change": bg,
        }
        logger.info("img2img s=%.1f %s", s, i2i_rows[str(s)])
    report["img2img"] = i2i_rows
    report["pairs"] = len(prompts)
    report["seconds"] = round(time.time() - t0, 1)

    _save_outputs(out, grids, i2i_grid, per_class, report)
    return report


def _save_outputs(
    out: Path | None, grids: dict, i2i_grid: list, per_class: int, report: dict
) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for mode, imgs in grids.items():
        _grid(imgs, per_class, 64).save(out / f"t2i_{mode}.png")
    if i2i_grid:
        _grid(i2i_grid, 12, 64).save(out / "img2img.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _grid(images: list[Image.Image], cols: int, cell: int) -> Image.Image:
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (cols * cell, rows * cell), "white")
    for i, im in enumerate(images):
        g.paste(im.resize((cell, cell)), ((i % cols) * cell, (i // cols) * cell))
    return g


def format_report(r: dict) -> str:
    """A human-readable table of an :func:`evaluate_nano` report."""
    lines = [
        f"judge (SmallCNN on real demo train) test accuracy: {r['judge_test_accuracy']:.3f}",
        f"text-to-image, attribute prompts: {r['t2i_attributes']['accuracy']:.3f}  (bar >= 0.80)",
        f"text-to-image, class-name prompts: {r['t2i_class_name']['accuracy']:.3f}  (expected much lower)",
    ]
    if "t2i_adapter_tokens" in r:
        lines.append(
            f"text-to-image, adapter class tokens: {r['t2i_adapter_tokens']['accuracy']:.3f}  (bar >= 0.75)"
        )
    if "img2img" in r:
        lines += [
            f"img2img over {r['pairs']} (A -> B) pairs:",
            "  strength  judged B  still A  fg change  bg change",
        ]
    for s, row in r.get("img2img", {}).items():
        lines.append(
            f"  {float(s):8.1f}  {row['target_rate']:8.3f}  {row['source_rate']:7.3f}"
            f"  {row['foreground_change']:9.3f}  {row['background_change']:9.3f}"
        )
    if "img2img" in r:
        lines.append(
            "  bars: judged B >= 0.70 at 0.9; still A >= 0.70 at 0.3; fg change > bg change at 0.5-0.7"
        )
    keys = [k for k in ("t2i_attributes", "t2i_class_name", "t2i_adapter_tokens") if k in r]
    lines.append("per-class accuracy: " + "  ".join(k.removeprefix("t2i_") for k in keys))
    for n in r["t2i_attributes"]["per_class"]:
        lines.append(f"  {n:10s} " + "  ".join(f"{r[k]['per_class'][n]:10.2f}" for k in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="nano")
    p.add_argument("--per-class", type=int, default=10, help="text-to-image samples per class")
    p.add_argument(
        "--pairs-per-class", type=int, default=3, help="img2img (A -> B) pairs per source class"
    )
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for sample grids and report.json")
    p.add_argument(
        "--adapter", type=Path, default=None, help="also sample through this adapter's class tokens"
    )
    p.add_argument(
        "--skip-img2img", action="store_true", help="only the text-to-image measurements"
    )
    p.add_argument("--dtype", default="fp32", help="pipeline weights: fp32 (default) or bf16")
    p.add_argument("--json", action="store_true", help="last stdout line: the report as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    report = evaluate_nano(
        args.model,
        per_class=args.per_class,
        pairs_per_class=args.pairs_per_class,
        steps=args.steps,
        guidance=args.guidance_scale,
        seed=args.seed,
        out=args.out,
        adapter=args.adapter,
        skip_img2img=args.skip_img2img,
        dtype=args.dtype,
    )
    sys.stdout.write(format_report(report) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
