"""``diffmix data SPEC`` (load, subset, summarize, export) and ``diffmix status DIR``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from diffmix.cli.flags import write


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
    write(format_summary(summary))
    if args.json:
        write(json.dumps(summary, sort_keys=False) + "\n")
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
        write(json.dumps(st, default=str) + "\n")
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
        write("\n".join(lines) + "\n")
    return {"done": 0, "failed": 1, "cancelled": 1}.get(st.get("state"), 3)
