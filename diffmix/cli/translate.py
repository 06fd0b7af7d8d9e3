"""``diffmix translate``: translate one source image toward a class at one or more strengths."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from diffmix.cli.flags import (
    Flag,
    add_config_flags,
    check_request,
    given_fields,
    load_yaml_config,
    write,
)
from diffmix.strategies import STRATEGIES

logger = logging.getLogger("diffmix.cli")

#: Names of the strategies, in table order (:mod:`diffmix.strategies` imports no torch).
TRANSLATE_STRATEGIES = tuple(STRATEGIES)

#: TranslateConfig fields with a flag (types, help and defaults: the config's).
FLAGS = (
    Flag("model"),
    Flag("adapter", metavar="DIR"),
    Flag("strategy", metavar="NAME"),
    Flag("steps", metavar="N", key="num_inference_steps"),
    Flag("guidance_scale", metavar="G"),
    Flag("prompt_template", metavar="TEXT"),
    Flag("gamma", metavar="G"),
    Flag("device"),
)
#: What to translate (not TranslateConfig fields): flag dest -> default when neither the flag
#: nor the --config YAML gives it.
ITEM_DEFAULTS: dict[str, Any] = {"dataset": "demo", "source": None, "source_class": None,
                                 "target": None, "strength": None, "seed": 0}  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix translate --target CLASS --out DIR``."""
    p = subparsers.add_parser(
        "translate",
        help="translate a source image to a target class (Diff-Mix and baselines)",
        description="Translate one source image toward a target class at one or more strengths "
        "(all strengths share one batched denoising loop), write the results as PNG files and "
        "score them (faithfulness: reference-classifier probability of the target; diversity: "
        "distance from the source). INDEX is a train-split index; PATH an image file.",
    )
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec (default: demo)")
    p.add_argument("--source", metavar="INDEX_OR_PATH",
                   help="train-split index or image file (not needed for *-gen)")  # fmt: skip
    p.add_argument("--source-class", metavar="CLASS",
                   help="class of a PATH source (default: the reference classifier's guess)")  # fmt: skip
    p.add_argument("--target", metavar="CLASS", help="target class name (required)")
    p.add_argument("--strength", type=float, nargs="+", metavar="S",
                   help="strength(s) in (0, 1] (default for *-gen: 1)")  # fmt: skip
    p.add_argument("--seed", type=int, help="seed of every item (default: 0)")
    add_config_flags(p, "translate", FLAGS, item_fields, tuple(ITEM_DEFAULTS))
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG results")
    p.add_argument("--config", metavar="YAML",
                   help="settings file (TranslateConfig keys and dataset, source, "
                   "source_class, target, strength, seed)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")
    p.set_defaults(func=run)


def item_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The item settings the flags give (dataset, source, target, strengths, seed)."""
    return {k: getattr(args, k) for k in ITEM_DEFAULTS if getattr(args, k, None) is not None}


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a translate run uses: the --config YAML, overridden by the flags given."""
    from diffmix.translate import TranslateConfig

    known = set(TranslateConfig.model_fields) | set(ITEM_DEFAULTS)
    fields = load_yaml_config(getattr(args, "config", None))
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown translate setting(s) {', '.join(unknown)} in {args.config}")
    fields.update(given_fields(args, "translate"))
    fields.update(item_fields(args))
    return fields


# ~95 lines: the command's steps 1-5 (check, source, partner, translate and score, write) read
# top to bottom like its --help.
def run(args: argparse.Namespace) -> int:
    from diffmix import score
    from diffmix.data import load_dataset, open_rgb
    from diffmix.translate import TranslateConfig, TranslationItem, get_strategy, translate

    # 1. Check inputs
    fields = request_fields(args)
    item = {k: fields.pop(k, d) for k, d in ITEM_DEFAULTS.items()}
    if item["target"] is None:
        raise ValueError("--target CLASS is required: the class to translate toward")
    st = get_strategy(str(fields.get("strategy", TranslateConfig.model_fields["strategy"].default)))
    cfg = TranslateConfig(**{**fields, "strategy": st.name})
    strengths = item["strength"]
    if strengths is None:
        if st.generative != "txt2img":
            raise ValueError(f"--strength is required for {st.name}")
        strengths = [1.0]
    source = item["source"]
    if source is not None:
        source = str(source)
    if source is None and st.generative != "txt2img":
        raise ValueError(f"--source is required for {st.name}")
    check_request("translate", {"dataset": item["dataset"], "model": cfg.model,
                                "adapter": cfg.adapter, "source": source,
                                "num_inference_steps": cfg.num_inference_steps,
                                "prompt_template": cfg.prompt_template,
                                "config": getattr(args, "config", None)})  # fmt: skip
    ds = load_dataset(item["dataset"], split="train")
    target = ds.class_names[ds.class_index(item["target"])]

    # 2. Source image and class
    image, source_class = None, None
    if source is not None:
        if source.strip().lstrip("-").isdigit():
            index = int(source)
            if not 0 <= index < len(ds):
                raise ValueError(f"source index {index} outside 0..{len(ds) - 1} (train split)")
            image, source_class = ds.image(index), ds.class_names[ds.items[index].label]
        else:
            image = open_rgb(source)
            if item["source_class"] is not None:
                source_class = ds.class_names[ds.class_index(item["source_class"])]
            else:
                clf = score.reference_classifier(ds)
                source_class = ds.class_names[int(clf.probs([image])[0].argmax())]
                logger.info(
                    "source class not given: the reference classifier says %r", source_class
                )

    # 3. Partner image of the target class (mixup / cutmix): a seeded pick in the train split
    seed = int(item["seed"])
    partner = None
    if st.generative == "none":
        import random

        pool = [i for i, it in enumerate(ds.items) if ds.class_names[it.label] == target]
        partner = ds.image(random.Random(seed).choice(pool))

    # 4. Translate (one batched call) and score
    items = [TranslationItem(image, source_class, target, s, seed, partner) for s in strengths]
    results = translate(items, cfg, class_names=ds.class_names, superclass=ds.superclass)
    images = [r.image for r in results]
    clf = score.reference_classifier(ds)  # fitted once per dataset, then read from the workspace
    faith = score.faithfulness(clf, images, [target] * len(images))
    div = (
        score.diversity_from_source(clf, images, [image] * len(images))
        if image is not None
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
    records = [dict(r.record(), **row, source=source, model=cfg.model, adapter=cfg.adapter,
                    dataset=item["dataset"], steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale)
               for r, row in zip(results, rows, strict=True)]  # fmt: skip
    (out / "translations.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = [f"strategy: {st.name}  source: {source_class}  target: {target}  "
             f"(scored by the {clf.judge} judge; diversity: {score.diversity_metric(clf)})",
             f"{'strength':>8}  {'target p':>8}  {'diversity':>9}  file"]  # fmt: skip
    for row in rows:
        d = "-" if row["diversity"] is None else f"{row['diversity']:.3f}"
        lines.append(f"{row['strength']:>8.2f}  {row['faithfulness']:>8.3f}  {d:>9}  {row['file']}")
    write("\n".join(lines) + "\n")
    if args.json:
        write(json.dumps({"results": rows}) + "\n")
    return 0
