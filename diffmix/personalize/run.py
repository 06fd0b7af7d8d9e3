"""A personalization run: prepare, (resume,) train, checkpoint, draw sample grids, save.

:func:`personalize` is the numbered procedure; each step is a function of its own
(:func:`_prepare`, :func:`_resume`, :func:`_train`, :func:`_save_adapter`) over one
:class:`_Session` holding the models, the optimiser and the data of the run. The step math is
:mod:`diffmix.personalize.train`; the adapter folder written at the end is
:mod:`diffmix.adapter`; the sample grids :mod:`diffmix.personalize.samples`.

A little over 400 lines: the checkpoint writer/reader stays here, beside the steps that
share its :class:`_Session` (split apart, a resume would have to rebuild that state twice).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffmix import costs
from diffmix.adapter import (
    ADAPTER_FORMAT,
    save_embeddings,
    save_lora,
    write_adapter_json,
)
from diffmix.personalize.config import RUN_ONLY_FIELDS, PersonalizeConfig
from diffmix.personalize.samples import sample_grid
from diffmix.personalize.train import (
    TEMPLATES,
    FrozenRows,
    add_class_tokens,
    batch_prompts,
    class_balanced_weights,
    class_token,
    diffusion_loss,
    images_tensor,
    parameter_groups,
    sample_batch,
    step_generators,
)
from diffmix.progress import LossEMA, ProgressReporter
from diffmix.runs import (
    Cancelled,
    RunDir,
    checkpoint_files,
    load_newest_checkpoint,
    prune_checkpoints,
    require_keys,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass
class _Session:
    """Everything one run's steps share (made by :func:`_prepare`)."""

    cfg: PersonalizeConfig
    out: Path
    run: RunDir
    ds: Any
    subset: Any
    ref: Any
    accel: Any
    pipe: Any
    unet: Any
    text_encoder: Any
    vae: Any
    optimizer: torch.optim.Optimizer
    groups: list[dict]
    frozen: FrozenRows
    token_ids: list[int]
    tokens: list[str]
    superclass: str
    images: torch.Tensor
    labels: torch.Tensor
    size: int
    losses: list[float] = field(default_factory=list)
    ema: LossEMA = field(default_factory=LossEMA)  # the one loss figure: status, events, CLI
    start: int = 0  # the step this call started training at ...
    t0: float = 0.0  # ... and when (the measured speed feeds the next estimates)


def personalize(
    config: PersonalizeConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    return_pipeline: bool = False,
):
    """Train an adapter for ``config`` into ``out`` (also its run directory); returns ``out``.

    With ``return_pipeline`` returns ``(out, pipe)``: the in-memory pipeline holding the trained
    tokens and LoRA (to compare against the saved adapter reloaded by plain diffusers calls).

    With ``resume``, continues from the newest checkpoint in ``out/checkpoints`` that loads
    (an unreadable newer one is skipped with a warning) and ends with the same weights as an
    uninterrupted run with the same config (per-step seeded batches); the log says the step it
    resumes from, and warns when that is step 0. A cancel request (``RunDir.request_cancel``)
    stops at the next step with a checkpoint. However it stops, status.json says so
    (:meth:`RunDir.lifecycle`); a full disk raises OSError with the checkpoints kept intact.
    """
    cfg = config.resolved()
    out = Path(out)
    run = RunDir(out)
    cfg_json = _check_start(cfg, out, run, resume)
    with run.lifecycle("personalize", progress=0.0, step=0, total=cfg.steps, message="loading"):
        run.write_config(cfg_json)
        run.clear_stale_cancel()
        # 1. Data and model: the subset the data layer chooses, a fresh pipeline to train.
        s = _prepare(cfg, out, run)
        # 2. Resume from the newest checkpoint that loads.
        start = _resume(s) if resume else 0
        # 3. Train.
        _train(s, start, resumed=resume)
        # 4. Save the adapter.
        _save_adapter(s)
        run.set_status("done", progress=1.0, step=cfg.steps, message="finished")
        run.event("done", step=cfg.steps)
        if return_pipeline:
            s.pipe.unet, s.pipe.text_encoder = (
                s.accel.unwrap_model(s.unet).eval(),
                s.accel.unwrap_model(s.text_encoder).eval(),
            )
            return out, s.pipe
        return out


