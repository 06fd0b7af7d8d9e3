"""Benchmark: the public app under load -- many visitors' previews, one long preview among them.

    python benchmarks/public_load.py [--clients 8] [--calls 5] [--steps 25] [--long-steps 100]

1. Starts ``app.py`` in public mode (``DIFFMIX_PUBLIC=1``, workspace ``$DIFFMIX_HOME``, the
   embedded nano model) on a free local port, fits the demo's reference classifier first (in
   this process, cached in the workspace, as the app would on its first score) and makes one
   warm-up ``/translate`` call (model loading). The server's resident memory (``VmRSS`` of its
   process, from ``/proc``) after the warm-up is the baseline.
2. One visitor starts a long preview (``/translate_sweep``: 9 strengths at ``--long-steps``,
   the public limit); while it runs, ``--clients`` visitors (one ``gradio_client.Client``
   each, in threads) make ``--calls`` ``/translate`` calls of ``--steps`` steps one after the
   other. Every call's latency is printed; a call fails when it raises or shows an error box.
3. After the calls and a 5 s pause the server's memory is read again.

The last stdout line is a JSON object: failures, short-call latency (median, p90, max), the
long preview's duration, ``short_max_over_long`` (< 1: no short preview waited for the long
one to end), and the server's RSS before / after in MiB with their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from preview import start_app  # noqa: E402  (the one app launcher of the benchmarks)

logger = logging.getLogger("benchmarks.public_load")


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _call(client: Any, call: dict[str, Any], api_name: str) -> tuple[float, str | None]:
    """(seconds, error or None) of one call, waiting for its last update."""
    t0 = time.perf_counter()
    try:
        job = client.submit(**call, api_name=api_name)
        for _ in job:
            pass
        outputs = job.outputs()
    except Exception as e:  # noqa: BLE001 -- a failed call is a result here
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    text = json.dumps(outputs[-1] if outputs else None, default=str)
    if not outputs or "dm-error" in text:
        return seconds, text[:300]
    return seconds, None


def run(args: argparse.Namespace, log: Path) -> dict[str, Any]:
    from gradio_client import Client

    from diffmix import score
    from diffmix.data import load_dataset

    # 1. Reference classifier (cached in the workspace), server, warm-up, baseline memory.
    score.reference_classifier(load_dataset("demo", split="train"))
    proc, url = start_app(log, {"DIFFMIX_PUBLIC": "1"}, timeout_s=300.0)
    try:
        first = Client(url, verbose=False)
        selection = first.predict(
            source="Demo", folder="", upload=None, hub="", split="train", subset="few-shot",
            shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
        )[0]  # fmt: skip
        names = selection["class_names"]
        base = dict(
            selection=selection, adapter=None, owner=None, source_mode="Dataset image",
            source_index=selection["indices"][0], upload=None, source_class=None,
            target=names[5], strategy="real-mix", seed=0,
        )  # fmt: skip
        warm, err = _call(first, {**base, "steps": args.steps, "strength": 0.7}, "/translate")
        if err:
            raise RuntimeError(f"warm-up call failed: {err}")
        logger.warning("warm-up call: %.1f s", warm)
        time.sleep(2)
        rss_before = _rss_mib(proc.pid)

        # 2. One long preview, and the clients' short ones while it runs.
        results: list[tuple[int, int, float, str | None]] = []
        long_result: dict[str, Any] = {}
        lock = threading.Lock()

        def long_visitor() -> None:
            c = Client(url, verbose=False)
            s, e = _call(c, {**base, "steps": args.long_steps}, "/translate_sweep")
            long_result.update(seconds=s, error=e)

        def visitor(k: int) -> None:
            c = Client(url, verbose=False)
            for j in range(args.calls):
                call = {**base, "seed": 100 * k + j, "steps": args.steps, "strength": 0.7}
                s, e = _call(c, call, "/translate")
                with lock:
                    results.append((k, j, s, e))
                print(f"client {k} call {j}: {s:7.2f} s{'  FAILED ' + e if e else ''}",
                      flush=True)  # fmt: skip

        t0 = time.perf_counter()
        long_thread = threading.Thread(target=long_visitor)
        long_thread.start()
        time.sleep(1.0)  # the long preview is running when the others arrive
        threads = [threading.Thread(target=visitor, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        short_wall = time.perf_counter() - t0
        long_thread.join()

        # 3. Memory after the calls.
        time.sleep(5)
        rss_after = _rss_mib(proc.pid)
        alive = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

    lat = sorted(s for _, _, s, _ in results)
    failures = [r for r in results if r[3]] + ([("long", 0, 0, long_result["error"])]
                                               if long_result.get("error") else [])  # fmt: skip
    p90 = lat[min(len(lat) - 1, int(round(0.9 * (len(lat) - 1))))]
    return {
        "clients": args.clients, "calls_per_client": args.calls, "steps": args.steps,
        "long_steps": args.long_steps, "calls": len(results), "failures": len(failures),
        "failed": [str(f[3])[:200] for f in failures][:5],
        "short_median_s": round(statistics.median(lat), 3), "short_p90_s": round(p90, 3),
        "short_max_s": round(lat[-1], 3), "short_wall_s": round(short_wall, 3),
        "long_s": round(long_result.get("seconds", float("nan")), 3),
        "short_max_over_long": round(lat[-1] / long_result["seconds"], 3),
        "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_after, 1),
        "rss_ratio": round(rss_after / rss_before, 3), "server_alive": alive,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=8, help="visitors (default 8)")
    p.add_argument("--calls", type=int, default=5, help="previews per visitor (default 5)")
    p.add_argument("--steps", type=int, default=25, help="steps of a short preview (25)")
    p.add_argument("--long-steps", type=int, default=100,
                   help="steps of the long preview (default 100, the public limit)")  # fmt: skip
    p.add_argument("--log", type=Path, default=None,
                   help="the app server's output (default $DIFFMIX_HOME/benchmarks/public-load-app.log)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.log is None:
        from diffmix.workspace import subdir

        args.log = subdir("benchmarks") / "public-load-app.log"
    res = run(args, args.log)
    print(f"{res['calls']} previews of {args.steps} steps by {args.clients} visitors, one "
          f"{args.long_steps}-step sweep among them: {res['failures']} failed")  # fmt: skip
    print(f"  short previews: median {res['short_median_s']} s, p90 {res['short_p90_s']} s, "
          f"max {res['short_max_s']} s; long sweep {res['long_s']} s")  # fmt: skip
    print(f"  server RSS: {res['rss_before_mib']} MiB after warm-up, {res['rss_after_mib']} MiB "
          f"after the calls (x{res['rss_ratio']})")  # fmt: skip
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
