"""``diffmix train SPEC --out DIR``: train + evaluate a classifier (real + synthetic data)."""

from __future__ import annotations

import argparse
import json

from diffmix.cli.flags import (
    Flag,
    add_stage_parser,
    comma_list,
    stage_fields,
    write,
)

#: TrainConfig fields with a flag (types, choices, help and defaults: the config's).
FLAGS = (
    Flag("shots", metavar="K"),
    Flag("imbalance", metavar="F"),
    Flag(
        "synthetic",
        metavar="DIR[,DIR...]",
        convert=comma_list(str, "--synthetic", "DIR1,DIR2", "folders", ValueError),
    ),
    Flag("p", metavar="P"),
    Flag("gamma", metavar="G"),
    Flag("synthetic_pick"),
    Flag("mix"),
    Flag("mix_alpha", metavar="A"),
    Flag("mix_prob", metavar="P"),
    Flag("synthetic_label_scale", metavar="X"),
    Flag(
        "synthetic_label_smoothing", help="smooth synthetic labels too, as the authors' loss does"
    ),
    Flag("arch", metavar="NAME"),
    Flag("pretrained", metavar="WEIGHTS"),
    Flag("tune"),
    Flag("resolution", metavar="PX"),
    Flag("epochs", metavar="E"),
    Flag("batch_size", metavar="B"),
    Flag("lr", metavar="LR"),
    Flag("weight_decay", metavar="WD"),
    Flag("label_smoothing", metavar="EPS"),
    Flag("augment"),
    Flag("seed", metavar="S"),
    Flag("subset_seed", metavar="S"),
    Flag("balanced_sampling", help="sample classes uniformly (long tail)"),
    Flag("loss"),
    Flag("groups"),
    Flag("eval_every", metavar="N"),
    Flag("mixed_precision"),
    Flag("num_threads", "--threads", metavar="N"),
    Flag("cache_mb", metavar="MB"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix train SPEC --out DIR``."""
    add_stage_parser(
        subparsers, "train", FLAGS, run,
        help="train a classifier on real (+ synthetic) images and report test accuracy",
        description="Train a timm classifier (or the tiny 'smallcnn') on the train split of a "
        "dataset -- optionally few-shot or long-tail -- where each real sample is replaced "
        "with probability P by a Diff-Mix synthetic image carrying its soft label. Reports "
        "the final epoch's test accuracy (overall, per class, head/medium/tail).",
        out="run folder to write", resume="continue from the newest checkpoint in --out",
        cancelled="cancelled; continue with: diffmix train ... --out {out} --resume",
    )  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def run(args: argparse.Namespace) -> int:
    from diffmix.classify import TrainConfig, train
    from diffmix.cli.estimate import log_estimate

    cfg = TrainConfig(**stage_fields(args, TrainConfig, "train"))
    log_estimate("train", cfg)
    result = train(cfg, args.out, resume=args.resume)
    text = (
        f"run:           {result['out']}\n"
        f"backbone:      {result['arch']} ({result['pretrained']} weights, {result['tune']} "
        f"training) at {result['resolution']} px\n"
        f"epochs:        {result['epochs']}\n"
        f"test accuracy: {_pct(result['test_accuracy'])} (final epoch)\n"
    )
    if len(set(result["train_counts"].values())) > 1:  # groups mean something on long tails only
        text += (
            f"head/medium/tail: {_pct(result['head_accuracy'])} / "
            f"{_pct(result['medium_accuracy'])} / {_pct(result['tail_accuracy'])}\n"
        )
    write(text)
    if args.json:
        keys = ("test_accuracy", "epochs", "per_class_accuracy", "head_accuracy",
                "medium_accuracy", "tail_accuracy", "mean_class_accuracy", "train_images",
                "synthetic_images", "arch", "pretrained", "tune", "resolution", "out")  # fmt: skip
        write(json.dumps({k: result[k] for k in keys}) + "\n")
    return 0