def _check_start(cfg: PersonalizeConfig, out: Path, run: RunDir, resume: bool) -> dict:
    """The config as JSON, after refusing a resume with other settings or a fresh run over
    an existing one."""
    old = run.read_config()
    cfg_json = json.loads(cfg.model_dump_json())
    changed = sorted(
        k
        for k in set(old or {}) | set(cfg_json)
        if k not in RUN_ONLY_FIELDS and (old or {}).get(k) != cfg_json.get(k)
    )
    if resume and old is not None and changed:
        raise ValueError(
            f"cannot resume {out}: its config differs in {changed}; use the same settings or a "
            "new --out"
        )
    if not resume and _latest_checkpoint(out) is not None:
        raise ValueError(
            f"{out} already holds a personalization; pass --resume or choose another --out"
        )
    return cfg_json


def _prepare(cfg: PersonalizeConfig, out: Path, run: RunDir) -> _Session:
    """Load the subset and a fresh copy of the base model (never the shared cached pipeline,
    fp32 master weights), add the class tokens and the LoRA, decode the images once."""
    from accelerate import Accelerator
    from diffusers import StableDiffusionPipeline

    from diffmix.data import load_dataset, make_subset
    from diffmix.pipeline import pick_device, resolve_model, vae_dtype

    ds = load_dataset(cfg.dataset, split="train")
    subset = make_subset(ds, shots=cfg.shots, imbalance=cfg.imbalance, seed=cfg.seed)
    empty = [n for n, c in subset.counts.items() if c == 0]
    if empty:
        raise ValueError(
            f"classes with no training images: {empty}; add images or drop those folders"
        )
    ref = resolve_model(cfg.model)
    device = pick_device()
    mp = auto_mixed_precision(device) if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accel = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=device.type == "cpu"
    )
    pipe = StableDiffusionPipeline.from_pretrained(
        ref.source, dtype=torch.float32, safety_checker=None
    )
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    superclass = cfg.superclass or ds.superclass or "object"
    init_words = [
        superclass if cfg.init_from == "superclass" else n.replace("_", " ") for n in ds.class_names
    ]
    token_ids = add_class_tokens(tokenizer, text_encoder, ds.class_names, init_words)
    vae.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG: same seed, same run
    groups, frozen = parameter_groups(
        tokenizer, text_encoder, unet, token_ids,
        ti_lr=cfg.ti_lr, lr=cfg.lr, rank=cfg.rank, ti_only=cfg.ti_only,
    )  # fmt: skip
    use_gc = cfg.gradient_checkpointing
    if use_gc is None:
        use_gc = device.type == "cuda"
    if use_gc:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(groups)
    size = cfg.resolution or unet.config.sample_size * pipe.vae_scale_factor
    images = images_tensor(ds, subset.indices, size)
    labels = torch.tensor([ds.items[i].label for i in subset.indices])
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
    vae.to(accel.device, dtype=vae_dtype(vae.config, weight_dtype))  # fp16: SD VAE in fp32
    unet, text_encoder, optimizer = accel.prepare(unet, text_encoder, optimizer)
    frozen.values = frozen.values.to(accel.device)
    return _Session(
        cfg=cfg, out=out, run=run, ds=ds, subset=subset, ref=ref, accel=accel, pipe=pipe,
        unet=unet, text_encoder=text_encoder, vae=vae, optimizer=optimizer, groups=groups,
        frozen=frozen, token_ids=token_ids, tokens=[class_token(i) for i in range(ds.num_classes)],
        superclass=superclass, images=images, labels=labels, size=size,
    )  # fmt: skip


def _resume(s: _Session) -> int:
    """Load the newest checkpoint that loads; say where from (warn when from step 0). Drops
    the progress events logged after it (they are made again). Returns the step."""
    out, run, cfg = s.out, s.run, s.cfg
    start = 0
    found = load_newest_checkpoint(_checkpoints(out), check=_check_state)
    if found is not None:
        ckpt, state = found
        _load_trainable(s, state)
        s.optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info("resuming from step %d of %d (%s)", start, cfg.steps, ckpt.relative_to(out))
        run.event("resume", step=start, checkpoint=ckpt.name)
    else:
        logger.warning(
            "--resume: no checkpoint in %s; starting from step 0 of %d",
            out / "checkpoints", cfg.steps,
        )  # fmt: skip
        run.event("resume", step=0, checkpoint=None)
    run.drop_events("progress", lambda ev: (ev.get("step") or 0) <= start)
    return start


