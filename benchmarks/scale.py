"""Benchmark: the studio's own work at real dataset sizes (issue 15), not the model's.

    python benchmarks/scale.py [--sizes 1000,10000,60000] [--quick] [--resolution 224]
                               [--cache-mb 256] [--judge-size 64] [--stages a,b] [--keep DIR]

For each size N (synthetic rows) it fabricates, in a temporary folder:

- ``real/``: a CUB-shaped dataset -- 200 class folders (``001.Species_001`` ...) under
  ``train/`` and ``test/``, ``N / 5`` train images (5 synthetic images per real one, the
  authors' multiplier) and half as many test images: JPEG photos of 300-500 px per side with
  synthetic content. Fabrication is fast because 64 distinct JPEGs are encoded once and their
  bytes written under every name; loading still decodes and hashes every file.
- ``syn/``: a mixup synthetic folder of N rows. The first ``min(N, 48)`` rows are made by the
  real :func:`diffmix.generate.generate` (strategy ``mixup``: no diffusion model; scores off),
  so images, rows, ``config.json`` and ``plan.jsonl`` come from the real writer. Going through
  ``generate`` for 60 000 rows would take hours here (a 400-px PNG + fsync per row), so the
  other rows *replicate* them: row t takes task t of the full N-task plan (source, target,
  strength, seed, partner, file name) and the other fields of template row ``t mod 48``, and
  its image is a hard link to that template's image. ``config.json`` / ``plan.jsonl`` are
  rewritten for the full plan, so the folder is what a finished N-row run leaves.
- ``half/``: the same plan, half done -- the first half of the plan batches with their rows
  and images, plus what a killed run leaves: a torn last line, a temp file, an image without
  a row.

Stages run in a fresh subprocess per size, one after the other (``--isolate``: a fresh
subprocess per stage -- cleaner, but each pays the imports, minutes on a loaded machine); a
stage's setup is not timed; ``seconds`` is the wall time of the stage's own calls; ``peak_mb``
is the peak resident memory *during the stage* minus the resident memory at its start (an RSS
delta: Linux ``VmHWM`` reset through ``/proc/self/clear_refs`` before the stage, so torch and
numpy buffers count, not only Python objects; memory an earlier stage freed to the allocator
but not to the system can hide part of a later stage's peak -- ``--isolate`` rules that out):

- ``scan``: ``load_dataset(real, split="train")`` on a fresh workspace -- every file decoded
  once and hashed (the fingerprint); ``rescan``: the same call again (the scan cache);
- ``subset``: a long-tail (imbalance 0.01, the authors' CUB setting) and a 5-shot subset,
  saved, reloaded and checked;
- ``plan``: :func:`diffmix.generate.make_plan` of mixup x5 over the train split;
- ``write_rows``: the per-row write path of ``generate`` (image saved atomically + fsync, row
  built, one append + fsync per batch of 16, a progress event and status per batch) for a
  *fixed* 512 rows (64-px images) appended to the N-row folder: its seconds are per 512 rows,
  so its exponent says whether the per-row cost grows with the folder (it should be ~0);
- ``resume_scan``: what a rerun into ``half/`` does before its first batch (the config/plan
  check, the repair of torn rows and orphans, the finished-task scan) -- the dataset load
  and the model fingerprint are not in it (see ``rescan``);
- ``imagefolder``: ``datasets.load_dataset("imagefolder", data_dir=syn)`` (cache in the temp
  folder);
- ``inspect_open``: the folder's record and class names and the first read of its rows (the
  page's row index and frame; in a fresh process: nothing cached); ``inspect_filter``: a
  filter once the folder is open -- filtered (one target class), page 1's rows parsed from the
  file and its table (``pages/inspect.py``'s calls); ``inspect_page``: one gallery page
  (``PER_PAGE`` source | result pairs, the source dataset already loaded, as in a running app);
- ``train_first_epoch`` / ``train_steady``: the classifier's data path for one epoch of
  ``N / 5`` positions (p = 0.1 synthetic replacements, batch 32): gather + decode on demand
  + normalise + augment, no model; first epoch from a cold store, then a second (steady)
  epoch. ``--resolution`` (default 224, the Lite0 default; the authors train at 448) and the
  decoded-image budget ``--cache-mb`` (default 256 here, so that the bound shows at these
  sizes; ``diffmix train`` defaults to 2048);
- ``judge_fit``: :func:`diffmix.score.reference_classifier` (the Lite0 probe that judges real
  photos) on the train split, at ``--judge-size`` px (default 64: the backbone's forward
  pass is the model's work, which this benchmark keeps small; the default judge uses 224).

Output: a table (wall seconds, CPU seconds -- ``time.process_time()``, all threads of the
process -- and peak MB per stage and size, and the growth exponents: the log-log slope between
the two largest sizes), then as the last line a JSON object ``{"sizes": [...], "stages":
{"<stage>": {"seconds": [...], "cpu_seconds": [...], "peak_mb": [...], "exponent": x,
"cpu_exponent": y}, ...}}``. Wall times on a machine shared with other jobs vary with its
load; CPU seconds much less (but miss time spent waiting on the disk, e.g. fsync): read the
CPU exponent on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_CLASSES = 200
MULTIPLIER = 5
TEMPLATE_ROWS = 48
WRITE_ROWS = 512
WRITE_BATCH = 16
DEFAULT_SIZES = (1000, 10000, 60000)
STAGES = (
    "scan", "rescan", "subset", "plan", "write_rows", "resume_scan", "imagefolder",
    "inspect_open", "inspect_filter", "inspect_page", "train_first_epoch", "train_steady",
    "judge_fit",
)  # fmt: skip

logger = logging.getLogger("scale")


# --------------------------------------------------------------------------- fabrication


def class_names() -> list[str]:
    """CUB-style class folder names: ``001.Species_001`` ... ``200.Species_200``."""
    return [f"{c + 1:03d}.Species_{c + 1:03d}" for c in range(NUM_CLASSES)]


def _jpeg_pool(count: int = 64, seed: int = 0, side: tuple[int, int] = (300, 500)) -> list[bytes]:
    """``count`` distinct JPEG photos of ``side`` px per side (gradients + shapes + noise)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
        y, x = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3)
        arr = np.stack(
            [(base[c] + x * (c + 1) // 3 + y * (3 - c) // 3) % 256 for c in range(3)], -1
        )
        arr = (arr + rng.integers(0, 24, size=arr.shape)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(im)
        d = max(2, min(w, h) // 6)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - d)), int(rng.integers(0, h - d))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse([x0, y0, x0 + d, y0 + d], fill=fill)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def fabricate_real(root: Path, n_train: int, side: tuple[int, int] = (300, 500)) -> dict[str, int]:
    """The CUB-shaped dataset (``train/`` and ``test/``); returns image counts."""
    pool = _jpeg_pool(side=side)
    names = class_names()
    per, extra = divmod(n_train, NUM_CLASSES)
    k = n_test = 0
    for c, name in enumerate(names):
        n = per + (1 if c < extra else 0)
        if n == 0:
            n = 1  # every class has a training image
        for split, count in (("train", n), ("test", max(1, n // 2))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (folder / f"{name.split('.')[1]}_{i:05d}.jpg").write_bytes(pool[k % len(pool)])
                k += 1
            n_test += count if split == "test" else 0
    # files must be older than the scan cache's racy window to be recorded by the first scan
    old = time.time() - 10
    for p in root.rglob("*.jpg"):
        os.utime(p, (old, old))
    return {"train": k - n_test, "test": n_test}


def fabricate_synthetic(real: Path, syn: Path, n_rows: int) -> dict[str, Any]:
    """``syn/``: N rows, the first ones made by the real generate(), the others replicated."""
    from diffmix import generate as gen
    from diffmix import synthetic as sf
    from diffmix.data import load_dataset, make_subset
    from diffmix.generate.plan import plan_text
    from diffmix.generate.record import config_record

    k = min(n_rows, TEMPLATE_ROWS)
    cfg = gen.GenerateConfig(dataset=str(real), strategy="mixup", multiplier=MULTIPLIER,
                             score=False, limit=k, batch_size=16, seed=0)  # fmt: skip
    t0 = time.perf_counter()
    gen.generate(cfg, syn)
    t_generate = time.perf_counter() - t0
    templates = sf.read_rows(syn / sf.METADATA_FILE)
    tpl_by_task = {r["task"]: r for r in templates}
    ds = load_dataset(str(real), split="train")
    subset = make_subset(ds)
    full_cfg = cfg.model_copy(update={"limit": None})
    plan = gen.make_plan(full_cfg, ds, subset)
    if len(plan) > n_rows:  # (fewer than 200 train images asked: one per class anyway)
        full_cfg = cfg.model_copy(update={"limit": n_rows})
        plan = gen.make_plan(full_cfg, ds, subset)
    rows = []
    for t in plan:
        tpl = tpl_by_task.get(t.task) or templates[t.task % k]
        rel = sf.image_name(t.target_class, t.task)
        row = dict(tpl)
        share = float(t.strength)
        row.update(
            file_name=rel, task=t.task, batch=t.batch, source_index=t.source_index,
            source_id=t.source_id, source_class=t.source_class, target_class=t.target_class,
            strength=t.strength, seed=t.seed, partner_index=t.partner_index,
            partner_id=t.partner_id,
            soft_label={t.source_class: 1.0 - share, t.target_class: share}
            if t.source_class != t.target_class else {t.target_class: 1.0},
            prompt=f"mixup of {t.source_class} and {t.target_class}",
        )  # fmt: skip
        if not (syn / rel).is_file():
            (syn / rel).parent.mkdir(exist_ok=True)
            os.link(syn / tpl["file_name"], syn / rel)
        rows.append(row)
    record = json.loads((syn / sf.CONFIG_FILE).read_text())
    record = config_record(
        full_cfg.resolved(), ds, subset, plan, record["model_fingerprint"],
        record["adapter_fingerprint"], syn,
    )  # fmt: skip
    (syn / sf.CONFIG_FILE).write_text(json.dumps(record, indent=1) + "\n")
    (syn / sf.PLAN_FILE).write_text(plan_text(plan))
    (syn / sf.METADATA_FILE).write_text(sf.rows_text(rows))
    return {"rows": len(rows), "half_rows": len(_done_half(rows)), "templates": k,
            "template_generate_s": t_generate, "config": full_cfg.model_dump()}  # fmt: skip


def _done_half(rows: list[dict]) -> list[dict]:
    n_batches = max(r["batch"] for r in rows) + 1
    return [r for r in rows if r["batch"] < n_batches // 2]


def make_half(syn: Path, half: Path) -> None:
    """``half/``: the first half of ``syn/``'s plan batches, plus what a killed run leaves (a
    torn last line, a temp file, an image without a row). Made again before each measure."""
    from diffmix import synthetic as sf

    shutil.rmtree(half, ignore_errors=True)
    half.mkdir(parents=True)
    for name in (sf.CONFIG_FILE, sf.PLAN_FILE):
        shutil.copy2(syn / name, half / name)
    rows = sf.read_rows(syn / sf.METADATA_FILE)
    done = _done_half(rows)
    for r in done:
        (half / r["file_name"]).parent.mkdir(exist_ok=True)
        os.link(syn / r["file_name"], half / r["file_name"])
    torn = ""
    if len(done) < len(rows):
        torn = json.dumps(rows[len(done)])[:40]
        orphan = rows[len(done)]["file_name"]
        (half / orphan).parent.mkdir(exist_ok=True)
        os.link(syn / orphan, half / orphan)
    (half / sf.METADATA_FILE).write_text(sf.rows_text(done) + torn)
    (half / f".{sf.METADATA_FILE}.1{sf.TMP_SUFFIX}").write_bytes(b"partial")


def fabricate(base: Path, n_rows: int, side: tuple[int, int] = (300, 500)) -> dict[str, Any]:
    """Everything one size needs under ``base`` (``real/``, ``syn/``, ``half/``, ``home/``)."""
    os.environ["DIFFMIX_HOME"] = str(base / "home")
    t0 = time.perf_counter()
    counts = fabricate_real(base / "real", max(1, n_rows // MULTIPLIER), side)
    t_real = time.perf_counter() - t0
    info = fabricate_synthetic(base / "real", base / "syn", n_rows)
    info.update(real=counts, real_s=t_real, total_s=time.perf_counter() - t0)
    (base / "fabricated.json").write_text(json.dumps(info, indent=1, default=str))
    return info


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Peak:
    """Peak resident memory of this process during a block, above its start (MB)."""

    def __enter__(self) -> Peak:
        import gc

        gc.collect()
        with contextlib.suppress(OSError):  # reset VmHWM to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        self.start_kb = _status_kb("VmRSS")
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.c0
        self.peak_mb = max(0, _status_kb("VmHWM") - self.start_kb) / 1024.0


# --------------------------------------------------------------------------- stages


def _load(base: Path):
    from diffmix.data import load_dataset

    return load_dataset(str(base / "real"), split="train")


def _plan_of(base: Path, ds):
    from diffmix import generate as gen
    from diffmix.data import make_subset

    info = json.loads((base / "fabricated.json").read_text())
    cfg = gen.GenerateConfig(**info["config"])
    subset = make_subset(ds)
    return cfg, subset, gen.make_plan(cfg, ds, subset)


def stage(name: str, base: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run one stage (setup untimed) and return its seconds and peak MB."""
    os.environ["DIFFMIX_HOME"] = str(base / "home")
    if name == "scan":
        os.environ["DIFFMIX_HOME"] = tempfile.mkdtemp(prefix="home-", dir=base)  # cold
        from diffmix.data import load_dataset

        with Peak() as m:
            load_dataset(str(base / "real"), split="train")
        return _result(m)
    if name == "rescan":
        _load(base)  # warm the scan cache (the fabrication already did)
        from diffmix.data import load_dataset

        with Peak() as m:
            load_dataset(str(base / "real"), split="train")
        return _result(m)
    ds = _load(base)
    if name == "subset":
        from diffmix.data import Subset, make_subset

        with Peak() as m:
            for kw in ({"imbalance": 0.01}, {"shots": 5}):
                s = make_subset(ds, seed=0, **kw)
                s.save(base / "subset-bench.json")
                Subset.load(base / "subset-bench.json").apply(ds)
        return _result(m)
    if name == "plan":
        from diffmix import generate as gen
        from diffmix.data import make_subset
        from diffmix.generate.plan import plan_text

        cfg = gen.GenerateConfig(**json.loads((base / "fabricated.json").read_text())["config"])
        subset = make_subset(ds)
        with Peak() as m:
            plan = gen.make_plan(cfg, ds, subset)
            plan_text(plan)
        return _result(m)
    if name == "write_rows":
        return _write_rows(base, ds)
    if name == "resume_scan":
        return _resume_scan(base, ds)
    if name == "imagefolder":
        import datasets

        datasets.disable_progress_bars()
        cache = tempfile.mkdtemp(prefix="hf-", dir=base)
        with Peak() as m:
            d = datasets.load_dataset("imagefolder", data_dir=str(base / "syn"),
                                      cache_dir=cache, split="train")  # fmt: skip
            assert len(d) > 0
        shutil.rmtree(cache, ignore_errors=True)
        return _result(m)
    if name.startswith("inspect_"):
        return _inspect(name, base, ds)
    if name.startswith("train_"):
        return _train_data(name, base, ds, args)
    if name == "judge_fit":
        from diffmix import score

        with Peak() as m:
            score.reference_classifier(ds, judge="lite0", size=args.judge_size)
        return _result(m)
    raise SystemExit(f"unknown stage {name!r}; one of {', '.join(STAGES)}")


def _result(m: Peak) -> dict[str, float]:
    return {"seconds": m.seconds, "cpu_seconds": m.cpu_seconds, "peak_mb": m.peak_mb}


def _job(base: Path, out: Path, ds):
    """The generate run's shared state (``diffmix.generate.run._Job``) for ``out``."""
    from diffmix import synthetic as sf
    from diffmix.generate.dist import _Dist
    from diffmix.generate.run import _Job
    from diffmix.runs import RunDir
    from diffmix.translate import get_strategy

    cfg, subset, plan = _plan_of(base, ds)
    cfg = cfg.resolved()
    record = json.loads((out / sf.CONFIG_FILE).read_text())
    common = {k: record.get(k) for k in ("model_fingerprint", "adapter_fingerprint",
                                         "dataset_fingerprint")}  # fmt: skip
    common.update(strategy="mixup", num_inference_steps=cfg.num_inference_steps,
                  guidance_scale=cfg.guidance_scale, gamma=cfg.gamma, model=cfg.model,
                  adapter=cfg.adapter, judge=None)  # fmt: skip
    return _Job(cfg, get_strategy("mixup"), ds, subset, plan, out, record, _Dist(),
                RunDir(out), common)  # fmt: skip


def _write_rows(base: Path, ds) -> dict[str, float]:
    """generate's per-batch writer (``run._write_batch``) and the loop's per-batch progress
    event and status, for WRITE_ROWS new rows (64-px images) appended to ``syn/``."""
    import numpy as np
    from PIL import Image

    from diffmix import synthetic as sf
    from diffmix.generate import PlannedTask
    from diffmix.generate.run import _write_batch
    from diffmix.translate import Translation

    out = base / "syn"
    job = _job(base, out, ds)
    rows = sf.read_rows(out / sf.METADATA_FILE)
    tpl = rows[0]
    image = Image.open(out / tpl["file_name"]).convert("RGB").resize((64, 64))
    first = max(r["task"] for r in rows) + 1
    tasks = [
        PlannedTask(task=first + i, batch=(first + i) // WRITE_BATCH, source_index=0,
                    source_id=ds.items[0].id, source_class=tpl["source_class"],
                    target_class=tpl["target_class"], strength=0.5, seed=i,
                    partner_index=0, partner_id=ds.items[0].id)
        for i in range(WRITE_ROWS)
    ]  # fmt: skip
    result = Translation(image=image, pixels=np.asarray(image) / 255.0,
                         source_class=tpl["source_class"], target_class=tpl["target_class"],
                         strength=0.5, seed=0, strategy="mixup", prompt=tpl["prompt"],
                         soft_label=tpl["soft_label"], label_vector=np.zeros(NUM_CLASSES))  # fmt: skip
    done: set[int] = {r["task"] for r in rows}
    with Peak() as m:
        for a in range(0, WRITE_ROWS, WRITE_BATCH):
            batch = tasks[a : a + WRITE_BATCH]
            written = _write_batch(job, batch, [result] * len(batch), [(None, None)] * len(batch))
            done.update(r["task"] for r in written)
            job.run.event("progress", done=len(done), total=len(done), batch=a // WRITE_BATCH)
            job.run.set_status(step=len(done), progress=0.5, message="generating")
    return _result(m)


def _resume_scan(base: Path, ds) -> dict[str, float]:
    """What ``generate`` does on a rerun into ``half/`` before its first batch, after the
    dataset load and the model fingerprint: the rerun check, the repair (torn rows, orphans,
    temp files) and this process's share of the work (``run._work``)."""
    from diffmix import synthetic as sf
    from diffmix.generate.record import check_rerun
    from diffmix.generate.run import _work

    make_half(base / "syn", base / "half")
    job = _job(base, base / "half", ds)
    with Peak() as m:
        check_rerun(job.out, job.record, job.plan, True)
        repaired = sf.repair(job.out, {t.task for t in job.plan})
        work = _work(job, True, repaired)
    assert work.done and work.todo, (len(work.done), len(work.todo))
    return _result(m)


def _inspect(name: str, base: Path, ds) -> dict[str, float]:
    """The Inspect page's core calls (pages/inspect.py), the source dataset already loaded."""
    from pages import inspect as page

    folder = base / "syn"
    if name == "inspect_open":  # the record and the first read of the rows (the open's filter)
        with Peak() as m:
            names = list(page.read_record(folder).get("class_names") or [])
            page.load_folder(folder)
        assert len(names) == NUM_CLASSES
        return _result(m)
    df, index = page.load_folder(folder)
    target = str(df["target_class"].iloc[len(df) // 2])
    if name == "inspect_filter":  # what the page's filter does once the folder is open
        with Peak() as m:
            _, shown = page._filtered(folder, [], [target], 0.0, 1.0, 0.0, 1.0, "all")
            part, _ = page.page_frame(shown, 1)
            page.frame_table(part, page.index_rows(folder, part["row"])[1])
        return _result(m)
    with Peak() as m:  # the first rows: a full page at any size
        items = page.pairs(folder, page.index_rows(folder, range(page.PER_PAGE))[1], ds)
    assert len(items) == min(page.PER_PAGE, len(df))
    return _result(m)


def _train_data(name: str, base: Path, ds, args: argparse.Namespace) -> dict[str, float]:
    """The classifier's data path for one epoch (first from a cold store, then steady)."""
    import torch

    from diffmix.classify import data as cdata

    syn = cdata.read_synthetic([base / "syn"], ds.class_names, 0.5)
    indices = list(range(len(ds)))
    labels = torch.tensor([it.label for it in ds.items])
    res, bs = args.resolution, 32
    mean, std = cdata.IMAGENET_MEAN, cdata.IMAGENET_STD
    store_api = hasattr(cdata, "ImageStore")

    def epoch(real, synth, e: int) -> None:
        plan = cdata.plan_epoch(labels, num_synthetic=len(syn), p=0.1, seed=0, epoch=e)
        for a in range(0, len(plan), bs):
            pos = torch.arange(a, min(a + bs, len(plan)))
            ri, si = plan.real[pos], plan.synthetic[pos]
            rep = si >= 0
            if store_api:
                xb = cdata.gather_batch(real, synth, ri, si)
            else:
                xb = real[ri]
                if bool(rep.any()):
                    xb[rep] = synth[si[rep]]
            gen = torch.Generator().manual_seed(a)
            cdata.augment_batch(cdata.normalize(xb, mean, std), "resized_crop", gen)

    with Peak() as m:
        if store_api:
            budget = cdata.CacheBudget(args.cache_mb)
            real = cdata.ImageStore.for_dataset(ds, indices, res, budget)
            synth = cdata.ImageStore.for_paths(syn.paths, res, budget)
        else:  # before the bounded store: decode everything up front
            real = cdata.cached_images(ds, indices, res, None)
            synth = cdata.decode_paths(syn.paths, res)
        epoch(real, synth, 0)
        first = (time.perf_counter() - m.t0, time.process_time() - m.c0)
        if name == "train_steady":
            t1, c1 = time.perf_counter(), time.process_time()
            epoch(real, synth, 1)
            steady = (time.perf_counter() - t1, time.process_time() - c1)
    out = _result(m)
    out["seconds"], out["cpu_seconds"] = steady if name == "train_steady" else first
    return out


# --------------------------------------------------------------------------- driver


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """Log-log slope between the two largest sizes (None when undefined)."""
    pts = [(s, v) for s, v in zip(sizes, values, strict=True) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    (s0, v0), (s1, v1) = pts[-2], pts[-1]
    return round(math.log(v1 / v0) / math.log(s1 / s0), 3)


_FAILED = {"seconds": None, "cpu_seconds": None, "peak_mb": None}


def run_child(names: list[str], base: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Run ``names`` in one fresh subprocess, in order; ``{stage: result}``."""
    cmd = [sys.executable, __file__, "--child", ",".join(names), "--base", str(base),
           "--resolution", str(args.resolution), "--cache-mb", str(args.cache_mb),
           "--judge-size", str(args.judge_size)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    out = {}
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict) and item.get("stage") in names:
                out[item.pop("stage")] = item
    if proc.returncode != 0 or len(out) < len(names):
        logger.error("stage(s) %s failed:\n%s", [n for n in names if n not in out],
                     proc.stderr[-3000:])  # fmt: skip
    return {n: out.get(n, dict(_FAILED)) for n in names}


def run_children(names: list[str], base: Path, args: argparse.Namespace):
    """Yield ``(stage, result)``: one subprocess per stage with ``--isolate``, else one for all."""
    if args.isolate:
        for n in names:
            yield n, run_child([n], base, args)[n]
    else:
        yield from run_child(names, base, args).items()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="synthetic rows per size, comma-separated (default 1000,10000,60000)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="the smallest size only (a test runs it)")
    p.add_argument("--stages", default=",".join(STAGES), help="stages to run (default: all)")
    p.add_argument("--resolution", type=int, default=224, help="classifier side in px (224)")
    p.add_argument("--cache-mb", type=int, default=256,
                   help="decoded-image budget of the classifier data path (MB, default 256)")  # fmt: skip
    p.add_argument("--judge-size", type=int, default=64, help="judge input side in px (64)")
    p.add_argument("--photo-side", default="300-500",
                   help="side of the fabricated photos, px: N or MIN-MAX (300-500, CUB-like); "
                   "a small side makes a cheap run of the row-bound stages")  # fmt: skip
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="fabricate here and keep the files (a later run reuses them)",
    )
    p.add_argument("--isolate", action="store_true",
                   help="one subprocess per stage (default: one per size, stages in sequence)")  # fmt: skip
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--base", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    if args.child:
        import gc

        for name in args.child.split(","):
            try:
                result = stage(name, args.base, args)
            except Exception:
                logger.exception("stage %s failed", name)
                continue
            print(json.dumps({"stage": name, **result}), flush=True)
            gc.collect()
        return 0

    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--sizes takes comma-separated integers, got {args.sizes!r}") from None
    if not sizes or sizes[0] < 10:
        raise SystemExit(f"--sizes must be integers >= 10, got {args.sizes!r}")
    if args.quick:
        sizes = sizes[:1]
    try:
        lo, _, hi = args.photo_side.partition("-")
        side = (int(lo), int(hi or lo))
    except ValueError:
        raise SystemExit(
            f"--photo-side takes N or MIN-MAX in px, got {args.photo_side!r}"
        ) from None
    if not 8 <= side[0] <= side[1]:
        raise SystemExit(f"--photo-side must be 8 px or more, MIN <= MAX; got {args.photo_side!r}")
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose among {', '.join(STAGES)}")

    top = Path(tempfile.mkdtemp(prefix="diffmix-scale-")) if args.keep is None else args.keep
    results: dict[str, dict[str, list]] = {
        s: {"seconds": [], "cpu_seconds": [], "peak_mb": []} for s in names
    }
    fabricated = []
    try:
        for n in sizes:
            base = top / f"rows-{n}"
            if (base / "fabricated.json").is_file():
                info = json.loads((base / "fabricated.json").read_text())
            else:
                shutil.rmtree(base, ignore_errors=True)
                info = fabricate(base, n, side)
            fabricated.append(info)
            print(f"size {n}: {info['real']['train']} train + {info['real']['test']} test "
                  f"images, {info['rows']} rows ({info['half_rows']} in the half-done folder); "
                  f"fabricated in {info['total_s']:.1f} s", file=sys.stderr)  # fmt: skip
            for s, r in run_children(names, base, args):
                for key in ("seconds", "cpu_seconds", "peak_mb"):
                    results[s][key].append(r[key])
                print(f"  {s:<18} {r['seconds']} s ({r['cpu_seconds']} s CPU), "
                      f"{r['peak_mb']} MB", file=sys.stderr)  # fmt: skip
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)

    # Table, then the JSON line.
    head = "".join(f"{n:>12}" for n in sizes)
    print(f"{'stage':<19}{'':>6}{head}{'exponent':>10}")
    summary: dict[str, Any] = {"sizes": sizes, "stages": {}}
    for s in names:
        secs, cpus, mbs = (results[s][k] for k in ("seconds", "cpu_seconds", "peak_mb"))
        exp, cpu_exp = exponent(sizes, secs), exponent(sizes, cpus)
        summary["stages"][s] = {
            "seconds": [None if v is None else round(v, 4) for v in secs],
            "cpu_seconds": [None if v is None else round(v, 4) for v in cpus],
            "peak_mb": [None if v is None else round(v, 1) for v in mbs],
            "exponent": exp,
            "cpu_exponent": cpu_exp,
        }
        for unit, vals, fmt, e in (("s", secs, ".3f", exp), ("CPU s", cpus, ".3f", cpu_exp),
                                   ("MB", mbs, ".0f", None)):  # fmt: skip
            cells = "".join(f"{'-' if v is None else format(v, fmt):>12}" for v in vals)
            tail = "" if unit == "MB" else f"{'-' if e is None else e:>10}"
            print(f"{s if unit == 's' else '':<19}{unit:>6}{cells}{tail}")
    summary["resolution"] = args.resolution
    summary["cache_mb"] = args.cache_mb
    summary["judge_size"] = args.judge_size
    summary["photo_side"] = list(side)
    summary["real_train_images"] = [f["real"]["train"] for f in fabricated]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
