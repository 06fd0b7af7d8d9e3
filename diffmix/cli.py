"""The ``diffmix`` command line: one subcommand per stage (``diffmix data ...``).

Each subcommand is a pair of functions: ``add_<name>_parser(subparsers)`` declares its
arguments and sets ``func``; ``cmd_<name>(args) -> int`` runs it. A stage adds its pair to
:data:`SUBCOMMANDS`. Diagnostics go to the log (stderr); results go to stdout. User
errors (bad spec, bad value, missing file) and system errors the user can fix (a full disk,
an unwritable folder) exit with status 2 and a single line ``error: ...`` on stderr; Ctrl-C
and SIGTERM exit with 130 / 143. The run directory's status.json says the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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


def _overlay_flags(
    fields: dict[str, Any],
    args: argparse.Namespace,
    config_cls: type,
    skip: Sequence[str] = ("dataset",),
) -> dict[str, Any]:
    """Copy every flag the user gave (not None) onto ``fields`` for the keys of ``config_cls``.

    Flags override the ``--config`` YAML; keys in ``skip`` are set by the caller.
    """
    for key in config_cls.model_fields:
        value = getattr(args, key, None)
        if value is not None and key not in skip:
            fields[key] = value
    return fields


def _stage_fields(
    args: argparse.Namespace,
    config_cls: type,
    stage: str,
    extra: dict[str, Any] | None = None,
    skip: Sequence[str] = ("dataset",),
) -> dict[str, Any]:
    """A stage's config fields: the ``--config`` YAML, the positional dataset spec, every flag
    the user gave and ``extra``; then the recipe (``--recipe``, else the YAML's ``recipe:``,
    :mod:`diffmix.recipes`) fills the fields none of those set; the result is checked against
    the deployment's settings (:func:`_check_request`)."""
    from diffmix.recipes import apply_recipe

    fields = _load_yaml_config(args.config)
    recipe = fields.pop("recipe", None)
    if getattr(args, "recipe", None):
        recipe = args.recipe
    if getattr(args, "spec", None) is not None:
        fields["dataset"] = args.spec
    fields = _overlay_flags(fields, args, config_cls, skip=skip)
    fields.update(extra or {})
    fields = apply_recipe(recipe, stage, fields)
    _check_request(stage, {**fields, "config": args.config})
    return fields


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """The ``--recipe`` flag: the authors' settings by name (explicit flags and YAML keys win)."""
    from diffmix.recipes import recipe_names

    p.add_argument(
        "--recipe", choices=recipe_names(),
        help="the Diff-Mix authors' settings (strength, gamma, p, multiplier, subset, balanced "
        "sampling; see docs/fidelity.md); flags and YAML keys you give override its values",
    )  # fmt: skip


def _check_request(stage: str, fields: dict[str, Any]) -> None:
    """The deployment's rules (``DIFFMIX_*``: paths, work limits) applied to a stage's fields.

    A job the app starts inherits the app's environment, so the rules hold here too, whatever
    reached the command line; on a private machine the limits are generous.
    """
    from diffmix.settings import Settings, check_request

    check_request(stage, fields, Settings.from_env())


def _add_resume_json(p: argparse.ArgumentParser, resume_help: str) -> None:
    """The ``--resume`` and ``--json`` flags every long stage has."""
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")


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
    p.add_argument(
        "--config", metavar="YAML", help="settings file (PersonalizeConfig keys; may set recipe:)"
    )
    _add_recipe(p)
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
        "--no-class-balanced", dest="class_balanced", action="store_false", default=None,
        help="sample images uniformly even on a long-tail subset",
    )  # fmt: skip
    p.add_argument(
        "--class-balanced",
        action="store_true",
        default=None,
        help="sample classes uniformly (default: on for a long-tail subset, as the authors)",
    )
    _add_resume_json(p, "continue from the newest checkpoint in --out")
    p.set_defaults(func=cmd_personalize)


def cmd_personalize(args: argparse.Namespace) -> int:
    from diffmix.personalize import PersonalizeConfig, personalize, read_adapter
    from diffmix.runs import Cancelled

    fields = _stage_fields(args, PersonalizeConfig, "personalize")
    cfg = PersonalizeConfig(**_sized_personalize_fields(fields, args))
    _log_estimate("personalize", cfg)
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
        f"template: {meta['prompt_template']}\nloss (EMA): {meta['final_loss']:.4f}\n"
    )
    if args.json:
        _write(json.dumps({"adapter": str(out), "class_tokens": meta["class_tokens"],
                           "prompt_template": meta["prompt_template"], "final_loss": meta["final_loss"]}) + "\n")  # fmt: skip
    return 0


