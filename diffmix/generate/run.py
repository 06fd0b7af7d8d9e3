"""Executing a generation plan into a synthetic dataset folder, in named steps.

:func:`generate` runs :func:`_prepare` (check the config, dataset, subset and adapter; plan;
check the folder), :func:`_start` (config, plan and repair written by the main process),
:func:`_work` (the batches left for this process), :func:`_judge` (the scoring classifier),
then :func:`_batch` + :func:`_write_batch` per plan batch inside :func:`_loop`, and
:func:`_finish` (merge, filter, card). One :func:`diffmix.translate.translate` call (one
shared denoising loop) runs per plan batch; the folder's format, its writer and its reader
are :mod:`diffmix.synthetic`.

A run killed at any moment (even ``kill -9``) loses at most the batch in flight: a rerun
(``--resume`` or not) drops torn metadata lines and temp files, skips finished tasks (a row
*and* its image) and never duplicates a row. With N processes each appends to its own
``metadata.<rank>.jsonl``; the main process merges them after ``wait_for_everyone``. Only the
main process writes status and events. A cancel stops every process after the same round of
batches (they agree on it collectively).

A little over 400 lines: the steps above share the private run state (``_Job``, ``_Work``) and the
crash-safe row writing, which must stay in one place to keep the never-duplicate guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmix import synthetic as syn
from diffmix.adapter import adapter_fingerprint, check_adapter_for, read_adapter
from diffmix.generate.config import GenerateConfig
from diffmix.generate.dist import _Dist
from diffmix.generate.plan import PlannedTask, bottom_fraction_mask, make_plan, plan_text
from diffmix.generate.record import check_filter_judge, check_rerun, config_record, judge_indices
from diffmix.runs import DISK_FULL, Cancelled, RunDir
from diffmix.strategies import get_strategy

logger = logging.getLogger("diffmix.generate")


@dataclass
class _Job:
    """What every step of one run shares: the resolved inputs, the plan and the folder."""

    cfg: GenerateConfig
    st: Any  # diffmix.strategies.Strategy
    ds: Any  # the train split (diffmix.data.ImageDataset)
    subset: Any
    plan: list[PlannedTask]
    out: Path
    record: dict[str, Any]
    dist: _Dist
    run: RunDir
    common: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Work:
    """This process's share: whole plan batches ``b`` with ``b mod world == rank``."""

    by_batch: dict[int, list[PlannedTask]]
    todo: list[int]
    done: set[int]
    done_at_start: int
    n_mine: int
    n_left: int
    rounds: int


def generate(
    config: GenerateConfig,
    out: str | os.PathLike,
    resume: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
    _dist: _Dist | None = None,
) -> dict[str, Any]:
    """Run the plan of ``config`` into the synthetic dataset folder ``out``; returns a summary.

    A rerun into the same folder (``resume`` or not) continues where the last one stopped;
    ``resume`` only says so in the log. ``progress(done, planned)`` is called after each batch.

    Returns:
        ``{"out", "images" (rows on disk), "planned", "kept", "generated" (this run),
        "seconds", "images_per_s", "per_class" (target -> images), "per_strength"}``.

    Raises:
        ValueError: bad config values, empty dataset/subset, an adapter of the wrong kind or
            classes, a folder holding a generation with another config.
        OSError: an unwritable output folder (finished images are kept).
        Cancelled: a cancel was requested (rerun to continue).
    """
    dist = _dist or _Dist.detect()
    t_start = time.time()
    job = _prepare(config, out, resume, dist)
    with job.run.lifecycle("generate", report=dist.is_main, progress=0.0, message="preparing"):
        repaired = _start(job)
        work = _work(job, resume, repaired)
        clf = _judge(job, work)
        t_loop = _loop(job, work, clf, progress)
        return _done(job, work, t_start, t_loop)


# --------------------------------------------------------------------------- steps


