"""Measure what translation does as the strength rises: Diff-Mix vs the Real-Mix baseline.

``python -m diffmix.translate_eval --model nano --adapter DIR [--pairs 24] [--seed 0] [--json]``

On the demo *test* images (never seen by personalization), ``--pairs`` source/target pairs
(source class != target class; sources spread over the classes, targets drawn at random, both
from ``--seed``) are translated at strengths 0.1, 0.3, 0.5, 0.7, 0.9 with ``diff-mix`` (the
adapter) and ``real-mix`` (the base model, class-name prompts), each pair with one seed for all
strengths. A reference classifier fitted on the real train images
(:func:`diffmix.score.reference_classifier`) then judges every result. Per strategy and
strength the table gives:

- ``faith``: mean probability of the target class (faithfulness, [0, 1]);
- ``tgt win`` / ``src win``: share of results whose most probable class is the target / source;
- ``div``: mean diversity from the source (:func:`diffmix.score.diversity_from_source`, [0, 1]);
- ``pix``: mean absolute pixel change from the source ([0, 1]).

The bar of the project's translation issue (reported under ``checks``): faithfulness rises with
strength, the target wins at s = 0.9 in >= 70% of pairs, the source wins at s = 0.1 in >= 80%,
diversity rises with strength, and diff-mix beats real-mix in faithfulness at every s >= 0.5.
The last stdout line with ``--json`` is one JSON object with all numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def choose_pairs(labels: Sequence[int], num_classes: int, pairs: int, seed: int) -> list[tuple]:
    """``pairs`` tuples ``(source index, target class)``, source classes spread round-robin.

    Deterministic in ``seed``; the target class always differs from the source's.
    """
    if num_classes < 2:
        raise ValueError(f"need at least two classes to translate between, got {num_classes}")
    rng = np.random.default_rng(seed)
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in range(num_classes)}
    order = [c for c in rng.permutation(num_classes) if by_class[int(c)]]
    out, used = [], set()
    for p in range(pairs):
        c = int(order[p % len(order)])
        free = [i for i in by_class[c] if i not in used] or by_class[c]
        src = int(free[rng.integers(len(free))])
        used.add(src)
        others = [k for k in range(num_classes) if k != c]
        out.append((src, int(others[rng.integers(len(others))])))
    return out


def _rises(values: Sequence[float]) -> bool:
    """Non-decreasing and strictly higher at the end than at the start."""
    v = list(values)
    return all(b >= a for a, b in zip(v, v[1:], strict=False)) and v[-1] > v[0]


# ~105 lines: a measurement run by hand, its steps 1-3 mirror the report (data and judge, each
# strategy, the bar).
def evaluate(
    *,
    model: str,
    adapter: str | None,
    dataset: str = "demo",
    pairs: int = 24,
    seed: int = 0,
    strengths: Sequence[float] = STRENGTHS,
    steps: int = 25,
    guidance_scale: float = 7.5,
    batch_size: int = 20,
    judge_epochs: int = 30,
    judge_size: int | None = None,
    device: str | None = None,
) -> dict:
    """Run the measurement; returns the JSON-ready report (see the module docstring)."""
    from diffmix import score
    from diffmix.data import load_dataset
    from diffmix.translate import TranslateConfig, TranslationItem, translate

    t0 = time.time()
    # 1. Data and the judge
    test = load_dataset(dataset, split="test")
    clf = score.reference_classifier(dataset, size=judge_size, epochs=judge_epochs)
    chosen = choose_pairs(test.labels, test.num_classes, pairs, seed)
    sources = [test.image(i) for i, _ in chosen]
    src_cls = [test.items[i].label for i, _ in chosen]
    src_acc = float(np.mean(clf.probs(sources).argmax(-1) == np.asarray(src_cls)))

    # 2. Translate with each strategy (one batched call each) and score
    strategies = (["diff-mix"] if adapter else []) + ["real-mix"]
    if not adapter:
        logger.warning("no --adapter: measuring real-mix only")
    report: dict = {}
    for name in strategies:
        cfg = TranslateConfig(strategy=name, model=model, adapter=adapter,
                              num_inference_steps=steps, guidance_scale=guidance_scale,
                              batch_size=batch_size, device=device)  # fmt: skip
        items = [
            TranslationItem(
                sources[p], test.class_names[src_cls[p]], test.class_names[tgt], s, seed * 1000 + p
            )  # fmt: skip
            for p, (_, tgt) in enumerate(chosen)
            for s in strengths
        ]
        t1 = time.time()
        results = translate(items, cfg, class_names=test.class_names, superclass=test.superclass)
        images = [r.image for r in results]
        probs = clf.probs(images)
        tgt = np.asarray([test.class_index(it.target_class) for it in items])
        src = np.asarray([test.class_index(it.source_class) for it in items])
        srcs = [it.source for it in items]
        faith = probs[np.arange(len(items)), tgt]
        top = probs.argmax(-1)
        div = score.diversity_from_source(clf, images, srcs)
        pix = score.pixel_distance(images, srcs, size=clf.size)
        rows = []
        for k, s in enumerate(strengths):
            sel = np.arange(k, len(items), len(strengths))
            rows.append({
                "strength": s,
                "faithfulness": float(faith[sel].mean()),
                "target_win": float((top[sel] == tgt[sel]).mean()),
                "source_win": float((top[sel] == src[sel]).mean()),
                "diversity": float(div[sel].mean()),
                "pixel_change": float(pix[sel].mean()),
            })  # fmt: skip
        report[name] = {"rows": rows, "seconds": round(time.time() - t1, 2)}

    # 3. The bar
    checks: dict[str, bool | None] = {}
    if "diff-mix" in report:
        dm = {r["strength"]: r for r in report["diff-mix"]["rows"]}
        rm = {r["strength"]: r for r in report["real-mix"]["rows"]}
        ordered = [dm[s] for s in sorted(dm)]
        checks["faithfulness_rises"] = _rises([r["faithfulness"] for r in ordered])
        checks["target_wins_at_0.9"] = dm[0.9]["target_win"] >= 0.7 if 0.9 in dm else None
        checks["source_wins_at_0.1"] = dm[0.1]["source_win"] >= 0.8 if 0.1 in dm else None
        checks["diversity_rises"] = _rises([r["diversity"] for r in ordered])
        high = [s for s in dm if s >= 0.5]
        checks["diff_mix_beats_real_mix"] = (
            all(dm[s]["faithfulness"] > rm[s]["faithfulness"] for s in high) if high else None
        )
        checks["all"] = all(v is True for v in checks.values())
    return {
        "model": model,
        "adapter": adapter,
        "dataset": dataset,
        "pairs": len(chosen),
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "strengths": list(strengths),
        "judge": {
            "judge": clf.judge,
            "epochs": judge_epochs,
            "size": clf.size,
            "source_accuracy": src_acc,
        },  # fmt: skip
        "diversity_metric": score.diversity_metric(clf),
        "results": {name: v["rows"] for name, v in report.items()},
        "seconds": {name: v["seconds"] for name, v in report.items()},
        "total_seconds": round(time.time() - t0, 2),
        "checks": checks,
    }


def format_report(rep: dict) -> str:
    """The human-readable table of :func:`evaluate`'s report."""
    lines = [
        f"model {rep['model']}  adapter {rep['adapter']}  {rep['pairs']} pairs  "
        f"{rep['steps']} steps  guidance {rep['guidance_scale']}  seed {rep['seed']}",
        f"judge ({rep['judge'].get('judge', 'smallcnn')}): source images classified as their "
        f"class: {rep['judge']['source_accuracy']:.0%}"
        f"  (diversity metric: {rep['diversity_metric']})",
        f"{'strategy':<9} {'s':>4} {'faith':>6} {'tgt win':>8} {'src win':>8} {'div':>6} {'pix':>6}",
    ]
    for name, rows in rep["results"].items():
        for r in rows:
            lines.append(
                f"{name:<9} {r['strength']:>4.1f} {r['faithfulness']:>6.3f} "
                f"{r['target_win']:>8.0%} {r['source_win']:>8.0%} {r['diversity']:>6.3f} "
                f"{r['pixel_change']:>6.3f}"
            )
    for k, v in rep["checks"].items():
        lines.append(f"check {k:<26} {'-' if v is None else ('PASS' if v else 'FAIL')}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with ``error: ...`` for bad input)."""
    p = argparse.ArgumentParser(prog="python -m diffmix.translate_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or hub id")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder for diff-mix")
    p.add_argument("--dataset", default="demo", metavar="SPEC", help="dataset (default: demo)")
    p.add_argument("--pairs", type=int, default=24, help="source/target pairs (default: 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS), metavar="S")
    p.add_argument("--steps", type=int, default=25, help="num_inference_steps (default: 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=20, help="items per shared denoising loop")
    p.add_argument("--judge-epochs", type=int, default=30, help="reference classifier epochs")
    p.add_argument("--judge-size", type=int, default=None,
                   help="judge px (default: 64 for the demo's small CNN, 224 for Lite0 on photos)")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.pairs < 1:
        sys.stderr.write(f"error: --pairs must be >= 1, got {args.pairs}\n")
        return 2
    try:
        rep = evaluate(
            model=args.model, adapter=args.adapter, dataset=args.dataset, pairs=args.pairs,
            seed=args.seed, strengths=args.strengths, steps=args.steps,
            guidance_scale=args.guidance_scale, batch_size=args.batch_size,
            judge_epochs=args.judge_epochs, judge_size=args.judge_size, device=args.device,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
        return 2
    sys.stdout.write(format_report(rep))
    if args.json:
        sys.stdout.write(json.dumps(rep) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