def _sized_personalize_fields(fields: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fill ``steps`` when neither a flag nor the YAML set it: a resumed run keeps its recorded
    steps; a new one gets the hardware-sized default (:func:`diffmix.costs.personalize_defaults`,
    measured once on this machine), and the log says where the number comes from."""
    if fields.get("steps") is not None:
        return fields
    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        try:
            steps = json.loads(saved.read_text()).get("steps")
        except (OSError, ValueError):
            steps = None
        if steps:
            return {**fields, "steps": int(steps)}
    from diffmix import costs

    found = costs.personalize_defaults(
        str(fields.get("model") or "nano"), batch=int(fields.get("batch_size") or 8),
        resolution=fields.get("resolution"), calibrate=True,
    )  # fmt: skip
    logger.info("personalize: --steps not given: %s", found["source"])
    return {**fields, "steps": found["steps"]}


def _log_estimate(stage: str, cfg) -> None:
    """Log the stage's estimated time before it starts (:mod:`diffmix.costs`; this machine's
    speed is measured once, the first time, in a few seconds). An estimate that cannot be made
    (a dataset that does not load yet) is skipped: the stage then says what is wrong."""
    from diffmix import costs

    try:
        if stage == "personalize":
            est = costs.personalize_estimate(cfg, calibrate=True)
        elif stage == "train":
            est = costs.estimate_train_config(cfg, calibrate=True)
        else:
            est = costs.estimate_generate_config(cfg, calibrate=True)
    except (ValueError, OSError, RuntimeError) as err:
        logger.debug("no time estimate for %s: %s", stage, err)
        return
    logger.info("%s: estimated time %s", stage, est.text())


# --------------------------------------------------------------------------- diffmix translate


#: Names of diffmix.translate.STRATEGIES (kept here so building the parser does not import torch).
TRANSLATE_STRATEGIES = ("diff-mix", "diff-aug", "diff-gen", "real-mix", "real-aug", "real-gen",
                        "ti-mix", "ti-aug", "mixup", "cutmix")  # fmt: skip


def add_translate_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix translate``: translate one source image toward a class at one or more strengths."""
    p = subparsers.add_parser(
        "translate",
        help="translate a source image to a target class (Diff-Mix and baselines)",
        description="Translate one source image toward a target class at one or more strengths "
        "(all strengths share one batched denoising loop), write the results as PNG files and "
        "score them (faithfulness: reference-classifier probability of the target; diversity: "
        "distance from the source). INDEX is a train-split index; PATH an image file.",
    )
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or a hub id")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder (diff-* and ti-* strategies)")
    p.add_argument("--dataset", default="demo", metavar="SPEC", help="dataset spec (default: demo)")
    p.add_argument("--source", metavar="INDEX_OR_PATH",
                   help="train-split index or image file (not needed for *-gen)")  # fmt: skip
    p.add_argument("--source-class", metavar="CLASS",
                   help="class of a PATH source (default: the reference classifier's guess)")  # fmt: skip
    p.add_argument("--target", required=True, metavar="CLASS", help="target class name")
    p.add_argument("--strength", type=float, nargs="+", metavar="S",
                   help="strength(s) in (0, 1] (default for *-gen: 1)")  # fmt: skip
    p.add_argument("--strategy", default="diff-mix", metavar="NAME",
                   help=f"one of {', '.join(TRANSLATE_STRATEGIES)} (default: diff-mix)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every item (default: 0)")
    p.add_argument("--steps", type=int, default=25, metavar="N", help="num_inference_steps (25)")
    p.add_argument(
        "--guidance-scale", type=float, default=7.5, metavar="G", help="CFG weight (7.5)"
    )
    p.add_argument(
        "--gamma", type=float, default=0.5, metavar="G", help="soft-label exponent (0.5)"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG results")
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")
    p.set_defaults(func=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:

    from diffmix import score
    from diffmix.data import load_dataset, open_rgb
    from diffmix.translate import TranslateConfig, TranslationItem, get_strategy, translate

    # 1. Check inputs
    st = get_strategy(args.strategy)
    strengths = args.strength
    if strengths is None:
        if st.generative != "txt2img":
            raise ValueError(f"--strength is required for {st.name}")
        strengths = [1.0]
    if args.source is None and st.generative != "txt2img":
        raise ValueError(f"--source is required for {st.name}")
    _check_request("translate", {"dataset": args.dataset, "model": args.model,
                                 "adapter": args.adapter, "source": args.source,
                                 "num_inference_steps": args.steps})  # fmt: skip
    cfg = TranslateConfig(strategy=st.name, model=args.model, adapter=args.adapter,
                          num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                          gamma=args.gamma, device=args.device)  # fmt: skip
    ds = load_dataset(args.dataset, split="train")
    target = ds.class_names[ds.class_index(args.target)]

    # 2. Source image and class
    source, source_class = None, None
    if args.source is not None:
        if args.source.strip().lstrip("-").isdigit():
            index = int(args.source)
            if not 0 <= index < len(ds):
                raise ValueError(f"source index {index} outside 0..{len(ds) - 1} (train split)")
            source, source_class = ds.image(index), ds.class_names[ds.items[index].label]
        else:
            source = open_rgb(args.source)
            if args.source_class is not None:
                source_class = ds.class_names[ds.class_index(args.source_class)]
            else:
                clf = score.reference_classifier(ds)
                source_class = ds.class_names[int(clf.probs([source])[0].argmax())]
                logger.info(
                    "source class not given: the reference classifier says %r", source_class
                )

    # 3. Partner image of the target class (mixup / cutmix): a seeded pick in the train split
    partner = None
    if st.generative == "none":
        import random

        pool = [i for i, it in enumerate(ds.items) if ds.class_names[it.label] == target]
        partner = ds.image(random.Random(args.seed).choice(pool))

    # 4. Translate (one batched call) and score
    items = [
        TranslationItem(source, source_class, target, s, args.seed, partner) for s in strengths
    ]
    results = translate(items, cfg, class_names=ds.class_names, superclass=ds.superclass)
    images = [r.image for r in results]
    clf = score.reference_classifier(ds)  # fitted once per dataset, then read from the workspace
    faith = score.faithfulness(clf, images, [target] * len(images))
    div = (
        score.diversity_from_source(clf, images, [source] * len(images))
        if source is not None
        else None
    )

    # 5. Write the images and the provenance
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, r in enumerate(results):
        file = out / f"{k:02d}-{st.name}-s{r.strength:.2f}.png"
        r.image.save(file)
        rows.append({"strength": r.strength, "file": str(file), "soft_label": r.soft_label,
                     "faithfulness": float(faith[k]),
                     "diversity": float(div[k]) if div is not None else None,
                     "judge": clf.judge, "diversity_metric": score.diversity_metric(clf)})  # fmt: skip
    records = [dict(r.record(), **row, source=args.source, model=args.model, adapter=args.adapter,
                    dataset=args.dataset, steps=args.steps, guidance_scale=args.guidance_scale)
               for r, row in zip(results, rows, strict=True)]  # fmt: skip
    (out / "translations.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = [f"strategy: {st.name}  source: {source_class}  target: {target}  "
             f"(scored by the {clf.judge} judge; diversity: {score.diversity_metric(clf)})",
             f"{'strength':>8}  {'target p':>8}  {'diversity':>9}  file"]  # fmt: skip
    for row in rows:
        d = "-" if row["diversity"] is None else f"{row['diversity']:.3f}"
        lines.append(f"{row['strength']:>8.2f}  {row['faithfulness']:>8.3f}  {d:>9}  {row['file']}")
    _write("\n".join(lines) + "\n")
    if args.json:
        _write(json.dumps({"results": rows}) + "\n")
    return 0


# --------------------------------------------------------------------------- diffmix train


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix train SPEC --out DIR``: train + evaluate a classifier (real + synthetic data)."""
    p = subparsers.add_parser(
        "train",
        help="train a classifier on real (+ synthetic) images and report test accuracy",
        description="Train a timm classifier (or the tiny 'smallcnn') on the train split of a "
        "dataset -- optionally few-shot or long-tail -- where each real sample is replaced "
        "with probability P by a Diff-Mix synthetic image carrying its soft label. Reports "
        "the final epoch's test accuracy (overall, per class, head/medium/tail).",
    )
    p.add_argument(
        "spec", metavar="SPEC", nargs="?", default=None, help="dataset spec (default: demo)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument(
        "--config", metavar="YAML", help="settings file (TrainConfig keys; may set recipe:)"
    )
    _add_recipe(p)
    p.add_argument("--shots", type=int, metavar="K", help="few-shot: K real images per class")
    p.add_argument("--imbalance", type=float, metavar="F", help="long-tail factor F in (0, 1]")
    p.add_argument("--synthetic", metavar="DIR[,DIR...]", help="synthetic dataset folder(s)")
    p.add_argument("--p", type=float, metavar="P",
                   help="probability of replacing a real sample by a synthetic one (default 0.1)")  # fmt: skip
    p.add_argument("--gamma", type=float, metavar="G", help="soft-label power (default 0.5)")
    p.add_argument("--synthetic-pick", choices=("uniform", "same_source"),
                   help="draw replacements from the whole pool (default) or the same source")  # fmt: skip
    p.add_argument("--mix", choices=("none", "mixup", "cutmix"), help="batch mixing baseline")
    p.add_argument("--mix-alpha", type=float, metavar="A", help="Beta(A, A) of mixup/cutmix")
    p.add_argument(
        "--mix-prob",
        type=float,
        metavar="P",
        help="probability a batch is mixed (default 0.5, the authors')",
    )
    p.add_argument(
        "--synthetic-label-scale",
        type=float,
        metavar="X",
        help="factor on synthetic soft labels (default 1; the authors' CUB: 0.9)",
    )
    p.add_argument(
        "--synthetic-label-smoothing",
        action="store_true",
        default=None,
        help="smooth synthetic labels too, as the authors' loss does",
    )
    p.add_argument("--arch", metavar="NAME",
                   help="smallcnn or a timm model (default: resnet18 on the demo, "
                        "tf_efficientnet_lite0 on real photos)")  # fmt: skip
    p.add_argument("--pretrained", metavar="WEIGHTS",
                   help="'lite0' (built-in ImageNet EfficientNet-Lite0, no download; default on "
                        "real photos), 'scratch' (default on the demo), a local checkpoint, "
                        "'timm' or a Hub id (downloads)")  # fmt: skip
    p.add_argument("--tune", choices=("full", "head"),
                   help="train every weight, or only the head on the frozen pretrained backbone "
                        "(default: head with the built-in lite0 weights, else full)")  # fmt: skip
    p.add_argument(
        "--resolution",
        type=int,
        metavar="PX",
        help="image side (default: 224 with pretrained weights, 64 from scratch)",
    )
    p.add_argument("--epochs", type=int, metavar="E", help="default 30")
    p.add_argument("--batch-size", type=int, metavar="B", help="default 32")
    p.add_argument("--lr", type=float, metavar="LR", help="peak SGD learning rate (default 0.05)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="default 5e-4")
    p.add_argument("--label-smoothing", type=float, metavar="EPS", help="default 0.1")
    p.add_argument("--augment", choices=("resized_crop", "crop", "flip"))
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--subset-seed", type=int, metavar="S", help="seed of the subset draw")
    p.add_argument("--balanced-sampling", action="store_true", default=None,
                   help="sample classes uniformly (long tail)")  # fmt: skip
    p.add_argument("--loss", choices=("ce", "balanced-softmax", "drw"))
    p.add_argument("--groups", choices=("thirds", "counts"), help="head/medium/tail rule")
    p.add_argument("--eval-every", type=int, metavar="N")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--threads", dest="num_threads", type=int, metavar="N",
                   help="torch CPU threads (1 is often fastest on a busy CPU)")  # fmt: skip
    p.add_argument("--cache-mb", type=int, metavar="MB",
                   help="memory for decoded images; the rest streams from disk")  # fmt: skip
    _add_resume_json(p, "continue from the newest checkpoint in --out")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from diffmix.classify import TrainConfig, train
    from diffmix.runs import Cancelled

    fields = _stage_fields(args, TrainConfig, "train")
    cfg = TrainConfig(**fields)
    _log_estimate("train", cfg)
    try:
        result = train(cfg, args.out, resume=args.resume)
    except Cancelled:
        sys.stderr.write(f"cancelled; continue with: diffmix train ... --out {args.out} --resume\n")
        return 130

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    text = (
        f"run:           {result['out']}\n"
        f"backbone:      {result['arch']} ({result['pretrained']} weights, {result['tune']} "
        f"training) at {result['resolution']} px\n"
        f"epochs:        {result['epochs']}\n"
        f"test accuracy: {pct(result['test_accuracy'])} (final epoch)\n"
    )
    if len(set(result["train_counts"].values())) > 1:  # groups mean something on long tails only
        text += (
            f"head/medium/tail: {pct(result['head_accuracy'])} / "
            f"{pct(result['medium_accuracy'])} / {pct(result['tail_accuracy'])}\n"
        )
    _write(text)
    if args.json:
        keys = ("test_accuracy", "epochs", "per_class_accuracy", "head_accuracy",
                "medium_accuracy", "tail_accuracy", "mean_class_accuracy", "train_images",
                "synthetic_images", "arch", "pretrained", "tune", "resolution", "out")  # fmt: skip
        _write(json.dumps({k: result[k] for k in keys}) + "\n")
    return 0


# --------------------------------------------------------------------------- diffmix generate


def _strength_list(text: str) -> list[float]:
    """``"0.5,0.7,0.9"`` -> ``[0.5, 0.7, 0.9]`` (argparse type of --strengths)."""
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--strengths takes comma-separated numbers like 0.5,0.7,0.9, got {text!r}"
        ) from None


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix generate SPEC --out DIR``: a plan of translations -> a synthetic dataset folder."""
    p = subparsers.add_parser(
        "generate",
        help="make a synthetic dataset: every training image translated M times",
        description="Plan M translations per real training image (target class, strength, "
        "seed), then run them in batches into an image folder with metadata.jsonl (soft labels, "
        "scores, provenance). A rerun into the same --out continues where it stopped; "
        "under `accelerate launch` the plan is split between processes.",
    )
    p.add_argument(
        "spec", metavar="SPEC", nargs="?", default=None, help="dataset spec (default: demo)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="synthetic dataset / run folder")
    p.add_argument(
        "--config", metavar="YAML", help="settings file (GenerateConfig keys; may set recipe:)"
    )
    _add_recipe(p)
    p.add_argument("--model", help="nano (default), a diffusers folder or a hub id")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder (diff-* and ti-* strategies)")
    p.add_argument("--strategy", metavar="NAME",
                   help=f"one of {', '.join(TRANSLATE_STRATEGIES)} (default: diff-mix)")  # fmt: skip
    p.add_argument("--multiplier", type=int, metavar="M", help="translations per image (5)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--strength", type=float, metavar="S", help="one fixed strength in (0, 1]")
    group.add_argument("--strengths", type=_strength_list, metavar="S1,S2,...",
                       help="strengths drawn uniformly per image")  # fmt: skip
    p.add_argument("--shots", type=int, metavar="K", help="few-shot subset: K images per class")
    p.add_argument("--imbalance", type=float, metavar="F", help="long-tail subset factor F")
    p.add_argument("--subset-seed", type=int, metavar="S", help="seed of the subset draw (0)")
    p.add_argument("--targets", choices=("uniform", "confusion", "tail"),
                   help="target classes: uniform (default), by confusion, or toward rare classes")  # fmt: skip
    p.add_argument("--confusion", metavar="FILE", help="confusion.json for --targets confusion")
    p.add_argument("--limit", type=int, metavar="N", help="make only the first N planned images")
    p.add_argument("--filter-bottom", type=float, metavar="FRAC",
                   help="mark the least faithful FRAC of the images kept=false (0)")  # fmt: skip
    p.add_argument("--no-score", dest="score", action="store_false", default=None,
                   help="skip faithfulness/diversity scores")  # fmt: skip
    p.add_argument("--batch-size", type=int, metavar="B", help="images per denoising loop (16)")
    p.add_argument("--grouping", choices=("strength", "order"),
                   help="batch equal strengths together (default) or plain plan order")  # fmt: skip
    p.add_argument("--steps", dest="num_inference_steps", type=int, metavar="N",
                   help="num_inference_steps (25)")  # fmt: skip
    p.add_argument("--guidance-scale", type=float, metavar="G", help="CFG weight (7.5)")
    p.add_argument("--gamma", type=float, metavar="G", help="soft-label exponent (0.5)")
    p.add_argument("--seed", type=int, metavar="N", help="plan seed (0)")
    p.add_argument("--superclass", metavar="WORD", help="word after class names in prompts")
    p.add_argument("--prompt-template", metavar="TEXT",
                   help="prompt replacing the strategy's own; {token} = the target's token or "
                        "name, {superclass} (default: the strategy's prompt)")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    p.add_argument("--dtype", help="auto, fp32, fp16, bf16")
    _add_resume_json(p, "continue the generation in --out")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import os

    from diffmix.generate import GenerateConfig, generate
    from diffmix.runs import Cancelled

    extra = {"strengths": [args.strength]} if args.strength is not None else None
    fields = _stage_fields(args, GenerateConfig, "generate", extra)
    cfg = GenerateConfig(**fields)  # a ValidationError becomes one line in main()
    _log_estimate("generate", cfg)
    try:
        summary = generate(cfg, args.out, resume=args.resume)
    except Cancelled:
        sys.stderr.write(f"cancelled; continue with the same command (--out {args.out})\n")
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # other processes of `accelerate launch`
        return 0
    if summary.get("generated") and summary.get("images_per_s"):  # feeds the next estimates
        from diffmix import costs

        costs.record_generate_run(cfg.resolved(), images_per_s=float(summary["images_per_s"]))
    _write(
        f"folder:   {summary['out']}\n"
        f"images:   {summary['images']} of {summary['planned']} planned "
        f"({summary['generated']} new, {summary['images_per_s']:.3g} img/s)\n"
        f"kept:     {summary['kept']}\n"
        "per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()) + "\n"
    )
    if args.json:
        _write(json.dumps(summary) + "\n")
    return 0


# --------------------------------------------------------------------------- diffmix experiment


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix experiment fewshot --out DIR``: the paper's table, personalize -> generate -> train."""
    p = subparsers.add_parser(
        "experiment",
        help="run a comparison table end to end (baseline, mixup, cutmix, real-mix, diff-aug, diff-mix)",
        description="Run the Diff-Mix few-shot comparison on a dataset: per seed one few-shot "
        "subset, one adapter, one synthetic set per generative arm and one classifier per arm, "
        "all on the same real images; prints mean ± std of the final-epoch test accuracy over "
        "the seeds. A rerun into the same --out skips finished stages and resumes the others.",
    )
    p.add_argument("kind", choices=("fewshot",), help="which table (fewshot)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder to write")
    p.add_argument(
        "--config", metavar="YAML", help="settings file (ExperimentConfig keys; may set recipe:)"
    )
    _add_recipe(p)
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec (default: demo)")
    p.add_argument("--shots", type=int, metavar="K", help="real images per class (default 5)")
    p.add_argument("--seeds", metavar="S1,S2,...", help="seeds (default 0,1,2)")
    p.add_argument("--arms", metavar="A1,A2,...",
                   help="arms (default: baseline,mixup,cutmix,real-mix,diff-aug,diff-mix)")  # fmt: skip
    p.add_argument("--model", help="base model: nano (default), a diffusers folder or a hub id")
    p.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="img2img strength (default 0.7, few-shot recipe)",
    )
    p.add_argument("--gamma", type=float, metavar="G", help="soft-label exponent (default 0.5)")
    p.add_argument(
        "--p",
        type=float,
        metavar="P",
        help="replacement probability (default 0.3, few-shot recipe)",
    )
    p.add_argument("--multiplier", type=int, metavar="M", help="synthetic per real image (5)")
    p.add_argument("--personalize-steps", type=int, metavar="N", help="adapter steps (300)")
    p.add_argument("--steps", dest="num_inference_steps", type=int, metavar="N",
                   help="sampling steps (25)")  # fmt: skip
    p.add_argument("--epochs", type=int, metavar="E", help="classifier epochs (50)")
    p.add_argument("--train-repeats", type=int, metavar="N",
                   help="classifier runs per arm and seed, averaged (3)")  # fmt: skip
    p.add_argument("--arch", metavar="NAME", help="classifier: smallcnn (default) or a timm model")
    p.add_argument("--resolution", type=int, metavar="PX", help="classifier image side (64)")
    p.add_argument("--batch-size", type=int, metavar="B", help="classifier batch size (16)")
    p.add_argument("--threads", dest="num_threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="print the stages and the time estimate, run nothing")  # fmt: skip
    _add_resume_json(p, "continue the experiment in --out")
    p.set_defaults(func=cmd_experiment)


def _int_list(text: str, flag: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ValueError naming the flag and the bad text."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"{flag} takes comma-separated integers like 0,1,2, got {text!r}"
        ) from None


def cmd_experiment(args: argparse.Namespace) -> int:
    from diffmix.experiment import (
        ExperimentConfig,
        format_estimate,
        format_table,
        make_config,
        plan_experiment,
        run_experiment,
    )
    from diffmix.runs import Cancelled

    extra: dict[str, Any] = {"kind": args.kind}
    if args.seeds is not None:
        extra["seeds"] = _int_list(args.seeds, "--seeds")
    if args.arms is not None:
        extra["arms"] = [a.strip() for a in args.arms.split(",") if a.strip()]
    fields = _stage_fields(
        args, ExperimentConfig, "experiment", extra, skip=("kind", "seeds", "arms")
    )
    cfg = make_config(**fields)
    if args.dry_run:
        stages, _ = plan_experiment(cfg, args.out)
        _write("".join(f"{s.name:<32} {s.estimate_s / 60:6.1f} min  {s.out}\n" for s in stages))
        _write(format_estimate(stages, cfg.budget_minutes) + "\n")
        return 0
    try:
        results = run_experiment(
            cfg, args.out, resume=args.resume,
            on_plan=lambda stages: _write(format_estimate(stages, cfg.budget_minutes) + "\n"),
        )  # fmt: skip
    except Cancelled:
        sys.stderr.write(f"cancelled; continue with the same command (--out {args.out})\n")
        return 130
    _write(format_table(results) + f"results: {results['out']}/results.json\n")
    if args.json:
        keys = ("arms", "kind", "dataset", "shots", "seeds", "train_repeats", "complete",
                "seconds", "out")  # fmt: skip
        _write(json.dumps({k: results[k] for k in keys}) + "\n")
    return 0


# --------------------------------------------------------------------------- diffmix status


def add_status_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix status DIR``: the state of a run folder, as the app shows it."""
    p = subparsers.add_parser(
        "status",
        help="show the state of a run folder (personalize, generate, train, experiment)",
        description="Print the state, progress and message of a run folder. A run whose "
        "process ended without writing a final status (kill -9, the OOM killer) shows as "
        "failed. Exit status: 0 done, 1 failed or cancelled, 3 queued or running.",
    )
    p.add_argument("run", metavar="DIR", help="a run folder (--out of a stage)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON line")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffmix.jobs import job_state

    path = Path(args.run)
    if not (path / "status.json").is_file() and not (path / "job.json").is_file():
        raise ValueError(f"{args.run} is not a run folder (no status.json); check the path")
    st = job_state(path)
    if args.json:
        _write(json.dumps(st, default=str) + "\n")
    else:
        state = st.get("state", "unknown")
        lines = [f"state:    {state}"]
        if st.get("total"):
            lines.append(f"progress: {st.get('step', 0)} / {st['total']} "
                         f"({100 * float(st.get('progress') or 0):.0f}%)")  # fmt: skip
        if st.get("message"):
            lines.append(f"message:  {st['message']}")
        if st.get("pid"):
            lines.append(f"pid:      {st['pid']}")
        _write("\n".join(lines) + "\n")
    return {"done": 0, "failed": 1, "cancelled": 1}.get(st.get("state"), 3)


# --------------------------------------------------------------------------- main

#: Parser builders, one per subcommand; later stages append theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_data_parser,
    add_personalize_parser,
    add_translate_parser,
    add_train_parser,
    add_generate_parser,
    add_experiment_parser,
    add_status_parser,
]


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """The ``diffmix`` argument parser with every registered subcommand.

    ``parser_class`` builds the parser and its subparsers (the job launcher passes one whose
    errors raise instead of exiting). Positional values may follow ``--`` (the launcher puts
    them there, so that a dataset spec can never be read as an option).
    """
    parser = parser_class(
        prog="diffmix",
        description="Diff-Mix Studio: inter-class image mixup with Stable Diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=parser_class
    )
    for add in SUBCOMMANDS:
        add(sub)
    for name, stage_parser in sub.choices.items():
        stage_parser.formatter_class = DefaultsHelpFormatter
        for action in stage_parser._actions:  # noqa: SLF001
            action.config_class = STAGE_CONFIGS.get(name)  # type: ignore[attr-defined]
            if action.option_strings and action.help is None:
                action.help = _FROM_CONFIG  # the formatter fills in the config's description
    return parser


#: Help placeholder of a flag documented by its config field (not whitespace: argparse skips
#: blank help texts before the formatter sees them).
_FROM_CONFIG = "\x00"
#: The config class behind each stage's flags (``module:Class``; imported only for --help):
#: a flag left unset takes the config's default, which --help shows.
STAGE_CONFIGS = {
    "personalize": "diffmix.personalize:PersonalizeConfig",
    "train": "diffmix.classify.config:TrainConfig",
    "generate": "diffmix.generate:GenerateConfig",
    "experiment": "diffmix.experiment:ExperimentConfig",
    "translate": "diffmix.translate:TranslateConfig",
}


def _config_field(action: argparse.Action) -> Any:
    """The stage config's pydantic field that ``action`` sets, or None."""
    import importlib

    path = getattr(action, "config_class", None)
    if not path:
        return None
    module, cls_name = path.split(":")
    return getattr(importlib.import_module(module), cls_name).model_fields.get(action.dest)


def _config_default(action: argparse.Action) -> Any:
    """The stage config's default for the field ``action`` sets (None when it has none)."""
    field = _config_field(action)
    if field is None or field.is_required():
        return None
    default = field.get_default(call_default_factory=True)
    if default is None:  # resolved at run time: the field's description says how
        desc = field.description or ""
        at = desc.lower().find("default")
        if at < 0:
            return None
        rule = desc[at:].split(":", 1)[-1].strip().rstrip(")").strip()
        return _Rule(rule) if rule else None
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default)) or None
    return default


class _Rule(str):
    """A default that depends on other settings, as its description words it."""


#: Options whose help needs no default: --help and on/off switches.
_NO_DEFAULT_SHOWN = (
    argparse._HelpAction,  # noqa: SLF001
    argparse._StoreTrueAction,  # noqa: SLF001
    argparse._StoreFalseAction,  # noqa: SLF001
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` names every option's default: ``(default: X)`` is appended to a help text
    that does not already say it -- the flag's own default, or, for a flag left unset, the
    stage config's (flags that are off by default, and options whose help says what happens
    without them, excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = (action.help or "").strip()
        if (
            text == _FROM_CONFIG
        ):  # no help of its own: the config field's description (without its rule)
            field = _config_field(action)
            desc = (field.description or "") if field is not None else ""
            text = desc.split("(default", 1)[0].split("; default", 1)[0].strip(" ;,")
            if "default" in desc.lower() and _config_default(action) is None:
                text = desc
        if (
            not action.option_strings
            or "default" in text.lower()
            or isinstance(action, _NO_DEFAULT_SHOWN)
            or action.default is argparse.SUPPRESS
        ):
            return text.replace("%", "%%") if text != action.help else action.help
        default = action.default if action.default is not None else _config_default(action)
        said = re.search(r"\([-+.\w]+\)$", text)  # "... (25)": the default, said already
        if default is None or default is False or said:
            return text.replace("%", "%%") if text != action.help else action.help
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) log records to stderr, one line each.

    Handlers already on the root logger (an embedding app, pytest) are kept.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(level)


_PYDANTIC_BOUNDS = (
    ("Input should be greater than or equal to ", ">="),
    ("Input should be greater than ", ">"),
    ("Input should be less than or equal to ", "<="),
    ("Input should be less than ", "<"),
)


def validation_line(error: Any, flags: dict[str, str]) -> str:
    """A pydantic ``ValidationError`` as one line in the CLI's words: ``--epochs must be >= 1,
    got 0``. ``flags`` maps config field names to their flag (fields without one keep their
    name)."""
    parts = []
    for err in error.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = flags.get(field, field.replace("_", "-") if field else "")
        raw = str(err.get("msg", ""))
        msg = raw.removeprefix("Value error, ")
        if msg != raw:  # the config's own sentence: keep it, say which flag
            parts.append(f"{name}: {msg}" if name else msg)
            continue
        for prefix, op in _PYDANTIC_BOUNDS:
            if msg.startswith(prefix):
                msg = f"must be {op} {msg.removeprefix(prefix)}"
                break
        got = f", got {err['input']!r}" if "input" in err and not isinstance(
            err["input"], dict
        ) else ""  # fmt: skip
        parts.append(f"{name} {msg}{got}".strip() if name else msg)
    return "; ".join(" ".join(p.split()) for p in parts) or "invalid settings"


def _flag_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Config field (an option's dest) -> its long flag, for the stage ``args`` ran."""
    out: dict[str, str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        for sub in action.choices.values():
            if sub.get_default("func") is not getattr(args, "func", None):
                continue
            for a in sub._actions:  # noqa: SLF001
                longs = [o for o in a.option_strings if o.startswith("--")]
                if longs:
                    out.setdefault(a.dest, longs[0])
                elif a.dest == "spec":
                    out["dataset"] = "SPEC"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffmix`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    setup_logging(args.verbose)
    from pydantic import ValidationError

    from diffmix.runs import Terminated, describe_error

    try:
        out = getattr(args, "out", None)
        if out and Path(out).exists() and not Path(out).is_dir():  # before any work is done
            raise ValueError(f"--out {out} is a file; give a folder (or a path not taken yet)")
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        logger.debug("user error", exc_info=True)
        if isinstance(e, ValidationError):  # a config field: say it in the CLI's flags
            message = validation_line(e, _flag_names(parser, args))
        else:
            message = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"error: {message}\n")
        return EXIT_USER_ERROR
    except OSError as e:  # a full disk, an unwritable folder: the message says what to do
        logger.debug("system error", exc_info=True)
        sys.stderr.write(f"error: {describe_error(e)}\n")
        return EXIT_USER_ERROR
    except Terminated:
        sys.stderr.write("error: stopped by SIGTERM; continue with the same command and --resume\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
