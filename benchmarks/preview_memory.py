"""Benchmark: does the app server's memory level off under many Translate previews?

    python benchmarks/preview_memory.py [--model nano] [--calls 400] [--every 40] [--steps 4]
                                        [--sweep-every 8]

1. Starts ``app.py`` in **public** mode (``DIFFMIX_PUBLIC=1``) on a free local port (workspace:
   ``$DIFFMIX_HOME``), loads the demo's 5-shot subset through ``/load_dataset`` and makes one
   warm-up ``/translate`` call (model load; the reference classifier is fitted once per
   workspace, minutes the first time).
2. Makes ``--calls`` preview calls through ``gradio_client`` over HTTP, each one different
   (source image, target class, strength and seed change from call to call, as they do when
   many users move the slider); every ``--sweep-every``-th call is a ``/translate_sweep``
   (five images and a plotly figure). The server's resident memory (RSS, psutil) is printed
   every ``--every`` calls.
3. The last stdout line is a JSON object: the RSS after the warm-up, half-way and at the end
   (MiB), and ``growth_last_half_pct`` = (end - half-way) / half-way * 100. Memory that levels
   off gives a figure near 0; memory kept per call keeps growing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from preview import start_app  # noqa: E402  (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.preview_memory")


def _rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _call(
    client, selection: dict, k: int, args: argparse.Namespace, sweep: bool, shift: int = 0
) -> None:
    """Preview number ``k``: a different source, target, strength and seed each time."""
    names, indices = selection["class_names"], selection["indices"]
    source = indices[k % len(indices)]
    target = names[(k * 7 + 3 + shift) % len(names)]
    values = dict(
        selection=selection, adapter=None, owner=None, source_mode="Dataset image",
        source_index=source, upload=None, source_class=None, target=target,
        strategy="real-mix", seed=k, steps=args.steps,
    )  # fmt: skip
    if sweep:
        job = client.submit(**values, api_name="/translate_sweep")
    else:
        strength = round(0.1 + 0.05 * (k % 18), 2)
        job = client.submit(**values, strength=strength, api_name="/translate")
    for _ in job:
        pass
    outputs = job.outputs()
    if outputs and "is the source class" in str(outputs[-1][-1]) and not shift:
        return _call(client, selection, k, args, sweep, shift=1)  # real-mix needs another class
    if not outputs or "dm-error" in str(outputs[-1][-1]):
        raise RuntimeError(f"call {k} failed: {outputs[-1] if outputs else None}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or hub id")
    p.add_argument("--calls", type=int, default=400, help="preview calls after the warm-up")
    p.add_argument("--every", type=int, default=40, help="print the RSS every N calls")
    p.add_argument("--steps", type=int, default=4, help="denoising steps at s = 1 (default 4)")
    p.add_argument("--sweep-every", type=int, default=8,
                   help="every N-th call is a strength sweep (0: never)")  # fmt: skip
    p.add_argument("--log", type=Path, default=None,
                   help="the app server's output (default $DIFFMIX_HOME/benchmarks/"
                   "preview-memory-app.log)")  # fmt: skip
    args = p.parse_args(argv)
    if args.calls < 2 or args.every < 1:
        p.error("--calls must be >= 2 and --every >= 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.log is None:
        from diffmix.workspace import subdir

        args.log = subdir("benchmarks") / "preview-memory-app.log"
    from gradio_client import Client

    proc, url = start_app(args.log, {"DIFFMIX_MODEL": args.model, "DIFFMIX_PUBLIC": "1"})
    try:
        client = Client(url, verbose=False)
        selection = client.predict(
            source="Demo", folder="", upload=None, hub="", split="train", subset="few-shot",
            shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
        )[0]  # fmt: skip
        t0 = time.perf_counter()
        _call(client, selection, 0, args, sweep=False)
        logger.warning("warm-up call: %.1f s", time.perf_counter() - t0)
        rss = {0: _rss_mib(proc.pid)}
        print(f"after warm-up: {rss[0]:.0f} MiB", flush=True)
        t0 = time.perf_counter()
        for k in range(1, args.calls + 1):
            _call(client, selection, k, args, sweep=bool(args.sweep_every)
                  and k % args.sweep_every == 0)  # fmt: skip
            if k % args.every == 0 or k in (args.calls // 2, args.calls):
                rss[k] = _rss_mib(proc.pid)
                if k % args.every == 0:
                    print(f"{k:5d} calls: {rss[k]:.0f} MiB ({time.perf_counter() - t0:.0f} s)",
                          flush=True)  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    half, end = rss[args.calls // 2], rss[args.calls]
    print(json.dumps({
        "calls": args.calls, "steps": args.steps, "sweep_every": args.sweep_every,
        "rss_warm_mib": round(rss[0], 1), "rss_half_mib": round(half, 1),
        "rss_end_mib": round(end, 1),
        "growth_last_half_pct": round((end - half) / half * 100, 2),
        "growth_total_pct": round((end - rss[0]) / rss[0] * 100, 2),
        "rss_mib": {str(k): round(v, 1) for k, v in sorted(rss.items())},
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
