"""Running an experiment: check the folder, run or skip each stage, write the results.

:func:`run_experiment` walks the stages of :func:`~diffmix.experiment.plan.plan_experiment`;
a stage's cancel and progress are mirrored by a watcher thread (:class:`_Forward`); after every
stage the subset it recorded is checked against the seed's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmix.experiment.config import RERUN_FREE_FIELDS, ExperimentConfig
from diffmix.experiment.estimate import format_estimate
from diffmix.experiment.plan import Stage, _read_json, plan_experiment
from diffmix.experiment.table import format_table, run_record, summarize_arms
from diffmix.runs import RunDir, atomic_write

logger = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
FORMAT = "diffmix-experiment/1"

#: Files a fresh experiment folder may already hold (run directory, a job launcher's files).
_RUN_FILES = frozenset(
    {"status.json", "events.jsonl", "log.txt", "CANCEL", "config.json", "job.json", "stdout.log",
     "request.yaml"}
)  # fmt: skip
#: Seconds between two looks of the watcher at a running stage (cancel, progress).
_WATCH_INTERVAL_S = 0.5


class _Progress:
    """The experiment's status: overall progress (stage estimates as weights), ETA, cancel."""

    def __init__(self, run: RunDir, stages: Sequence[Stage]):
        self.run = run
        self.total = sum(s.estimate_s for s in stages) or 1.0
        self.done_est = 0.0  # estimate of the stages finished (or skipped)
        self.spent_est = 0.0  # estimate of the stages run in this call ...
        self.spent_s = 0.0  # ... and the seconds they really took
        self.lock = threading.Lock()

    def set(self, current: Stage | None = None, fraction: float = 0.0, **fields: Any) -> None:
        with self.lock:
            est = self.done_est + (current.estimate_s * fraction if current else 0.0)
            ratio = self.spent_s / self.spent_est if self.spent_est > 0 else 1.0
            self.run.set_status(
                progress=min(1.0, est / self.total),
                eta_s=round(max(0.0, self.total - est) * ratio, 1),
                **fields,
            )

    def finish(self, stage: Stage, seconds: float | None) -> None:
        with self.lock:
            self.done_est += stage.estimate_s
            if seconds is not None:
                self.spent_est += stage.estimate_s
                self.spent_s += seconds


class _Forward:
    """While a stage runs: forward a cancel of the experiment to it, mirror its progress."""

    def __init__(self, progress: _Progress, stage: Stage, interval: float | None = None):
        self.progress, self.stage = progress, stage
        self.interval = _WATCH_INTERVAL_S if interval is None else interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="experiment-watch", daemon=True)

    def __enter__(self) -> _Forward:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        cancel = self.stage.out / "CANCEL"
        last = -1.0
        while not self.stop.wait(self.interval):
            try:
                if self.progress.run.cancel_requested() and not cancel.exists():
                    self.stage.out.mkdir(parents=True, exist_ok=True)
                    cancel.touch()  # the stage stops at its next check, keeping its work
                status = _read_json(self.stage.out / "status.json") or {}
                fraction = float(status.get("progress") or 0.0)
                if fraction != last and status.get("state") == "running":
                    last = fraction
                    self.progress.set(self.stage, fraction, stage_progress=fraction)
            except OSError:  # a status being replaced; try again next tick
                continue


def _check_subset(stage: Stage, expected: dict[str, Any]) -> None:
    """Refuse a stage that recorded another real subset than the seed's (indices, dataset)."""
    from diffmix.data import SubsetMismatchError

    got = stage.recorded_subset()
    if got is None:
        raise SubsetMismatchError(
            f"{stage.name}: {stage.out} records no subset; cannot check that it used the "
            "seed's real images"
        )
    for key in ("indices", "fingerprint", "shots"):
        if got.get(key) != expected.get(key):
            raise SubsetMismatchError(
                f"{stage.name} used another real subset than the other arms of seed "
                f"{stage.seed} ({key}: {str(got.get(key))[:80]} vs {str(expected.get(key))[:80]}"
                f"); remove {stage.out} or choose a new --out"
            )


def _check_recorded_config(stage: Stage) -> None:
    """Refuse to reuse a finished stage whose recorded config differs from this one."""
    from diffmix.classify.config import RUN_ONLY_FIELDS
    from diffmix.generate import RERUN_FREE_FIELDS as GEN_FREE

    old = stage.recorded_config()
    new = json.loads(stage.config.model_dump_json())
    if old is None:
        return
    free = set(RUN_ONLY_FIELDS) if stage.kind == "train" else set()
    if stage.kind == "generate":
        free = set(GEN_FREE)
    diff = sorted(k for k in new if k not in free and old.get(k) != new[k])
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff[:4])
        raise ValueError(
            f"{stage.out} holds a finished {stage.kind} made with other settings ({shown}); "
            "use the same settings, remove it, or choose a new --out"
        )