def _train(s: _Session, start: int, *, resumed: bool) -> None:
    """Steps ``start .. cfg.steps``: one optimiser step each (``grad_accum`` micro-batches),
    progress every 10 steps, checkpoints and sample grids when due; a cancel request stops all
    processes at the same step, after a checkpoint."""
    cfg, run, accel = s.cfg, s.run, s.accel
    weights = class_balanced_weights(s.labels, s.ds.num_classes) if cfg.class_balanced else None
    sched = s.pipe.scheduler  # the training noise schedule (the grids may swap the pipe's)
    alphas = sched.alphas_cumprod.to(accel.device)
    s.unet.train()
    s.text_encoder.train()
    s.start, s.t0 = start, time.time()
    t0 = last_ckpt = s.t0
    run.set_status(
        message=f"training (resumed at step {start})" if resumed else "training",
        step=start, progress=start / cfg.steps,
    )  # fmt: skip
    bar = ProgressReporter(cfg.steps, initial=start, desc="personalize", unit="step")
    for step in range(start, cfg.steps):
        if _any_process(accel, run.cancel_requested()):  # all stop at the same step
            if accel.is_main_process and step > start:  # a clean step boundary: keep the work
                _checkpoint(s, step)
            raise Cancelled(f"cancelled at step {step}")
        gen, rnd = step_generators(cfg.seed, step, accel.process_index)
        for _ in range(cfg.grad_accum):
            loss = _micro_step(s, gen, rnd, weights, alphas, sched.config)
        s.losses.append(float(loss.detach()))
        loss_avg = s.ema.update(s.losses[-1])
        done = step + 1
        bar.update(1, loss=loss_avg)
        if done % 10 == 0 or done == cfg.steps:
            _report_progress(s, done, (done - start) / max(time.time() - t0, 1e-9), loss_avg)
        due = (
            done % cfg.checkpoint_every == 0
            or time.time() - last_ckpt >= 60 * cfg.checkpoint_minutes
        )
        if accel.is_main_process and due and done < cfg.steps:
            last_ckpt = time.time()
            _phase(run, "saving a checkpoint", done)
            _checkpoint(s, done)
        if accel.is_main_process and cfg.sample_every and done % cfg.sample_every == 0:
            # The other processes wait in their next step's gradient all-reduce meanwhile;
            # the grid's cost is capped (GRID_*), far below the collectives' timeout.
            _phase(run, "drawing samples", done)
            sample_grid(s.pipe, accel, s.unet, s.text_encoder, s.tokens, s.superclass,
                        s.out / "samples" / f"step-{done:06d}.png")  # fmt: skip
    bar.close()


