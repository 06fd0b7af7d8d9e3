"""The experiment's table: mean ± std over seeds, paired per-seed deltas, Markdown.

Pure functions over run records (``{"seed", "test_accuracy", ...}``, accuracies in [0, 1]);
the one place seeds are aggregated (the Train page's comparison uses :func:`format_mean_std`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_std(values: Sequence[float | None], *, scale: float = 100.0) -> str:
    """``"m ± s"`` of the values that are not None, times ``scale`` (percent by default), one
    decimal; the value alone for one, ``""`` for none (:func:`mean_std`: sample std)."""
    xs = [scale * v for v in values if v is not None]
    if not xs:
        return ""
    mean, std = mean_std(xs)
    return f"{mean:.1f}" if len(xs) == 1 else f"{mean:.1f} ± {std:.1f}"


def per_seed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classifier runs -> one entry per seed (first-seen order): the runs' mean accuracies.

    ``test_accuracy`` and ``mean_class_accuracy`` are the means over that seed's runs (its
    training repeats); ``repeats`` lists each run's test accuracy; ``run`` is the first run's
    folder and ``runs_dirs`` all of them.
    """
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], []).append(r)
    out = []
    for seed, rs in by_seed.items():
        mca = [r["mean_class_accuracy"] for r in rs if r.get("mean_class_accuracy") is not None]
        out.append({
            "seed": seed,
            "test_accuracy": sum(r["test_accuracy"] for r in rs) / len(rs),
            "mean_class_accuracy": sum(mca) / len(mca) if mca else None,
            "synthetic_images": rs[0].get("synthetic_images"),
            "run": rs[0].get("run"),
            "repeats": [r["test_accuracy"] for r in rs],
            "runs_dirs": [r.get("run") for r in rs],
        })  # fmt: skip
    return out


def summarize_arms(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{arm: [run, ...]}`` -> ``{arm: {"mean", "std", "n", "runs"}}`` (test accuracy in [0, 1]).

    The runs of one seed (its training repeats) are averaged first (:func:`per_seed`); mean
    and std are then over seeds, ``n`` = seeds. Arms without any finished run are left out.
    """
    out = {}
    for arm, records in runs.items():
        if records:
            rs = per_seed(records)
            mean, std = mean_std([r["test_accuracy"] for r in rs])
            out[arm] = {"mean": mean, "std": std, "n": len(rs), "runs": rs}
    return out


def paired_delta(
    base_runs: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]
) -> tuple[float, float | None, int, int] | None:
    """Per-seed accuracy gain of ``runs`` over ``base_runs`` on the seeds both have.

    Each seed is one real subset shared by every arm, so the per-seed difference removes the
    subset-to-subset spread that the arms' own stds carry. Returns ``(mean, std, wins, n)``
    (accuracy points in [-1, 1]; ``std`` with ddof 1, ``None`` for one seed; ``wins`` = seeds
    where ``runs`` scored strictly higher), or ``None`` when no seed is shared.
    """
    base = {r["seed"]: r["test_accuracy"] for r in base_runs}
    diffs = [r["test_accuracy"] - base[r["seed"]] for r in runs if r["seed"] in base]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return mean, (std if len(diffs) > 1 else None), sum(d > 0 for d in diffs), len(diffs)


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table: arm, mean ± std (%), Δ vs baseline (of the means, and
    paired per seed: mean ± std, seeds won), per-seed values."""
    arms = results["arms"]
    base = arms.get("baseline", {}).get("mean")
    base_runs = arms.get("baseline", {}).get("runs", [])
    lines = [
        f"Few-shot ({results['shots']}-shot) on `{results['dataset']}`, "
        f"seeds {results['seeds']}: final-epoch test accuracy, mean ± std over seeds"
        + (
            f" (each seed: the mean of {results['train_repeats']} classifier runs)"
            if results.get("train_repeats", 1) > 1
            else ""
        ),
        "",
        "| arm | accuracy (%) | Δ vs baseline | paired Δ (seeds won) | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    for arm, a in arms.items():
        delta = "-" if base is None or arm == "baseline" else f"{100 * (a['mean'] - base):+.2f}"
        paired = None if arm == "baseline" else paired_delta(base_runs, a["runs"])
        if paired is None:
            pair = "-"
        else:
            m, sd, wins, n = paired
            pair = f"{100 * m:+.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")
            pair += f" ({wins}/{n})"
        seeds = ", ".join(f"{r['seed']}: {100 * r['test_accuracy']:.1f}" for r in a["runs"])
        lines.append(
            f"| {arm} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | {delta} | {pair} | {seeds} |"
        )
    if not results.get("complete", True):
        lines += ["", "_Incomplete: some runs have not finished yet._"]
    return "\n".join(lines) + "\n"


def run_record(seed: int, out, metrics: dict[str, Any]) -> dict[str, Any]:
    """One classifier run's record (from its metrics.json) as the table reads it."""
    return {
        "seed": seed,
        "test_accuracy": float(metrics["test_accuracy"]),
        "mean_class_accuracy": metrics.get("mean_class_accuracy"),
        "synthetic_images": metrics.get("synthetic_images"),
        "run": str(out),
    }
