"""Train a classifier on real (+ synthetic) images and evaluate it on the test split.

Run directory (``out``; DESIGN.md §3 and :mod:`diffmix.runs`)::

    config.json         the resolved TrainConfig
    status.json         state, progress, epoch, step/total, eta_s, test_accuracy
    events.jsonl        "start"; one "epoch" event per epoch (epoch, train_loss, test_accuracy,
                        mean_class_accuracy, per_class_accuracy (list, class order),
                        head/medium/tail_accuracy, lr, images_per_s, synthetic_fraction,
                        time_s); "resume"; "done"
    log.txt             the log
    subset.json         the exact real training images (few-shot / long-tail draw)
    checkpoints/        ckpt-<global step>.pt: model, optimizer, scheduler, epoch, step in
                        epoch, RNG state, metrics so far (the two newest kept; weights_only)
    confusion.json      {"class_names", "matrix"} of the final epoch (row = true class)
    metrics.json        final figures (see :func:`train`)
    model.safetensors   final weights; classifier.json: arch, classes, resolution, mean/std
    tensorboard/        when the ``tensorboard`` package is installed

Reported accuracy is the *final* epoch's accuracy on the test split (never trained on, never
used to pick an epoch). Training is deterministic per seed on CPU: every random draw
(initialisation, epoch order, p-mixing, augmentation, batch mixing) comes from a generator
seeded by (seed, epoch, step), so a run cancelled or killed and resumed ends with the same
weights as an uninterrupted one.

Over 400 lines because training is one resumable loop whose checkpoint holds its whole state
(model, optimizer, schedule, RNG, step in epoch): :func:`train` is a short list of its steps
(:func:`_prepare_data`, :func:`_build_model`, then :class:`_Trainer`'s methods, which share the
live state), and the checkpoint writer and reader stay beside the loop that must resume exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffmix import costs
from diffmix.classify.config import RUN_ONLY_FIELDS, TrainConfig
from diffmix.classify.data import (
    CacheBudget,
    ImageStore,
    augment_batch,
    derive_seed,
    gather_batch,
    normalize,
    plan_epoch,
    read_synthetic,
)
from diffmix.classify.losses import (
    balanced_softmax_logits,
    class_balanced_weights,
    drw_start_epoch,
    lr_factor,
    smooth_one_hot,
    soft_cross_entropy,
    synthetic_targets,
)
from diffmix.classify.metrics import (
    accuracy,
    class_groups,
    confusion_matrix,
    group_accuracies,
    mean_class_accuracy,
    per_class_accuracy,
)
from diffmix.classify.models import (
    create_classifier,
    freeze_backbone,
    normalization,
    split_head,
)
from diffmix.mixing import mix_batch
from diffmix.progress import LossEMA, ProgressReporter
from diffmix.runs import (
    Cancelled,
    RunDir,
    atomic_target,
    atomic_write,
    checkpoint_files,
    load_newest_checkpoint,
    prune_checkpoints,
    require_keys,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.json"
MODEL_FILE = "model.safetensors"
CLASSIFIER_FILE = "classifier.json"
_KEEP_CHECKPOINTS = 2


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run directory ``out``; returns the final metrics.

    ``resume`` continues from the newest checkpoint in ``out`` that loads (same config
    required; an unreadable newer one is skipped with a warning; the log says where it resumes
    from, and warns when that is the beginning). However the run stops, status.json says so
    (:meth:`RunDir.lifecycle`); a full disk raises OSError with the checkpoints kept intact.
    ``callback(epoch_metrics)`` is called after each epoch (in-process progress). A cancel
    request (``RunDir(out).request_cancel()``) stops the run at the next step boundary with a
    checkpoint and raises :class:`diffmix.runs.Cancelled`.

    The returned dict (also ``metrics.json``) holds ``test_accuracy`` (final epoch, in [0, 1]),
    ``mean_class_accuracy``, ``per_class_accuracy`` ({class: accuracy}), ``head_accuracy``,
    ``medium_accuracy``, ``tail_accuracy``, ``groups`` ({group: [classes]}), ``epochs``,
    ``train_images``, ``train_counts``, ``synthetic_images``, ``arch``, ``out`` and more.
    """
    cfg = config.resolved()
    out = Path(out)
    run = RunDir(out)
    cfg_json = _check_out(cfg, out, run, resume)
    with (
        run.lifecycle("train", progress=0.0, message="loading data"),
        contextlib.ExitStack() as cleanup,
    ):
        cleanup.callback(torch.set_num_threads, torch.get_num_threads())
        run.set_status(phase="loading data", message="loading data")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        run.write_config(cfg_json)
        run.clear_stale_cancel()
        data = _prepare_data(cfg, out, run)  # 1-2. real and synthetic images
        t = _build_model(cfg, out, run, data)  # 3. model, optimizer, schedule
        t.resume(resume)  # 4. the newest checkpoint, or the "start" event
        t.writer = _tensorboard(out) if cfg.tensorboard and t.accel.is_main_process else None
        if t.writer is not None:
            cleanup.callback(t.writer.close)
        t.train_epochs(callback)  # 5. the epochs
        return t.finish()  # 6. final figures, weights, report


