"""``diffmix generate SPEC --out DIR``: a plan of translations -> a synthetic dataset folder."""

from __future__ import annotations

import argparse
import json
import os

from diffmix.cli.flags import (
    Flag,
    add_stage_parser,
    comma_list,
    stage_fields,
    write,
)

#: GenerateConfig fields with a flag (types, choices, help and defaults: the config's);
#: ``--strength S`` is ``strengths: [S]``.
FLAGS = (
    Flag("model"),
    Flag("adapter", metavar="DIR"),
    Flag("strategy", metavar="NAME"),
    Flag("multiplier", metavar="M"),
    Flag(
        "strength",
        metavar="S",
        type=float,
        group="strength",
        field=False,
        help="one fixed strength in (0, 1]",
    ),  # fmt: skip
    Flag(
        "strengths",
        metavar="S1,S2,...",
        group="strength",
        type=comma_list(float, "--strengths", "0.5,0.7,0.9"),
    ),  # fmt: skip
    Flag("shots", metavar="K"),
    Flag("imbalance", metavar="F"),
    Flag("subset_seed", metavar="S"),
    Flag("targets"),
    Flag("confusion", metavar="FILE"),
    Flag("limit", metavar="N"),
    Flag("filter_bottom", metavar="FRAC"),
    Flag("score", "--no-score", action="store_false", help="skip faithfulness/diversity scores"),
    Flag("batch_size", metavar="B"),
    Flag("grouping"),
    Flag("num_inference_steps", "--steps", metavar="N"),
    Flag("guidance_scale", metavar="G"),
    Flag("gamma", metavar="G"),
    Flag("seed", metavar="N"),
    Flag("superclass", metavar="WORD"),
    Flag(
        "prompt_template",
        metavar="TEXT",
        help="prompt replacing the strategy's own; {token} = the target's token or name, "
        "{superclass} (default: the strategy's prompt)",
    ),
    Flag("device"),
    Flag("dtype"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix generate SPEC --out DIR``."""
    add_stage_parser(
        subparsers, "generate", FLAGS, run, extra=extra_fields,
        help="make a synthetic dataset: every training image translated M times",
        description="Plan M translations per real training image (target class, strength, "
        "seed), then run them in batches into an image folder with metadata.jsonl (soft labels, "
        "scores, provenance). A rerun into the same --out continues where it stopped; "
        "under `accelerate launch` the plan is split between processes.",
        out="synthetic dataset / run folder", resume="continue the generation in --out",
        cancelled="cancelled; continue with the same command (--out {out})",
    )  # fmt: skip


def extra_fields(args: argparse.Namespace) -> dict:
    """Config fields of generate's flags that are not fields themselves (``--strength``)."""
    strength = getattr(args, "strength", None)
    return {"strengths": [strength]} if strength is not None else {}


def run(args: argparse.Namespace) -> int:
    from diffmix.generate import GenerateConfig, generate

    fields = stage_fields(args, GenerateConfig, "generate", extra_fields(args))
    cfg = GenerateConfig(**fields)  # a ValidationError becomes one line in main()
    from diffmix.cli.estimate import log_estimate

    log_estimate("generate", cfg)
    summary = generate(cfg, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # other processes of `accelerate launch`
        return 0
    if summary.get("generated") and summary.get("images_per_s"):  # feeds the next estimates
        from diffmix import costs

        costs.record_generate_run(cfg.resolved(), images_per_s=float(summary["images_per_s"]))
    write(
        f"folder:   {summary['out']}\n"
        f"images:   {summary['images']} of {summary['planned']} planned "
        f"({summary['generated']} new, {summary['images_per_s']:.3g} img/s)\n"
        f"kept:     {summary['kept']}\n"
        "per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()) + "\n"
    )
    if args.json:
        write(json.dumps(summary) + "\n")
    return 0
