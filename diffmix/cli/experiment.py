"""``diffmix experiment fewshot --out DIR``: the paper's table, personalize -> generate -> train."""

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

#: ExperimentConfig fields with a flag (types, help and defaults: the config's).
FLAGS = (
    Flag("dataset", metavar="SPEC"),
    Flag("shots", metavar="K"),
    Flag(
        "seeds",
        metavar="S1,S2,...",
        convert=comma_list(int, "--seeds", "0,1,2", "integers", ValueError),
    ),
    Flag(
        "arms",
        metavar="A1,A2,...",
        convert=comma_list(str, "--arms", "baseline,diff-mix", "names", ValueError),
    ),
    Flag("model"),
    Flag("strength", metavar="S"),
    Flag("gamma", metavar="G"),
    Flag("p", metavar="P"),
    Flag("multiplier", metavar="M"),
    Flag("personalize_steps", metavar="N"),
    Flag("num_inference_steps", "--steps", metavar="N"),
    Flag("epochs", metavar="E"),
    Flag(
        "train_repeats",
        metavar="N",
        help="classifier runs per arm and seed, averaged (training seeds seed + 1000·k)",
    ),  # fmt: skip
    Flag("arch", metavar="NAME"),
    Flag("resolution", metavar="PX"),
    Flag("batch_size", metavar="B"),
    Flag("num_threads", "--threads", metavar="N"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``diffmix experiment [fewshot] --out DIR``."""

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("kind", choices=("fewshot",), help="which table (fewshot)")
        p.add_argument("--dry-run", action="store_true",
                       help="print the stages and the time estimate, run nothing")  # fmt: skip

    add_stage_parser(
        subparsers, "experiment", FLAGS, run, spec=False, options=options,
        extra=lambda a: {"kind": a.kind}, extra_keys=("kind",),
        help="run a comparison table end to end (baseline, mixup, cutmix, real-mix, diff-aug, diff-mix)",
        description="Run the Diff-Mix few-shot comparison on a dataset: per seed one few-shot "
        "subset, one adapter, one synthetic set per generative arm and one classifier per arm, "
        "all on the same real images; prints mean ± std of the final-epoch test accuracy over "
        "the seeds. A rerun into the same --out skips finished stages and resumes the others.",
        out="experiment folder to write", resume="continue the experiment in --out",
        cancelled="cancelled; continue with the same command (--out {out})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from diffmix.experiment import (
        ExperimentConfig,
        format_estimate,
        format_table,
        make_config,
        plan_experiment,
        run_experiment,
    )

    fields = stage_fields(args, ExperimentConfig, "experiment", {"kind": args.kind})
    cfg = make_config(**fields)
    if args.dry_run:
        stages, _ = plan_experiment(cfg, args.out)
        write("".join(f"{s.name:<32} {s.estimate_s / 60:6.1f} min  {s.out}\n" for s in stages))
        write(format_estimate(stages, cfg.budget_minutes) + "\n")
        return 0
    results = run_experiment(
        cfg, args.out, resume=args.resume,
        on_plan=lambda stages: write(format_estimate(stages, cfg.budget_minutes) + "\n"),
    )  # fmt: skip
    write(format_table(results) + f"results: {results['out']}/results.json\n")
    if args.json:
        keys = ("arms", "kind", "dataset", "shots", "seeds", "train_repeats", "complete",
                "seconds", "out")  # fmt: skip
        write(json.dumps({k: results[k] for k in keys}) + "\n")
    return 0