def _prepare(config: GenerateConfig, out, resume: bool, dist: _Dist) -> _Job:
    """1-2. Check the config, the dataset, the subset and the adapter; plan; check the folder
    (writable, same config as a generation already there)."""
    from diffmix.data import load_dataset, make_subset

    cfg = config.resolved()
    st = get_strategy(cfg.strategy)
    ds = load_dataset(cfg.dataset, split="train")
    if len(ds) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has no training images; check the spec")
    subset = make_subset(ds, shots=cfg.shots, imbalance=cfg.imbalance, seed=cfg.subset_seed)
    if st.uses_adapter:
        meta = read_adapter(cfg.adapter)
        check_adapter_for(meta, st, cfg.model, ds.class_names)
        theirs = (meta.get("subset") or {}).get("indices")
        if theirs is not None and list(theirs) != list(subset.indices):
            logger.warning(
                "the adapter was personalized on another subset of the data (%d images) than "
                "this generation uses (%d images); pass the same --shots/--imbalance/--subset-seed",
                len(theirs), len(subset),
            )  # fmt: skip
    plan = make_plan(cfg, ds, subset)
    fp_model, fp_adapter = syn.model_fingerprint(cfg.model), adapter_fingerprint(cfg.adapter)

    out = Path(out).expanduser()
    _prepare_out(out)
    record = config_record(cfg, ds, subset, plan, fp_model, fp_adapter, out)
    if dist.is_main:
        check_rerun(out, record, plan, resume)
    common = {
        "strategy": st.name, "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale, "gamma": cfg.gamma, "model": cfg.model,
        "model_fingerprint": fp_model, "adapter": cfg.adapter,
        "adapter_fingerprint": fp_adapter, "dataset_fingerprint": ds.fingerprint,
    }  # fmt: skip
    return _Job(cfg, st, ds, subset, plan, out, record, dist, RunDir(out), common)


def _start(job: _Job) -> syn.Scan | None:
    """2. The main process writes config and plan and repairs the folder; all wait for it.
    Returns the main process's scan of the repaired folder (None on the other processes)."""
    out, plan, run = job.out, job.plan, job.run
    repaired = None
    if job.dist.is_main:
        try:
            run.write_config(job.record)
            if not (out / syn.PLAN_FILE).is_file():
                syn.fsync_write(out / syn.PLAN_FILE, plan_text(plan).encode())
            run.clear_stale_cancel()
            repaired = syn.repair(out, {t.task for t in plan})
        except OSError as e:
            raise _io_error(out, e, syn.count_done(out)) from e
        run.set_status("running", progress=0.0, step=0, total=len(plan),
                       message="planning done")  # fmt: skip
        run.event("plan", tasks=len(plan), batches=plan[-1].batch + 1,
                  strategy=job.st.name, strengths=job.cfg.strengths)  # fmt: skip
    job.dist.barrier()
    return repaired


def _work(job: _Job, resume: bool, repaired: syn.Scan | None) -> _Work:
    """3. What is left for this process: whole plan batches b with b mod world == rank
    (finished tasks: the main process's repair scan, else one scan of the repaired folder)."""
    dist = job.dist
    done = (repaired if repaired is not None else syn.scan(job.out)).done
    by_batch: dict[int, list[PlannedTask]] = {}
    for t in job.plan:
        by_batch.setdefault(t.batch, []).append(t)
    mine = [b for b in sorted(by_batch) if b % dist.world == dist.rank]
    todo = [b for b in mine if any(t.task not in done for t in by_batch[b])]
    n_mine = sum(len(by_batch[b]) for b in mine)
    n_left = sum(1 for b in todo for t in by_batch[b] if t.task not in done)
    if done:
        logger.info("%s: %d of %d task(s) already finished; %d left for this process",
                    "resuming" if resume else "continuing", len(done), len(job.plan), n_left)  # fmt: skip
    rounds = dist.max(len(todo))  # the same number of loop rounds on every process
    return _Work(by_batch, todo, done, len(done), n_mine, n_left, rounds)


def _judge(job: _Job, work: _Work):
    """4. The judge, fitted on this run's own labelled images only (a few-shot or long-tail
    subset: no label outside it), once and cached in the workspace. The first process to take
    the cache's file lock fits it, the others wait on the lock and read the file: nobody waits
    in a collective meanwhile (a long fit on a large dataset passed the process group's
    timeout). Every process takes part (even one with nothing left), so none waits in the
    collectives below while another fits."""
    from diffmix import score

    clf = None
    if job.cfg.score and work.rounds:
        clf = score.reference_classifier(job.ds, indices=judge_indices(job.cfg, job.subset))
    job.common["judge"] = None if clf is None else clf.judge
    return clf