def _check_rerun(out: Path, record: dict[str, Any]) -> None:
    """Refuse a folder holding another experiment, or this one with other settings."""
    old = _read_json(out / EXPERIMENT_FILE)
    if old is None:
        if (out / EXPERIMENT_FILE).exists():
            raise ValueError(f"{out / EXPERIMENT_FILE} is not valid JSON; choose a new --out")
        other = [p.name for p in out.iterdir() if p.name not in _RUN_FILES
                 and not p.name.startswith(".")] if out.is_dir() else []  # fmt: skip
        if other:
            raise ValueError(
                f"{str(out)!r} is not empty and holds no experiment (found {sorted(other)[:3]}); "
                "choose an empty or new --out"
            )
        return
    if old.get("format") != FORMAT:
        raise ValueError(f"{out / EXPERIMENT_FILE} is not an experiment record; choose a new --out")
    before, now = old.get("config", {}), record["config"]
    diff = sorted(
        k
        for k in set(before) | set(now)
        if k not in RERUN_FREE_FIELDS and before.get(k) != now.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"{str(out)!r} holds an experiment with other settings ({shown}); rerun with the "
            "same settings to continue it (arms and seeds may change), or choose a new --out"
        )


def run_experiment(
    config: ExperimentConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    callback: Callable[[Stage, str], None] | None = None,
    on_plan: Callable[[list[Stage]], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment of ``config`` in ``out``; returns the results.

    ``resume`` only changes the log: a plain rerun also skips finished stages and resumes
    unfinished ones. ``on_plan(stages)`` is called once the folder is checked, before any work
    (e.g. to show :func:`format_estimate`); ``callback(stage, what)`` with ``what`` in
    ``start``, ``skip``, ``done`` (in-process progress).

    Returns:
        ``{"format", "kind", "dataset", "shots", "seeds", "train_repeats", "arms": {arm:
        {"mean", "std", "n", "runs": [{"seed", "test_accuracy", "mean_class_accuracy",
        "synthetic_images", "run", "repeats", "runs_dirs"}]}}, "subsets": {seed: {"indices",
        "fingerprint", "shots", "checked"}}, "complete", "seconds", "out"}`` (accuracies in
        [0, 1], a seed's the mean of its ``repeats``; also ``results.json``).

    Raises:
        ValueError: bad settings, a folder holding other work, a stage that used another subset.
        Cancelled: a cancel was requested (rerun to continue).
    """
    import torch

    # 1. Check the folder and the settings; draw each seed's subset once.
    t_start = time.time()
    cfg = config
    out = Path(out).expanduser().resolve()
    stages, expected = plan_experiment(cfg, out)
    record = {"format": FORMAT, "config": json.loads(cfg.model_dump_json()),
              "stages": [s.to_dict() for s in stages]}  # fmt: skip
    _check_rerun(out, record)
    if on_plan is not None:
        on_plan(stages)

    # 2. The run directory.
    run = RunDir(out)
    run.clear_stale_cancel()
    atomic_write(out / EXPERIMENT_FILE, json.dumps(record, indent=2) + "\n")
    run.write_config(record["config"])
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    walk = _Walk(out, cfg, run, stages, expected, _Progress(run, stages), t_start, callback)
    # The one run lifecycle (diffmix.runs): a cancel, Ctrl-C, SIGTERM or an error leaves an
    # honest final status and event; the log goes to log.txt while inside.
    try:
        with run.lifecycle("experiment", progress=0.0, stages=len(stages), message="starting"):
            walk.begin(resume)
            # 3. Stage by stage: skip the finished, run (or resume) the others.
            for i, stage in enumerate(stages):
                walk.stage(i, stage)
            # 4. The table.
            return walk.finish()
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Walk:
    """The stage loop of :func:`run_experiment`: its state and one method per step."""

    out: Path
    cfg: ExperimentConfig
    run: RunDir
    stages: list[Stage]
    expected: dict[int, dict[str, Any]]
    progress: _Progress
    t_start: float
    callback: Callable[[Stage, str], None] | None
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def begin(self, resume: bool) -> None:
        """The estimate in the log, the ``plan`` event (the status is ``running`` already:
        :meth:`diffmix.runs.RunDir.lifecycle`)."""
        self.runs = {arm: [] for arm in self.cfg.arms}
        stages = self.stages
        left = [s for s in stages if not s.finished()]
        if resume and len(left) == len(stages):
            logger.info("nothing to resume in %s: starting the experiment", self.out)
        logger.info("%s", format_estimate(stages, self.cfg.budget_minutes))
        self.run.event("plan", stages=[s.to_dict() for s in stages], left=len(left),
                       estimate_s=round(sum(s.estimate_s for s in left), 1))  # fmt: skip

    def stage(self, i: int, stage: Stage) -> None:
        """Skip a finished stage (after checking its config) or run it; then check its subset,
        record a classifier run and rewrite the partial results."""
        run, n = self.run, len(self.stages)
        info = {"stage": stage.name, "stage_kind": stage.kind, "arm": stage.arm,
                "seed": stage.seed, "stage_index": i + 1, "stages": n}  # fmt: skip
        if stage.finished():
            _check_recorded_config(stage)
            seconds = None
            run.event("stage_skip", **info, reason="finished")
            logger.info("[%d/%d] %s: finished earlier, skipped", i + 1, n, stage.name)
        else:
            seconds = self._run(stage, info)
        _check_subset(stage, self.expected[stage.seed])
        self.expected[stage.seed]["checked"].append(str(stage.out.relative_to(self.out)))
        extra: dict[str, Any] = {}
        if stage.kind == "train":
            metrics = _read_json(stage.out / "metrics.json")
            self.runs[stage.arm].append(run_record(stage.seed, stage.out, metrics))
            extra["test_accuracy"] = metrics["test_accuracy"]
        self.progress.finish(stage, seconds)
        if seconds is not None:
            run.event("stage_done", **info, seconds=round(seconds, 2), **extra)
            logger.info("[%d/%d] %s: done in %.0f s%s", i + 1, n, stage.name, seconds,
                        f", test accuracy {extra['test_accuracy']:.4f}" if extra else "")  # fmt: skip
        self.progress.set(None, message=f"{stage.name} {'skipped' if seconds is None else 'done'}")
        if stage.kind == "train":
            _write_results(self.out, self.cfg, self.runs, self.expected, complete=False,
                           t_start=self.t_start)  # fmt: skip
        if self.callback is not None:
            self.callback(stage, "skip" if seconds is None else "done")

    def _run(self, stage: Stage, info: dict[str, Any]) -> float:
        """Run (or resume) one stage; returns its seconds."""
        self.run.check_cancel()
        i, n = info["stage_index"], info["stages"]
        logger.info("[%d/%d] %s -> %s", i, n, stage.name, stage.out)
        self.run.event("stage_start", **info, out=str(stage.out))
        self.progress.set(stage, 0.0, message=f"running {stage.name}", stage_progress=0.0,
                          **info)  # fmt: skip
        if self.callback is not None:
            self.callback(stage, "start")
        t0 = time.time()
        _run_stage(stage, self.progress)
        return time.time() - t0

    def finish(self) -> dict[str, Any]:
        """The final results files and table; status ``done``."""
        results = _write_results(self.out, self.cfg, self.runs, self.expected, complete=True,
                                 t_start=self.t_start)  # fmt: skip
        logger.info("results:\n%s", format_table(results))
        self.run.event("done", arms={a: {"mean": r["mean"], "std": r["std"]}
                                     for a, r in results["arms"].items()},
                       seconds=results["seconds"])  # fmt: skip
        self.run.set_status("done", progress=1.0, eta_s=0.0, message="finished", stage=None,
                            stage_kind=None, arm=None, seed=None, stage_progress=None)  # fmt: skip
        return results


def _run_stage(stage: Stage, progress: _Progress) -> None:
    """Run or resume one stage, forwarding a cancel of the experiment to it."""
    (stage.out / "CANCEL").unlink(missing_ok=True)  # left by an earlier cancelled experiment
    with _Forward(progress, stage):
        if stage.kind == "personalize":
            from diffmix.personalize import personalize

            personalize(stage.config, stage.out, resume=True)
        elif stage.kind == "generate":
            from diffmix.generate import generate

            generate(stage.config, stage.out, resume=True)
        else:
            from diffmix.classify import train

            train(stage.config, stage.out, resume=True)


def _write_results(
    out: Path,
    cfg: ExperimentConfig,
    runs: dict[str, list[dict[str, Any]]],
    subsets: dict[int, dict[str, Any]],
    *,
    complete: bool,
    t_start: float,
) -> dict[str, Any]:
    """Write results.json and results.md (atomically); returns the results dict."""
    results = {
        "format": FORMAT,
        "kind": cfg.kind,
        "dataset": cfg.dataset,
        "shots": cfg.shots,
        "seeds": list(cfg.seeds),
        "train_repeats": cfg.train_repeats,
        "arms": summarize_arms(runs),
        "subsets": {str(k): v for k, v in subsets.items()},
        "complete": complete,
        "seconds": round(time.time() - t_start, 1),
        "out": str(out),
    }
    for name, text in ((RESULTS_FILE, json.dumps(results, indent=1) + "\n"),
                       (TABLE_FILE, format_table(results))):  # fmt: skip
        atomic_write(out / name, text)
    return results
