"""Benchmark: how long the Translate page takes to answer one slider move, end to end.

    python benchmarks/preview.py [--model nano] [--adapter NAME] [--steps 25] [--strength 0.5]
                                 [--repeats 5]

0. Cold start: starts ``app.py`` on a *fresh* workspace, loads the demo, and times the first
   ``/translate`` call to its image (the model loads then) and a second call, sent as soon as
   that image arrived (a slider move while the first is scored), to its image:
   ``cold_first_image_s`` and ``cold_second_image_s`` in the JSON.
1. Starts ``app.py`` on a free local port (workspace: ``$DIFFMIX_HOME``, model ``--model``),
   loads the demo dataset through the ``/load_dataset`` API and, after one warm-up call
   (model loading, the reference classifier fitted once per dataset), times ``--repeats``
   calls of ``/translate`` -- the listener the strength slider triggers -- through
   ``gradio_client`` over HTTP: the time until the first update (source and result images,
   soft label) and until the last one (faithfulness and diversity filled in).
2. Stops the server and, in this process, times the same translation as one plain diffusers
   ``StableDiffusionImg2ImgPipeline`` call (same model, dtype, adapter, steps, strength,
   guidance 7.5, batch 1): the floor any UI could reach with this model on this machine.

``--adapter NAME`` names a finished adapter under ``$DIFFMIX_HOME/adapters/`` (diff-mix);
without it the base model's real-mix strategy is timed. The last stdout line is a JSON object;
``ratio`` = median time to the first update / median plain diffusers call (>= 1: the app's
overhead on top of the model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.preview")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(
    log: Path, env: dict[str, str] | None = None, timeout_s: float = 180.0
) -> tuple[subprocess.Popen, str]:
    """``app.py`` on a free port with ``env`` added to this environment: (process, url).

    Shared by the app benchmarks (preview, preview_memory, public_load); its output goes to
    ``log``. Raises ``RuntimeError`` when the app exits or does not answer in ``timeout_s``.
    """
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"app.py did not answer within {timeout_s:.0f} s; see {log}")


def _time_cold(args: argparse.Namespace, log: Path) -> dict[str, float]:
    """A newcomer's first two previews on a fresh workspace, through ``/translate``.

    The demo is loaded first (rendered into the empty workspace; not timed). Then: seconds from
    the first call to its image (the model loads now), and from a second call -- sent as soon
    as the first image arrived, as a slider move would be, while the first is being scored --
    to *its* image. Both calls must then finish with scores.
    """
    import tempfile

    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="diffmix-cold-") as tmp:
        proc, url = start_app(log, {"DIFFMIX_MODEL": args.model, "DIFFMIX_HOME": str(tmp)})
        try:
            client = Client(url, verbose=False)
            selection = client.predict(
                source="Demo", folder="", upload=None, hub="", split="train", subset="full",
                shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
            )[0]  # fmt: skip
            names = selection["class_names"]
            call = dict(
                selection=selection, adapter=None, owner=None, source_mode="Dataset image",
                source_index=0, upload=None, source_class=None, target=names[5],
                strategy="real-mix", seed=0, steps=args.steps, api_name="/translate",
            )  # fmt: skip
            t0 = time.perf_counter()
            first = client.submit(**call, strength=args.strength)
            for _ in first:  # the first update is the image
                break
            first_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            second = client.submit(**call, strength=min(1.0, args.strength + 0.2))
            for _ in second:
                break
            second_s = time.perf_counter() - t1
            for job in (first, second):
                outputs = job.result() and job.outputs()
                if not outputs or "Faithfulness" not in str(outputs[-1][2]):
                    raise RuntimeError(f"cold /translate gave no scores: {outputs}")
            return {"cold_first_image_s": round(first_s, 3),
                    "cold_second_image_s": round(second_s, 3)}  # fmt: skip
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _time_app(args: argparse.Namespace, log: Path) -> tuple[list[float], list[float], dict]:
    """(seconds to the first update, seconds to the last, what was translated) per repeat."""
    from gradio_client import Client

    proc, url = start_app(log, {"DIFFMIX_MODEL": args.model})
    try:
        client = Client(url, verbose=False)
        selection = client.predict(
            source="Demo", folder="", upload=None, hub="", split="train", subset="few-shot",
            shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
        )[0]  # fmt: skip
        names = selection["class_names"]
        index = selection["indices"][0]
        call = dict(
            selection=selection, adapter={"name": args.adapter} if args.adapter else None,
            owner=None, source_mode="Dataset image", source_index=index, upload=None,
            source_class=None, target=names[5], strategy="diff-mix" if args.adapter else "real-mix",
            seed=0, steps=args.steps, strength=args.strength, api_name="/translate",
        )  # fmt: skip
        first, last = [], []
        for k in range(args.repeats + 1):
            t0 = time.perf_counter()
            job = client.submit(**call)
            t_first = None
            for _ in job:  # one item per update the listener yields
                t_first = t_first or time.perf_counter() - t0
            t_last = time.perf_counter() - t0
            outputs = job.outputs()
            if not outputs or "Faithfulness" not in str(outputs[-1][2]):
                raise RuntimeError(f"/translate gave no scores: {outputs[-1] if outputs else None}")
            if k == 0:
                logger.warning("warm-up call (model load, scoring fit): %.1f s", t_last)
                continue
            first.append(t_first or t_last)
            last.append(t_last)
        what = {"source_index": index, "target": names[5], "strategy": call["strategy"]}
        return first, last, what
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _time_plain_diffusers(args: argparse.Namespace, what: dict) -> tuple[list[float], str]:
    """Seconds per plain diffusers img2img call of the same translation, and the dtype."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from diffmix.data import load_dataset
    from diffmix.personalize import attach_adapter
    from diffmix.pipeline import pick_dtype, resolve_model
    from diffmix.translate import build_prompt
    from diffmix.workspace import home

    dtype = pick_dtype(torch.device("cpu"), None)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        resolve_model(args.model).source, dtype=dtype, safety_checker=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    ds = load_dataset("demo", split="train")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    image = ds.image(what["source_index"]).resize((size, size))
    # the adapter as the app loads it (plain load_textual_inversion + load_lora_weights calls)
    meta = attach_adapter(pipe, home() / "adapters" / args.adapter) if args.adapter else None
    prompt = build_prompt(what["strategy"], what["target"], adapter_meta=meta,
                          superclass=ds.superclass)  # fmt: skip
    times = []
    for k in range(args.repeats + 1):
        t0 = time.perf_counter()
        pipe(prompt, image=image, strength=args.strength, num_inference_steps=args.steps,
             guidance_scale=7.5, generator=torch.Generator().manual_seed(0))  # fmt: skip
        if k:
            times.append(time.perf_counter() - t0)
    return times, str(dtype).removeprefix("torch.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="nano", help="nano (default), a diffusers folder or hub id")
    p.add_argument("--adapter", help="adapter name under $DIFFMIX_HOME/adapters (diff-mix)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps at s = 1 (default 25)")
    p.add_argument("--strength", type=float, default=0.5, help="slider position (default 0.5)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side (median)")
    p.add_argument("--log", type=Path, default=None,
                   help="where the app server's output goes (default: "
                   "$DIFFMIX_HOME/benchmarks/preview-app.log)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.log is None:
        from diffmix.workspace import subdir

        args.log = subdir("benchmarks") / "preview-app.log"

    # 0. A fresh workspace (cold), 1. the app over HTTP (warm), then 2. plain diffusers (one
    #    at a time: they share the CPU)
    cold = _time_cold(args, args.log.with_name("preview-app-cold.log"))
    first, last, what = _time_app(args, args.log)
    plain, dtype = _time_plain_diffusers(args, what)
    med = {k: statistics.median(v) for k, v in (("first", first), ("last", last), ("plain", plain))}
    print(f"{what['strategy']}, strength {args.strength}, {args.steps} steps, {dtype}, "
          f"{args.repeats} calls each (median):")  # fmt: skip
    print(f"  cold start (fresh workspace): first image {cold['cold_first_image_s']:.3f} s, "
          f"next call's image {cold['cold_second_image_s']:.3f} s")  # fmt: skip
    print(f"  app /translate, image shown:   {med['first']:.3f} s")
    print(f"  app /translate, scores shown:  {med['last']:.3f} s")
    print(f"  plain diffusers img2img call:  {med['plain']:.3f} s")
    ratio = med["first"] / med["plain"]
    print(f"ratio app (image) / plain diffusers: {ratio:.2f}")
    print(json.dumps({
        "strategy": what["strategy"], "strength": args.strength, "steps": args.steps,
        "dtype": dtype, "app_image_s": round(med["first"], 4),
        "app_scored_s": round(med["last"], 4), "plain_diffusers_s": round(med["plain"], 4),
        "ratio": round(ratio, 4), **cold,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