def _loop(job: _Job, work: _Work, clf, progress) -> float:
    """5. Execute batch by batch; returns the loop's start time.

    Every process runs the same number of rounds and agrees on a cancel in each: checking the
    cancel file alone, processes stopped at different batches and the ones still running
    waited forever at the final barrier.
    """
    from diffmix.progress import ProgressReporter
    from diffmix.translate import TranslateConfig

    cfg, dist, run, plan = job.cfg, job.dist, job.run, job.plan
    tcfg = TranslateConfig(
        strategy=job.st.name, model=cfg.model, adapter=cfg.adapter,
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        prompt_template=cfg.prompt_template, gamma=cfg.gamma, batch_size=cfg.batch_size,
        device=cfg.device or dist.device, dtype=cfg.dtype,
    )  # fmt: skip
    superclass = cfg.superclass or job.ds.superclass
    bar = ProgressReporter(work.n_mine, initial=work.n_mine - work.n_left, desc="generate",
                           unit="img")  # fmt: skip
    made, t_loop = 0, time.time()
    for r in range(work.rounds):
        if dist.any(run.cancel_requested()):
            raise Cancelled(f"cancelled after {made} new image(s)")
        if r >= len(work.todo):
            continue  # this process is done; it only takes part in the cancel agreement
        b = work.todo[r]
        tasks = [t for t in work.by_batch[b] if t.task not in work.done]
        images, scores = _batch(job, work.by_batch[b], tasks, tcfg, superclass, clf)
        rows = _write_batch(job, tasks, images, scores)
        work.done.update(row["task"] for row in rows)
        made += len(rows)
        bar.update(len(rows))
        rate = made / max(time.time() - t_loop, 1e-9)
        if dist.is_main:  # with N processes: the main process's view (its own + earlier)
            n_done = len(work.done)
            run.event("progress", done=n_done, total=len(plan), batch=b,
                      images_per_s=round(rate, 4))  # fmt: skip
            run.set_status(step=n_done, progress=n_done / len(plan),
                           images_per_s=round(rate, 4), message="generating",
                           eta_s=(work.n_left - made) / max(rate, 1e-9))  # fmt: skip
        if progress is not None:
            progress(len(work.done), len(plan))
    bar.close()
    return t_loop


def _batch(job: _Job, batch: Sequence[PlannedTask], pending: Sequence[PlannedTask], tcfg,
           superclass: str | None, clf) -> tuple[list, list[tuple]]:  # fmt: skip
    """One plan batch through one shared loop (the whole batch, for exactness); the results
    of its ``pending`` tasks and their ``(faithfulness, diversity)`` (None when not scored)."""
    from diffmix import score

    results, sources = _translate_batch(batch, job.ds, tcfg, superclass)
    keep = {t.task for t in pending}
    picked = [(res, src) for t, res, src in zip(batch, results, sources, strict=True)
              if t.task in keep]  # fmt: skip
    images = [res.image for res, _ in picked]
    faith = div = None
    if clf is not None:
        faith = score.faithfulness(clf, images, [t.target_class for t in pending])
        if job.st.generative != "txt2img":
            div = score.diversity_from_source(clf, images, [src for _, src in picked])
    scores = [(None if faith is None else float(faith[j]), None if div is None else float(div[j]))
              for j in range(len(picked))]  # fmt: skip
    return [res for res, _ in picked], scores


def _write_batch(job: _Job, tasks: Sequence[PlannedTask], results, scores) -> list[dict]:
    """Each image atomically, then the batch's rows in one appended, fsynced write. On an
    ``OSError`` the batch in flight is not finished: its images (no row, or a torn one) go, so
    the count and the folder agree; the finished rows are counted on disk."""
    out, dist = job.out, job.dist
    rows, written = [], []
    try:
        for t, res, (faith, div) in zip(tasks, results, scores, strict=True):
            rel = syn.image_name(t.target_class, t.task)
            (out / rel).parent.mkdir(exist_ok=True)
            syn.save_png(res.image, out / rel)
            written.append(out / rel)
            rows.append(_row(t, res, rel, job.st, job.common, faith, div))
        syn.append_rows(syn.rank_file(out, dist.rank, dist.world), rows)
    except OSError as e:
        for f in written:
            with contextlib.suppress(OSError):
                f.unlink()
        raise _io_error(out, e, syn.count_done(out)) from e
    return rows


def _done(job: _Job, work: _Work, t_start: float, t_loop: float) -> dict[str, Any]:
    """6. Merge, filter, dataset card (main process, once every process is done); summary."""
    out, dist, plan, run = job.out, job.dist, job.plan, job.run
    dist.barrier()
    if dist.is_main:
        try:
            summary = _finish(out, job.cfg, job.ds, plan, job.record)
        except OSError as e:
            raise _io_error(out, e, syn.count_done(out)) from e
    dist.barrier()
    if not dist.is_main:
        summary = syn.summary(syn.read_rows(out / syn.METADATA_FILE), out, len(plan))
    seconds = time.time() - t_start
    generated = max(0, summary["images"] - work.done_at_start)  # by all processes
    summary.update(generated=generated, seconds=round(seconds, 3),
                   images_per_s=round(generated / max(time.time() - t_loop, 1e-9), 4))  # fmt: skip
    if dist.is_main:
        run.set_status("done", progress=1.0, step=len(plan), message="finished",
                       images=summary["images"], kept=summary["kept"])  # fmt: skip
        run.event("done", images=summary["images"], kept=summary["kept"],
                  generated=generated, seconds=round(seconds, 3))  # fmt: skip
    return summary