# --------------------------------------------------------------------------- train()'s steps


def _check_out(cfg: TrainConfig, out: Path, run: RunDir, resume: bool) -> dict[str, Any]:
    """``cfg`` as JSON, once ``out`` may take this run: a resume keeps the config (bar
    :data:`RUN_ONLY_FIELDS`); a fresh run never overwrites another. Before any work."""
    cfg_json = json.loads(cfg.model_dump_json())
    old = run.read_config()
    changed = sorted(
        k
        for k in set(old or {}) | set(cfg_json)
        if k not in RUN_ONLY_FIELDS and (old or {}).get(k) != cfg_json.get(k)
    )
    if resume and old is not None and changed:
        raise ValueError(
            f"cannot resume {out}: its config differs in {changed}; use the same settings or a new --out"
        )
    if not resume and (_latest_checkpoint(out) is not None or (out / METRICS_FILE).exists()):
        raise ValueError(
            f"{out} already holds a training run; pass --resume or choose another --out"
        )
    return cfg_json


@dataclass
class _Data:
    """The run's images and labels (:func:`_prepare_data`); read-only while training."""

    train_ds: Any
    test_ds: Any
    class_names: list[str]
    indices: list[int]  # the real training images (positions in train_ds)
    real_labels: torch.Tensor  # (len(indices),) int64
    test_labels: torch.Tensor  # (len(test_ds),) int64
    counts: torch.Tensor  # real training images per class, (num_classes,)
    train_x: ImageStore
    test_x: ImageStore
    syn_x: ImageStore
    syn_sources: torch.Tensor  # position in train_x of each synthetic image's source, -1: none
    syn_targets: torch.Tensor  # (len(syn_x), num_classes) soft labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _prepare_data(cfg: TrainConfig, out: Path, run: RunDir) -> _Data:
    """Steps 1-2: the subset of the train split (saved to ``subset.json``), the whole test
    split, the synthetic images; decoded within the run's memory budget (train, test, then
    synthetic)."""
    from diffmix import workspace
    from diffmix.data import load_dataset, make_subset

    train_ds = load_dataset(cfg.dataset, split="train", test_fraction=cfg.test_fraction)
    test_ds = load_dataset(cfg.dataset, split="test", test_fraction=cfg.test_fraction)
    if test_ds.class_names != train_ds.class_names:
        raise ValueError(
            f"train and test splits of {cfg.dataset!r} have different classes: "
            f"{train_ds.class_names} vs {test_ds.class_names}"
        )
    class_names = list(train_ds.class_names)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(
            f"dataset {cfg.dataset!r} has {num_classes} class ({', '.join(class_names)}); a "
            "classifier needs at least two classes (its accuracy would be 100 % by "
            "construction): add a class folder"
        )
    subset = make_subset(train_ds, shots=cfg.shots, imbalance=cfg.imbalance, seed=cfg.subset_seed)
    empty = [name for name, n in subset.counts.items() if n == 0]
    if empty:
        raise ValueError(f"classes with no training images: {empty}; add images or drop them")
    subset.save(out / "subset.json")
    indices = list(subset.indices)
    real_labels = torch.tensor([train_ds.items[i].label for i in indices], dtype=torch.long)
    test_labels = torch.tensor(test_ds.labels, dtype=torch.long)
    counts = torch.bincount(real_labels, minlength=num_classes)
    cache_dir = workspace.subdir("cache", "classify") if cfg.cache else None
    run.set_status(message="loading data (decoding images)", phase="loading data")
    budget = CacheBudget(cfg.cache_mb)
    train_x = ImageStore.for_dataset(train_ds, indices, cfg.resolution, budget, cache_dir)
    test_x = ImageStore.for_dataset(test_ds, range(len(test_ds)), cfg.resolution, budget, cache_dir)
    syn_x, syn_sources, syn_targets = _load_synthetic(
        cfg, class_names, train_ds, test_ds, indices, budget
    )
    streamed = {name: f"{st.capacity} of {len(st)}" for name, st in
                (("train", train_x), ("test", test_x), ("synthetic", syn_x))
                if st.capacity < len(st)}  # fmt: skip
    if streamed:
        logger.info(
            "decoded-image budget %d MB (cache_mb) holds %s images in memory; the others "
            "are decoded from disk each time they are used (slower, same results)",
            cfg.cache_mb, ", ".join(f"{k}: {v}" for k, v in streamed.items()),
        )  # fmt: skip
    return _Data(train_ds, test_ds, class_names, indices, real_labels, test_labels, counts,
                 train_x, test_x, syn_x, syn_sources, syn_targets)  # fmt: skip


