"""One rank of a two-process ``diffmix generate`` on CPU (gloo), as ``torchrun`` starts it.

Started by ``tests/test_gpu_emulation.py`` with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
set. The process group is formed here with a short timeout, so a process left waiting in a
collective fails in seconds instead of hanging; ``generate`` then joins it through
accelerate's ``PartialState``, as under ``accelerate launch``. Prints one JSON line.

    --fit-delay S   the scoring judge's fit sleeps S seconds first (a large dataset's fit)
    --cancel-rank R process R sees the cancel file from its second check on; the others
                    never see it (the race of each process reading the file on its own)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--fit-delay", type=float, default=0.0)
    p.add_argument("--cancel-rank", type=int, default=None)
    p.add_argument("--no-score", dest="score", action="store_false")
    args = p.parse_args()
    torch.set_num_threads(1)

    from diffmix import score
    from diffmix.generate import GenerateConfig, generate
    from diffmix.runs import Cancelled, RunDir

    rank = int(os.environ["RANK"])
    if args.fit_delay:
        fit = score._fit_clf

        def slow_fit(*a, **kw):
            time.sleep(args.fit_delay)
            return fit(*a, **kw)

        score._fit_clf = slow_fit
    if args.cancel_rank is not None:
        calls = {"n": 0}

        def cancel_requested(self) -> bool:
            calls["n"] += 1
            return rank == args.cancel_rank and calls["n"] >= 2

        RunDir.cancel_requested = cancel_requested

    from diffmix.pipeline import load_pipeline

    load_pipeline(args.model)  # cached: no batch pays the load (the timeout is kept short)
    tdist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    cfg = GenerateConfig(dataset=args.dataset, model=args.model, strategy="real-mix",
                         multiplier=2, strengths=[0.5, 1.0], num_inference_steps=2,
                         batch_size=4, score=args.score)  # fmt: skip
    own = Path(args.out) / f"metadata.{rank}.jsonl"
    try:
        summary = generate(cfg, args.out)
        result = {"rank": rank, "state": "done", "images": summary["images"]}
    except Cancelled:
        rows = len(own.read_text().splitlines()) if own.is_file() else 0
        result = {"rank": rank, "state": "cancelled", "rows": rows}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