# --------------------------------------------------------------------------- helpers


def _io_error(path: Path, e: OSError, finished: int | None = None) -> OSError:
    """An OSError whose message names the path, the cause and what to do.

    ``finished``: the images finished in the folder (rows whose image is on disk).
    """
    kept = (
        f" The {finished} image(s) already finished there are kept; rerun to continue."
        if finished
        else ""
    )
    where = e.filename or path
    if e.errno in DISK_FULL:
        return OSError(
            e.errno,
            f"no space left on device while writing {str(where)!r}: free some space (or choose "
            f"another --out) and rerun the same command.{kept}",
        )
    return OSError(
        e.errno or errno.EACCES,
        f"cannot write to {str(where)!r} ({e.strerror or e}): make the output folder writable "
        f"(e.g. chmod -R u+w) or choose another --out.{kept}",
    )


def _prepare_out(out: Path) -> None:
    """Create ``out`` and check that files can be created in it (clear ``OSError`` if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{os.getpid()}{syn.TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:  # name the folder, not the probe file
        bare = OSError(e.errno, e.strerror)
        raise _io_error(out, bare, syn.count_done(out) if out.is_dir() else None) from e


def _source_items(tasks: Sequence[PlannedTask], ds, strategy) -> tuple[list, list]:
    from diffmix.translate import TranslationItem

    items, sources = [], []
    for t in tasks:
        if strategy.generative == "txt2img":
            src, src_cls = None, None
        else:
            src, src_cls = ds.image(t.source_index), t.source_class
        partner = ds.image(t.partner_index) if t.partner_index is not None else None
        items.append(TranslationItem(src, src_cls, t.target_class, t.strength, t.seed, partner))
        sources.append(src)
    return items, sources


def _translate_batch(tasks: Sequence[PlannedTask], ds, tcfg, superclass: str | None):
    """One plan batch through :func:`diffmix.translate.translate` (one shared loop)."""
    from diffmix.translate import translate

    st = get_strategy(tcfg.strategy)
    items, sources = _source_items(tasks, ds, st)
    if len(items) > tcfg.batch_size:
        tcfg = tcfg.model_copy(update={"batch_size": len(items)})
    results = translate(items, tcfg, class_names=ds.class_names, superclass=superclass)
    return results, sources


def _row(t: PlannedTask, r, rel: str, st, common: dict, faith, div) -> dict[str, Any]:
    """The metadata row of a finished task (fields: :data:`diffmix.synthetic.ROW_FIELDS`)."""
    gen = st.generative == "txt2img"
    row = {
        "file_name": rel, "task": t.task, "batch": t.batch,
        "source_index": None if gen else t.source_index,
        "source_id": None if gen else t.source_id,
        # text-to-image has no source: its "source class" is the target (label = one-hot)
        "source_class": t.target_class if gen else t.source_class,
        "target_class": t.target_class, "strength": t.strength, "seed": t.seed,
        "strategy": common["strategy"], "prompt": r.prompt,
        "soft_label": {k: float(v) for k, v in r.soft_label.items()},
        "label_rule": r.label_rule,
        "faithfulness": faith, "diversity": div,
        "judge": None if faith is None else common["judge"], "kept": True,
        "partner_index": t.partner_index, "partner_id": t.partner_id,
        "steps_run": r.steps_run, "num_inference_steps": common["num_inference_steps"],
        "guidance_scale": common["guidance_scale"], "gamma": common["gamma"],
        "model": common["model"], "model_fingerprint": common["model_fingerprint"],
        "adapter": common["adapter"], "adapter_fingerprint": common["adapter_fingerprint"],
        "dataset_fingerprint": common["dataset_fingerprint"],
        "width": r.image.width, "height": r.image.height,
    }  # fmt: skip
    return row


def _finish(out: Path, cfg: GenerateConfig, ds, plan, record: dict) -> dict[str, Any]:
    """Merge rank files, mark the filter, write the card and the grid; the summary."""
    rows = syn.merge(out, {t.task for t in plan}).rows
    check_filter_judge(cfg, rows)
    scored = [r for r in rows if r.get("faithfulness") is not None]
    keep = bottom_fraction_mask([r["faithfulness"] for r in scored], cfg.filter_bottom)
    for r in rows:
        r["kept"] = True
    for r, k in zip(scored, keep, strict=True):
        r["kept"] = bool(k)
    syn.write_rows(out / syn.METADATA_FILE, rows)
    summary = syn.summary(rows, out, len(plan))
    if rows:
        syn.write_grid(out, rows, ds.class_names)
    syn.fsync_write(out / syn.CARD_FILE, syn.dataset_card(rows, record, len(plan)).encode())
    return summary