def _load_synthetic(
    cfg: TrainConfig, class_names: list[str], train_ds, test_ds, indices: list[int], budget
) -> tuple[ImageStore, torch.Tensor, torch.Tensor]:
    """Step 2: the synthetic images (store, source positions, soft targets); labels by each
    row's rule (:mod:`diffmix.labels`), sources checked; empty ones without ``cfg.synthetic``."""
    syn = read_synthetic(cfg.synthetic, class_names, cfg.gamma) if cfg.synthetic else None
    if syn is not None and len(syn) == 0:
        raise ValueError(f"the synthetic folders {cfg.synthetic} hold no usable (kept) image")
    if syn is None:
        empty = torch.zeros(0, 3, cfg.resolution, cfg.resolution, dtype=torch.uint8)
        return (ImageStore.from_tensor(empty), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, len(class_names)))  # fmt: skip
    syn_sources = _synthetic_sources(syn.source_ids, train_ds, test_ds, indices)
    syn_x = ImageStore.for_paths(syn.paths, cfg.resolution, budget)
    syn_targets = synthetic_targets(
        syn.targets, cfg.synthetic_label_scale,
        cfg.label_smoothing if cfg.synthetic_label_smoothing else 0.0,
    )  # fmt: skip
    return syn_x, syn_sources, syn_targets


def _build_model(cfg: TrainConfig, out: Path, run: RunDir, data: _Data) -> _Trainer:
    """Step 3: model, optimizer, schedule; accelerate wraps them (multi-GPU with no code change).
    The model's initialisation draws from ``cfg.seed``."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    cuda = torch.cuda.is_available()
    if cfg.mixed_precision != "no" and not cuda:
        logger.info("mixed precision %s needs a GPU; training in fp32", cfg.mixed_precision)
    accel = Accelerator(mixed_precision=cfg.mixed_precision if cuda else "no", cpu=not cuda)
    torch.manual_seed(cfg.seed)
    model = create_classifier(
        cfg.arch, data.num_classes, resolution=cfg.resolution, pretrained=cfg.pretrained
    )
    mean, std = normalization(model)
    params = freeze_backbone(model) if cfg.tune == "head" else list(model.parameters())
    # a frozen backbone gives the test images the same features every epoch: computed once
    frozen: dict[str, torch.Tensor] | None = {} if cfg.tune == "head" else None
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    n_used = len(data.indices)
    if n_used % cfg.batch_size == 1 and n_used > 1:
        n_used -= 1  # never a lone 1-image batch (BatchNorm cannot train on it)
    loader = DataLoader(range(n_used), batch_size=cfg.batch_size, shuffle=False)
    model, optimizer, loader = accel.prepare(model, optimizer, loader)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps)
    )
    drw_weights = class_balanced_weights(data.counts, cfg.drw_beta).to(accel.device)
    groups = class_groups(data.counts.tolist(), cfg.groups)
    if cfg.balanced_sampling and cfg.loss != "ce":
        logger.warning(
            "balanced sampling with loss %s corrects the class imbalance twice", cfg.loss
        )
    return _Trainer(cfg, out, run, data, accel, model, optimizer, scheduler, loader, mean, std,
                    drw_weights, groups, steps_per_epoch, total_steps, frozen)  # fmt: skip


@dataclass
class _Sums:
    """One epoch's running figures; saved in a mid-epoch checkpoint as ``partial``."""

    loss_sum: float = 0.0  # sum of per-image losses
    seen: int = 0  # images trained on
    syn_seen: int = 0  # of them synthetic
    busy: float = 0.0  # seconds in training steps
    lr_used: float = 0.0  # the learning rate of the last step

    def partial(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "seen": self.seen, "syn_seen": self.syn_seen,
                "train_time": self.busy}  # fmt: skip


