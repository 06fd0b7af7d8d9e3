"""The ``diffmix`` command line: one subcommand per stage (``diffmix data ...``).

Each subcommand is a pair of functions: ``add_<name>_parser(subparsers)`` declares its
arguments and sets ``func``; ``cmd_<name>(args) -> int`` runs it. A stage adds its pair to
:data:`SUBCOMMANDS`. Diagnostics go to the log (stderr); results go to stdout. User
errors (bad spec, bad value, missing file) exit with status 2 and a single line
``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("diffmix.cli")

#: Exit status of a run stopped by a user error.
EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- diffmix data


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix data SPEC``: load a dataset, optionally draw a subset, summarize/export."""
    p = subparsers.add_parser(
        "data",
        help="load a dataset (demo, folder, zip, hub:owner/name) and summarize it",
        description="Load one split of a dataset, optionally draw a few-shot or long-tail "
        "subset of the train split, print a summary and optionally export it as a folder.",
    )
    p.add_argument(
        "spec", metavar="SPEC", help="demo[:SEED], a folder, a .zip, or hub:owner/name[:split]"
    )
    p.add_argument(
        "--split", choices=("train", "test"), default="train", help="split to load (default: train)"
    )
    p.add_argument(
        "--shots", type=int, default=None, metavar="K", help="few-shot subset: K images per class"
    )
    p.add_argument("--imbalance", type=float, default=None, metavar="F",
                   help="long-tail subset: smallest/largest class ratio F in (0, 1]")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draw (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="X",
                   help="share of each class held out as test when the dataset has no test split (default: 0.2)")  # fmt: skip
    p.add_argument(
        "--export", metavar="DIR", default=None, help="write the (sub)set as an image folder to DIR"
    )
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")
    p.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from diffmix.data import export_dataset, load_dataset, make_subset, summarize

    wants_subset = args.shots is not None or args.imbalance is not None
    if wants_subset and args.split != "train":
        raise ValueError(
            f"--shots/--imbalance draw a training subset; they cannot be used with --split {args.split}"
        )
    ds = load_dataset(args.spec, split=args.split, test_fraction=args.test_fraction)
    subset = (
        make_subset(ds, shots=args.shots, imbalance=args.imbalance, seed=args.seed)
        if wants_subset
        else None
    )
    summary = summarize(ds, subset)
    if args.export:
        out = export_dataset(ds, summary["indices"], args.export)
        summary["export"] = str(out)
    _write(format_summary(summary))
    if args.json:
        _write(json.dumps(summary, sort_keys=False) + "\n")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a :func:`diffmix.data.summarize` dict."""
    sizes = summary["image_sizes"]
    lines = [
        f"dataset:     {summary['spec']}",
        f"split:       {summary['split']}",
        f"classes:     {summary['num_classes']}",
        f"images:      {summary['num_images']}",
    ]
    if summary.get("shots") is not None:
        lines.append(f"subset:      {summary['shots']}-shot, seed {summary['seed']}")
    elif summary.get("imbalance") is not None:
        lines.append(
            f"subset:      long-tail, imbalance {summary['imbalance']}, seed {summary['seed']}"
        )
    if sizes["min_width"] is not None:
        lines.append(
            f"image size:  width {sizes['min_width']}-{sizes['max_width']} px, "
            f"height {sizes['min_height']}-{sizes['max_height']} px"
        )
    lines.append(f"fingerprint: {summary['fingerprint']}")
    if summary.get("subset_fingerprint"):
        lines.append(f"subset fingerprint: {summary['subset_fingerprint']}")
    width = max((len(c) for c in summary["counts"]), default=0)
    lines.append("per class:")
    lines += [f"  {name:<{width}}  {n}" for name, n in summary["counts"].items()]
    skipped = summary["skipped"]
    lines.append(f"skipped:     {len(skipped)} file(s)")
    lines += [f"  {s['path']}: {s['reason']}" for s in skipped]
    if summary.get("export"):
        lines.append(f"exported to: {summary['export']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- diffmix personalize


def _load_yaml_config(path: str | None) -> dict[str, Any]:
    """Keys of a YAML config file (``--config``); CLI flags given explicitly override them."""
    if not path:
        return {}
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def add_personalize_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix personalize SPEC --out DIR``: textual inversion + LoRA on a base model."""
    p = subparsers.add_parser(
        "personalize",
        help="learn one token per class (+ a UNet LoRA) on a dataset",
        description="Personalize a Stable Diffusion model on a dataset's classes (textual "
        "inversion + DreamBooth-style LoRA). Writes an adapter folder that plain diffusers "
        "calls load (load_lora_weights / load_textual_inversion).",
    )
    p.add_argument(
        "spec", metavar="SPEC", nargs="?", default=None, help="dataset spec (default: demo)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="adapter / run folder to write")
    p.add_argument("--config", metavar="YAML", help="settings file (PersonalizeConfig keys)")
    p.add_argument("--model", help="nano (default), a diffusers folder or a hub id")
    p.add_argument("--steps", type=int, metavar="N")
    p.add_argument("--rank", type=int, metavar="R", help="LoRA rank (default 10)")
    p.add_argument("--shots", type=int, metavar="K")
    p.add_argument("--imbalance", type=float, metavar="F")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--resolution", type=int, metavar="PX")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--grad-accum", type=int, metavar="N")
    p.add_argument("--lr", type=float, metavar="LR", help="LoRA learning rate")
    p.add_argument("--ti-lr", type=float, metavar="LR", help="token learning rate")
    p.add_argument("--superclass", metavar="WORD", help="word after the class token (e.g. bird)")
    p.add_argument("--checkpoint-every", type=int, metavar="N")
    p.add_argument(
        "--sample-every", type=int, metavar="N", help="save a per-class sample grid every N steps"
    )
    p.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"))
    p.add_argument(
        "--ti-only", action="store_true", default=None, help="train tokens only (no LoRA)"
    )
    p.add_argument(
        "--class-balanced", action="store_true", default=None, help="sample classes uniformly"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")
    p.set_defaults(func=cmd_personalize)


def cmd_personalize(args: argparse.Namespace) -> int:
    from diffmix.personalize import PersonalizeConfig, personalize, read_adapter
    from diffmix.runs import Cancelled

    fields = _load_yaml_config(args.config)
    if args.spec is not None:
        fields["dataset"] = args.spec
    for key in PersonalizeConfig.model_fields:
        value = getattr(args, key, None)
        if value is not None and key != "dataset":
            fields[key] = value
    cfg = PersonalizeConfig(**fields)
    try:
        out = personalize(cfg, args.out, resume=args.resume)
    except Cancelled:
        sys.stderr.write(
            f"cancelled; continue with: diffmix personalize ... --out {args.out} --resume\n"
        )
        return 130
    meta = read_adapter(out)
    _write(
        f"adapter:  {out}\nclasses:  {len(meta['class_tokens'])}\n"
        f"template: {meta['prompt_template']}\nloss:     {meta['final_loss']:.4f}\n"
    )
    if args.json:
        _write(json.dumps({"adapter": str(out), "class_tokens": meta["class_tokens"],
                           "prompt_template": meta["prompt_template"], "final_loss": meta["final_loss"]}) + "\n")  # fmt: skip
    return 0


# --------------------------------------------------------------------------- main

#: Parser builders, one per subcommand; later stages append theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_data_parser,
    add_personalize_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``diffmix`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="diffmix",
        description="Diff-Mix Studio: inter-class image mixup with Stable Diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) log records to stderr, one line each.

    Handlers already on the root logger (an embedding app, pytest) are kept.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffmix`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        logger.debug("user error", exc_info=True)
        message = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"error: {message}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
