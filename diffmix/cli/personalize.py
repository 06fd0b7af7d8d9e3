"""``diffmix personalize SPEC --out DIR``: textual inversion + LoRA on a base model."""

from __future__ import annotations

import argparse
import json

from diffmix.cli.flags import (
    Flag,
    add_stage_parser,
    stage_fields,
    write,
)

#: PersonalizeConfig fields with a flag (types, choices, help and defaults: the config's).
FLAGS = (
    Flag("model"),
    Flag("steps", metavar="N"),
    Flag("rank", metavar="R"),
    Flag("shots", metavar="K"),
    Flag("imbalance", metavar="F"),
    Flag("seed", metavar="S"),
    Flag("resolution", metavar="PX"),
    Flag("batch_size", metavar="B"),
    Flag("grad_accum", metavar="N"),
    Flag("lr", metavar="LR"),
    Flag("ti_lr", metavar="LR"),
    Flag("superclass", metavar="WORD"),
    Flag("checkpoint_every", metavar="N"),
    Flag("sample_every", metavar="N"),
    Flag("mixed_precision"),
    Flag("ti_only", help="train tokens only (no LoRA)"),
    Flag(
        "class_balanced",
        "--no-class-balanced",
        action="store_false",
        help="sample images uniformly even on a long-tail subset",
    ),  # fmt: skip
    Flag(
        "class_balanced",
        "--class-balanced",
        action="store_true",
        help="sample classes uniformly (default: on for a long-tail subset, as the authors)",
    ),  # fmt: skip
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix personalize SPEC --out DIR``."""
    add_stage_parser(
        subparsers, "personalize", FLAGS, run,
        help="learn one token per class (+ a UNet LoRA) on a dataset",
        description="Personalize a Stable Diffusion model on a dataset's classes (textual "
        "inversion + DreamBooth-style LoRA). Writes an adapter folder that plain diffusers "
        "calls load (load_lora_weights / load_textual_inversion).",
        out="adapter / run folder to write", resume="continue from the newest checkpoint in --out",
        cancelled="cancelled; continue with: diffmix personalize ... --out {out} --resume",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from diffmix.adapter import read_adapter
    from diffmix.cli.estimate import log_estimate, sized_personalize_fields
    from diffmix.personalize import PersonalizeConfig, personalize

    fields = stage_fields(args, PersonalizeConfig, "personalize")
    cfg = PersonalizeConfig(**sized_personalize_fields(fields, args))
    log_estimate("personalize", cfg)
    out = personalize(cfg, args.out, resume=args.resume)
    meta = read_adapter(out)
    write(
        f"adapter:  {out}\nclasses:  {len(meta['class_tokens'])}\n"
        f"template: {meta['prompt_template']}\nloss (EMA): {meta['final_loss']:.4f}\n"
    )
    if args.json:
        write(json.dumps({"adapter": str(out), "class_tokens": meta["class_tokens"],
                          "prompt_template": meta["prompt_template"],
                          "final_loss": meta["final_loss"]}) + "\n")  # fmt: skip
    return 0