@dataclass
class _Trainer:
    """Steps 4-6 of :func:`train` (built by :func:`_build_model`): the run's live state and one
    method per step."""

    cfg: TrainConfig
    out: Path
    run: RunDir
    data: _Data
    accel: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    mean: Any
    std: Any
    drw_weights: torch.Tensor
    groups: dict[str, list[int]]
    steps_per_epoch: int
    total_steps: int
    frozen: dict[str, torch.Tensor] | None = None
    # the resume point (completed epochs, steps done in the next) and what it carries
    start_epoch: int = 0
    start_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    writer: Any = None
    bar: Any = None
    ema: LossEMA = field(default_factory=LossEMA)  # the one running loss (status, CLI lines)
    last_preds: torch.Tensor | None = None

    def resume(self, resume: bool) -> None:
        """Step 4: load the newest checkpoint (weights, optimizer, schedule, RNG, resume point)
        and mend the event log, or log the ``start`` event."""
        cfg, out, run = self.cfg, self.out, self.run
        found = load_newest_checkpoint(_checkpoints(out), check=_check_state) if resume else None
        if found is None:
            if resume:
                logger.warning(
                    "--resume: no checkpoint in %s; starting from epoch 1", out / "checkpoints"
                )
            run.event("start", class_names=self.data.class_names, epochs=cfg.epochs,
                      steps_per_epoch=self.steps_per_epoch, train_images=len(self.data.indices),
                      synthetic_images=len(self.data.syn_x),
                      test_images=len(self.data.test_ds))  # fmt: skip
            return
        ckpt, state = found
        if int(state["steps_per_epoch"]) != self.steps_per_epoch:
            raise ValueError(
                f"cannot resume {out}: it ran {state['steps_per_epoch']} steps per epoch, "
                f"this setup runs {self.steps_per_epoch} (another number of processes?)"
            )
        self.accel.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step_in_epoch"])
        self.history, self.partial = list(state["history"]), state.get("partial")
        start_epoch = self.start_epoch
        # epochs logged after this checkpoint (a newer one was unreadable) are made again
        run.drop_events("epoch", lambda ev: (ev.get("epoch") or 0) <= start_epoch)
        logged = {ev.get("epoch") for ev in run.events("epoch")}
        for h in self.history:  # an epoch checkpointed but not yet logged (killed in between)
            if h["epoch"] not in logged:
                run.event("epoch", **h)
        run.event("resume", epoch=start_epoch, step_in_epoch=self.start_step,
                  checkpoint=ckpt.name)  # fmt: skip
        logger.info(
            "resuming from epoch %d of %d, step %d (%s)",
            start_epoch + 1, cfg.epochs, self.start_step, ckpt.relative_to(out),
        )  # fmt: skip

    def train_epochs(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        """Step 5: the epochs from the resume point on; one plan per epoch, batches gathered
        from the image stores."""
        cfg, d = self.cfg, self.data
        logger.info(
            "training %s on %d real (+%d synthetic, p=%.2f) images, %d test images, "
            "%d classes, %d px, %d epochs x %d steps",
            cfg.arch, len(d.indices), len(d.syn_x), cfg.p, len(d.test_ds), d.num_classes,
            cfg.resolution, cfg.epochs, self.steps_per_epoch,
        )  # fmt: skip
        self.model.train()
        done = self.start_epoch * self.steps_per_epoch + self.start_step
        self.run.set_status(message=_epoch_phase(self.start_epoch, cfg.epochs),
                            phase=_epoch_phase(self.start_epoch, cfg.epochs),
                            epoch=self.start_epoch, epochs=cfg.epochs,
                            step=done, total=self.total_steps)  # fmt: skip
        self.bar = ProgressReporter(self.total_steps, initial=done, desc="train", unit="step")
        for epoch in range(self.start_epoch, cfg.epochs):
            self._train_epoch(epoch, callback)
        self.bar.close()

    def _train_epoch(self, epoch: int, callback) -> None:
        """One epoch (from the resume point's step in its first), then :meth:`_end_epoch`."""
        cfg, d = self.cfg, self.data
        plan = plan_epoch(d.real_labels, num_synthetic=len(d.syn_x), p=cfg.p, seed=cfg.seed,
                          epoch=epoch, balanced=cfg.balanced_sampling,
                          synthetic_sources=d.syn_sources, pick=cfg.synthetic_pick)  # fmt: skip
        first = self.start_step if epoch == self.start_epoch else 0
        acc = dict(self.partial) if (self.partial and epoch == self.start_epoch) else {}
        sums = _Sums(float(acc.get("loss_sum", 0.0)), int(acc.get("seen", 0)),
                     int(acc.get("syn_seen", 0)), float(acc.get("train_time", 0.0)))  # fmt: skip
        late = cfg.loss == "drw" and epoch >= drw_start_epoch(cfg.epochs)
        weight = self.drw_weights if late else None
        sums.lr_used = self.optimizer.param_groups[0]["lr"]
        phase = _epoch_phase(epoch, cfg.epochs)
        self.run.set_status(message=phase, phase=phase)
        for step, pos in enumerate(self.loader):
            if step < first:
                continue
            # 5a. A clean step boundary: stop here when asked, keeping the work done.
            if self.run.cancel_requested():
                if step > first:  # else the newest checkpoint is this very boundary
                    _checkpoint(self.out, self.accel, self.model, self.optimizer, self.scheduler,
                                epoch, step, self.steps_per_epoch, self.history,
                                sums.partial())  # fmt: skip
                raise Cancelled(f"cancelled at epoch {epoch + 1}, step {step}")
            self._step(epoch, step, pos, plan, weight, sums)
        self._end_epoch(epoch, sums, callback)

    def _step(self, epoch: int, step: int, pos, plan, weight, sums: _Sums) -> None:
        """One training step; its random draws come from (seed, epoch, step, process)."""
        cfg, d, accel = self.cfg, self.data, self.accel
        t0 = time.perf_counter()
        # 5b. The batch: real rows, some replaced by synthetic rows with soft labels.
        pos = pos.cpu()
        ri, si = plan.real[pos], plan.synthetic[pos]
        rep = si >= 0
        xb = gather_batch(d.train_x, d.syn_x, ri, si)
        yb = smooth_one_hot(d.real_labels[ri], d.num_classes, cfg.label_smoothing)
        if bool(rep.any()):
            yb[rep] = d.syn_targets[si[rep]]
        gen = torch.Generator().manual_seed(
            derive_seed("step", cfg.seed, epoch, step, accel.process_index)
        )
        x = augment_batch(
            normalize(xb.to(accel.device), self.mean, self.std), cfg.augment, gen,
            scale_min=cfg.crop_scale_min,
        )  # fmt: skip
        x, yb = mix_batch(x, yb.to(accel.device), cfg.mix, cfg.mix_alpha, gen, cfg.mix_prob)
        # 5c. Forward, loss, update (dropout & co. draw from a per-step seed).
        torch.manual_seed(derive_seed("torch", cfg.seed, epoch, step, accel.process_index))
        with accel.autocast():
            logits = self.model(x)
        if cfg.loss == "balanced-softmax":
            logits = balanced_softmax_logits(logits, d.counts)
        loss = soft_cross_entropy(logits, yb, weight)
        self.optimizer.zero_grad(set_to_none=True)
        accel.backward(loss)
        sums.lr_used = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        sums.loss_sum += float(loss.detach()) * len(pos)
        sums.seen += len(pos)
        sums.syn_seen += int(rep.sum())
        sums.busy += time.perf_counter() - t0
        loss_ema = self.ema.update(float(loss.detach()))
        self.bar.update(1, loss=loss_ema)
        done = epoch * self.steps_per_epoch + step + 1
        if done % 10 == 0:
            rate = sums.seen / max(sums.busy, 1e-9)
            eta_s = (self.total_steps - done) * cfg.batch_size / max(rate, 1e-9)
            self.run.set_status(step=done, progress=done / self.total_steps, loss=loss_ema,
                                eta_s=eta_s)  # fmt: skip

    def _end_epoch(self, epoch: int, sums: _Sums, callback) -> None:
        """5d. End of epoch: evaluate, checkpoint, then log (a logged epoch is always saved)."""
        cfg, run, d = self.cfg, self.run, self.data
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "epochs": cfg.epochs,
            "train_loss": sums.loss_sum / max(sums.seen, 1),
            "lr": sums.lr_used,
            "images_per_s": sums.seen / max(sums.busy, 1e-9),
            "synthetic_fraction": sums.syn_seen / max(sums.seen, 1),
            "time_s": sums.busy,
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            phase = f"evaluating (epoch {epoch + 1}/{cfg.epochs})"
            run.set_status(message=phase, phase=phase, eta_s=None)
            self.last_preds = self._predict_test()
            metrics.update(_figures(self.last_preds, d.test_labels, d.num_classes, self.groups))
        self.history.append(metrics)
        if self.accel.is_main_process:
            phase = f"saving a checkpoint (epoch {epoch + 1}/{cfg.epochs})"
            run.set_status(message=phase, phase=phase, eta_s=None)
            _checkpoint(self.out, self.accel, self.model, self.optimizer, self.scheduler,
                        epoch + 1, 0, self.steps_per_epoch, self.history, None)  # fmt: skip
            run.event("epoch", **metrics)
            if self.writer is not None:
                for key in ("train_loss", "test_accuracy", "lr", "images_per_s"):
                    if metrics.get(key) is not None:
                        self.writer.add_scalar(key, metrics[key], epoch + 1)
        logger.info(
            "epoch %d/%d: loss %.4f, test accuracy %s, %.0f images/s",
            epoch + 1, cfg.epochs, metrics["train_loss"],
            "-" if metrics.get("test_accuracy") is None else f"{metrics['test_accuracy']:.4f}",
            metrics["images_per_s"],
        )  # fmt: skip
        run.set_status(epoch=epoch + 1, step=(epoch + 1) * self.steps_per_epoch,
                       message=_epoch_phase(epoch + 1, cfg.epochs),
                       phase=_epoch_phase(epoch + 1, cfg.epochs),
                       progress=(epoch + 1) / cfg.epochs, train_loss=metrics["train_loss"],
                       test_accuracy=metrics.get("test_accuracy"))  # fmt: skip
        if callback is not None:
            callback(metrics)

    def _predict_test(self) -> torch.Tensor:
        return _predict(self.accel, self.model, self.data.test_x, self.mean, self.std,
                        self.cfg.eval_batch_size, self.frozen)  # fmt: skip

    def finish(self) -> dict[str, Any]:
        """Step 6: the final figures (the last epoch's, re-evaluated if this call trained
        nothing); confusion, metrics, weights and card written; the ``done`` event."""
        cfg, out, run, d = self.cfg, self.out, self.run, self.data
        run.set_status(message="writing the report", phase="writing the report", eta_s=None)
        if self.last_preds is None:
            self.last_preds = self._predict_test()
        conf = confusion_matrix(self.last_preds, d.test_labels, d.num_classes)
        result = _result(cfg, out, d, self.groups,
                         _figures(self.last_preds, d.test_labels, d.num_classes, self.groups))  # fmt: skip
        if self.accel.is_main_process:
            _write_json(out / CONFUSION_FILE, {"class_names": d.class_names,
                                               "matrix": conf.tolist(),
                                               "rows": "true class", "columns": "predicted class"})  # fmt: skip
            _write_json(out / METRICS_FILE, result)
            _save_model(out, self.accel.unwrap_model(self.model), cfg, d.class_names,
                        self.mean, self.std)  # fmt: skip
            prune_checkpoints(_checkpoints(out), keep=1)  # resume needs only the newest
            rates = [h["images_per_s"] for h in self.history if h.get("images_per_s")]
            if rates:  # this machine's measured speed feeds the next estimates
                costs.record_train_run(cfg.arch, batch=cfg.batch_size, resolution=cfg.resolution,
                                       train_image_s=1.0 / (sum(rates) / len(rates)))  # fmt: skip
        self.accel.wait_for_everyone()
        run.event("done", test_accuracy=result["test_accuracy"], epochs=cfg.epochs)
        run.set_status("done", progress=1.0, message="finished", eta_s=0.0,
                       test_accuracy=result["test_accuracy"])  # fmt: skip
        return result


def _result(
    cfg: TrainConfig, out: Path, d: _Data, groups: dict[str, list[int]], figures: dict[str, Any]
) -> dict[str, Any]:
    """The returned dict and ``metrics.json`` (see :func:`train`)."""
    names = d.class_names
    return {
        "test_accuracy": figures["test_accuracy"],
        "mean_class_accuracy": figures["mean_class_accuracy"],
        "per_class_accuracy": dict(zip(names, figures["per_class_accuracy"], strict=True)),
        "head_accuracy": figures["head_accuracy"],
        "medium_accuracy": figures["medium_accuracy"],
        "tail_accuracy": figures["tail_accuracy"],
        "groups": {g: [names[c] for c in cs] for g, cs in groups.items()},
        "group_rule": cfg.groups,
        "epochs": cfg.epochs,
        "train_images": len(d.indices),
        "train_counts": dict(zip(names, d.counts.tolist(), strict=True)),
        "test_images": len(d.test_ds),
        "synthetic_images": len(d.syn_x),
        "p": cfg.p,
        "gamma": cfg.gamma,
        "arch": cfg.arch,
        "pretrained": cfg.pretrained,
        "tune": cfg.tune,
        "resolution": cfg.resolution,
        "dataset": {"spec": cfg.dataset, "fingerprint": d.train_ds.fingerprint},
        "out": str(out),
    }


# --------------------------------------------------------------------------- helpers


def _epoch_phase(epoch: int, epochs: int) -> str:
    """``training epoch 3/30`` for the epoch starting after ``epoch`` finished ones."""
    return f"training epoch {min(epoch + 1, epochs)}/{epochs}"


def _synthetic_sources(
    source_ids: list[str | None], train_ds, test_ds, indices: list[int]
) -> torch.Tensor:
    """Position in the real training cache of each synthetic image's source (-1: none).

    Refuses synthetic images made from *test* images (the test split is never trained on);
    warns about images made from training images outside this run's subset.
    """
    pos_of = {train_ds.items[i].id: k for k, i in enumerate(indices)}
    train_ids = {it.id for it in train_ds.items}
    test_ids = {it.id for it in test_ds.items} - train_ids
    leaked = [s for s in source_ids if s is not None and s in test_ids]
    if leaked:
        raise ValueError(
            f"{len(leaked)} synthetic image(s) were translated from test images (e.g. "
            f"{leaked[:3]}); the test split must never be trained on: generate from the train split"
        )
    outside = [s for s in source_ids if s is not None and s in train_ids and s not in pos_of]
    if outside:
        logger.warning(
            "%d synthetic image(s) come from real training images outside this run's subset "
            "(e.g. %s): the classifier sees information from more than its %d real images; "
            "generate with the same shots/imbalance/seed",
            len(outside), outside[:2], len(indices),
        )  # fmt: skip
    return torch.tensor([pos_of.get(s, -1) if s is not None else -1 for s in source_ids])


@torch.no_grad()
def _predict(
    accel, model, images: ImageStore, mean, std, batch: int, frozen: dict | None = None
) -> torch.Tensor:
    """Predicted class of each image of the store (no augmentation); CPU int64 (n,).

    ``frozen``: a dict kept across calls when only the head trains -- the images' features
    are computed on the first call and reused (the backbone does not change).
    """
    net = accel.unwrap_model(model)
    was_training = net.training
    net.eval()
    if frozen is not None:
        embed, head = split_head(net)
        if "features" not in frozen:
            feats = []
            for a in range(0, len(images), batch):
                x = normalize(_rows(images, a, batch).to(accel.device), mean, std)
                with accel.autocast():
                    feats.append(embed(x).float())
            frozen["features"] = torch.cat(feats) if feats else torch.zeros(0, head.in_features)
        with accel.autocast():
            preds = head(frozen["features"]).argmax(-1).cpu()
        net.train(was_training)
        return preds
    preds = []
    for a in range(0, len(images), batch):
        x = normalize(_rows(images, a, batch).to(accel.device), mean, std)
        with accel.autocast():
            preds.append(net(x).argmax(-1).cpu())
    net.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _rows(images: ImageStore, start: int, batch: int) -> torch.Tensor:
    return images.get(torch.arange(start, min(start + batch, len(images))))


def _figures(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int, groups: dict[str, list[int]]
) -> dict[str, Any]:
    """Accuracy figures of one evaluation (all in [0, 1]; per-class as a list in class order)."""
    conf = confusion_matrix(preds, labels, num_classes)
    per_class = per_class_accuracy(conf)
    by_group = group_accuracies(per_class, groups)
    return {
        "test_accuracy": accuracy(conf),
        "mean_class_accuracy": mean_class_accuracy(per_class),
        "per_class_accuracy": per_class,
        "head_accuracy": by_group["head"],
        "medium_accuracy": by_group["medium"],
        "tail_accuracy": by_group["tail"],
    }


def _checkpoints(out: Path) -> list[Path]:
    """The resumable checkpoints in ``out``, oldest first."""
    return checkpoint_files(out / "checkpoints", "ckpt")


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = _checkpoints(out)
    return ckpts[-1] if ckpts else None


#: Refuses a loadable file that is not one of our checkpoints (missing keys).
_check_state = require_keys(
    ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "steps_per_epoch"),
    "training checkpoint",
)


