"""``diffmix personalize SPEC --out DIR``: textual inversion + LoRA on a base model."""

from __future__ import annotations

import argparse
import json
import sys

from diffmix.cli.flags import (
    Flag,
    add_config_flags,
    add_out_config,
    add_resume_json,
    add_spec,
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
    p = subparsers.add_parser(
        "personalize",
        help="learn one token per class (+ a UNet LoRA) on a dataset",
        description="Personalize a Stable Diffusion model on a dataset's classes (textual "
        "inversion + DreamBooth-style LoRA). Writes an adapter folder that plain diffusers "
        "calls load (load_lora_weights / load_textual_inversion).",
    )
    add_spec(p)
    add_out_config(p, "adapter / run folder to write", "PersonalizeConfig")
    add_config_flags(p, "personalize", FLAGS)
    add_resume_json(p, "continue from the newest checkpoint in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffmix.cli.estimate import log_estimate, sized_personalize_fields
    from diffmix.personalize import PersonalizeConfig, personalize, read_adapter
    from diffmix.runs import Cancelled

    fields = stage_fields(args, PersonalizeConfig, "personalize")
    cfg = PersonalizeConfig(**sized_personalize_fields(fields, args))
    log_estimate("personalize", cfg)
    try:
        out = personalize(cfg, args.out, resume=args.resume)
    except Cancelled:
        sys.stderr.write(
            f"cancelled; continue with: diffmix personalize ... --out {args.out} --resume\n"
        )
        return 130
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