def _micro_step(s: _Session, gen, rnd, weights, alphas, sched_config) -> torch.Tensor:
    """One micro-batch: draw, caption, loss, backward, (clip,) optimiser step; returns the loss."""
    accel, tokenizer = s.accel, s.pipe.tokenizer
    with accel.accumulate(s.unet, s.text_encoder):
        idx, x = sample_batch(s.images, s.cfg.batch_size, gen, weights)
        x = x.to(accel.device, s.vae.dtype)
        prompts = batch_prompts(idx, s.labels, s.tokens, s.superclass, rnd)
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(accel.device)  # fmt: skip
        loss = diffusion_loss(
            s.unet, s.text_encoder, s.vae, ids, x, alphas, sched_config, gen, accel
        )
        accel.backward(loss)
        if accel.sync_gradients:
            accel.clip_grad_norm_([p for g in s.groups for p in g["params"]], s.cfg.max_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.frozen.restore(accel.unwrap_model(s.text_encoder))  # only the new token rows move
    return loss


def _report_progress(s: _Session, done: int, rate: float, loss_avg: float) -> None:
    """A progress event and status: step, the loss (EMA), steps/s, ETA."""
    total = s.cfg.steps
    s.run.event("progress", step=done, total=total, loss=loss_avg, steps_per_s=rate)
    s.run.set_status(step=done, progress=done / total, loss=loss_avg,
                     eta_s=(total - done) / max(rate, 1e-9),
                     message="training", phase="training")  # fmt: skip


def _save_adapter(s: _Session) -> None:
    """Write the adapter folder (tokens, LoRA, then adapter.json, which marks it finished)
    on the main process, and keep only the newest checkpoint."""
    cfg, out, accel = s.cfg, s.out, s.accel
    _phase(s.run, "saving the adapter", cfg.steps)
    accel.wait_for_everyone()
    if not accel.is_main_process:
        return
    te = accel.unwrap_model(s.text_encoder)
    save_embeddings(out, s.tokens, te.get_input_embeddings().weight[s.token_ids])
    if not cfg.ti_only:
        save_lora(out, accel.unwrap_model(s.unet))
    meta = {
        "format": ADAPTER_FORMAT,
        "base_model": cfg.model,
        "base_model_source": s.ref.source,
        "class_tokens": dict(zip(s.ds.class_names, s.tokens, strict=True)),
        "prompt_template": TEMPLATES[0].replace("{superclass}", s.superclass),
        "superclass": s.superclass,
        "ti_only": cfg.ti_only,
        "dataset": {
            "spec": cfg.dataset,
            "fingerprint": s.ds.fingerprint,
            "class_names": s.ds.class_names,
        },
        "subset": s.subset.to_dict(),
        "resolution": s.size,
        "config": json.loads(cfg.model_dump_json()),
        "final_loss": s.ema.value,  # the same figure as the status and the CLI lines
    }
    write_adapter_json(out, meta)
    prune_checkpoints(_checkpoints(out), keep=1)  # resume needs only the newest
    if cfg.steps > s.start:  # this machine's measured speed feeds the next estimates
        step_s = (time.time() - s.t0) / (cfg.steps - s.start) / cfg.grad_accum
        costs.record_personalize_run(cfg.model, batch=cfg.batch_size, resolution=s.size,
                                     step_s=step_s)  # fmt: skip


# --------------------------------------------------------------------------- status


def _phase(run: RunDir, what: str, step: int) -> None:
    """Say in the status what the run does between training steps (drawing a sample grid,
    saving): the status showed "training 100 % · ETA 0 s" for minutes otherwise. The ETA of
    the training steps is dropped meanwhile; the next progress update brings it back."""
    run.set_status(message=f"{what} (step {step})", phase=what, eta_s=None)


def auto_mixed_precision(device: torch.device) -> str:
    """``mixed_precision="auto"``: on CUDA bf16 on Ampere or newer, else fp16; elsewhere ``no``.

    Same rule as inference (:func:`diffmix.pipeline.cuda_half_dtype`): T4/V100 report bf16 as
    "supported" but only emulate it, far slower than fp16.
    """
    from diffmix.pipeline import cuda_half_dtype

    if device.type != "cuda":
        return "no"
    half = cuda_half_dtype(torch.cuda.get_device_capability(device))
    return "bf16" if half == torch.bfloat16 else "fp16"


def _any_process(accel, flag: bool) -> bool:
    """True when ``flag`` is True on any process (one collective; ``flag`` itself alone).

    Each process reads the cancel file on its own and may see it one step apart from the
    others; stopping at different steps left the others waiting forever in the next step's
    gradient all-reduce. Agreeing collectively stops them all at the same step.
    """
    if accel.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accel.device)
    return bool(accel.reduce(t, reduction="sum").item() > 0)


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(out: Path) -> list[Path]:
    """The resumable checkpoints in ``out``, oldest first."""
    return checkpoint_files(out / "checkpoints", "step")


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = _checkpoints(out)
    return ckpts[-1] if ckpts else None


#: Refuses a loadable file that is not one of our checkpoints (missing keys).
_check_state = require_keys(("step", "embeddings", "optimizer"), "personalization checkpoint")


def _trainable_state(s: _Session) -> dict:
    """The trained tensors (token rows, LoRA) on the CPU."""
    te = s.accel.unwrap_model(s.text_encoder)
    state = {"embeddings": te.get_input_embeddings().weight[s.token_ids].detach().cpu().clone()}
    if not s.cfg.ti_only:
        from peft.utils import get_peft_model_state_dict

        lora = get_peft_model_state_dict(s.accel.unwrap_model(s.unet))
        state["lora"] = {k: v.detach().cpu().clone() for k, v in lora.items()}
    return state


def _load_trainable(s: _Session, state: dict) -> None:
    """Put a checkpoint's token rows and LoRA back into the models."""
    weight = s.accel.unwrap_model(s.text_encoder).get_input_embeddings().weight
    with torch.no_grad():
        weight[s.token_ids] = state["embeddings"].to(weight)
    if not s.cfg.ti_only:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(s.accel.unwrap_model(s.unet), state["lora"])


def _checkpoint(s: _Session, step: int) -> None:
    """Write ``checkpoints/step-XXXXXX.pt`` (complete and loadable, or absent: a full disk
    leaves the older ones intact) and keep the two newest."""
    state = _trainable_state(s)
    state["optimizer"] = s.optimizer.state_dict()
    state["step"] = step
    folder = s.out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, folder / f"step-{step:06d}.pt", keep=2)