def _checkpoint(
    out: Path,
    accel,
    model,
    optimizer,
    scheduler,
    epoch: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    history: list[dict],
    partial: dict | None,
) -> None:
    """Write ``checkpoints/ckpt-<global step>.pt`` (complete and loadable, or absent: a full
    disk leaves the older ones intact); keep the newest two.

    ``epoch`` counts completed epochs; ``step_in_epoch`` the steps done in the next one.
    """
    if not accel.is_main_process:
        return
    global_step = epoch * steps_per_epoch + step_in_epoch
    state = {
        "model": {k: v.detach().cpu() for k, v in accel.unwrap_model(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "steps_per_epoch": steps_per_epoch,
        "rng": {"torch": torch.get_rng_state()},
        "history": history,
        "partial": partial,
    }
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, folder / f"ckpt-{global_step:09d}.pt", keep=_KEEP_CHECKPOINTS)


def _save_model(out: Path, model, cfg: TrainConfig, class_names: list[str], mean, std) -> None:
    """Final weights (safetensors; reload with ``--pretrained out/model.safetensors``) + card."""
    from safetensors.torch import save_model

    with atomic_target(out / MODEL_FILE) as tmp:
        save_model(model, str(tmp))
    _write_json(
        out / CLASSIFIER_FILE,
        {
            "format": "diffmix-classifier/1",
            "arch": cfg.arch,
            "num_classes": len(class_names),
            "class_names": class_names,
            "resolution": cfg.resolution,
            "mean": list(mean),
            "std": list(std),
            "weights": MODEL_FILE,
        },
    )


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def _tensorboard(out: Path):
    """A TensorBoard writer under ``out/tensorboard``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.debug("tensorboard is not installed; skipping TensorBoard logging")
        return None
    return SummaryWriter(str(out / "tensorboard"))
