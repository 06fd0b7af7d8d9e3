"""One cost model behind every time estimate: personalization, generation, training.

Every estimate is *work × rate + overhead*. The work comes from a stage's config (steps × batch,
images × denoising steps actually run, epochs × images); the rates are seconds per unit of work
on this machine, and come from one of two places, which the estimate always names:

- **measured**: a short calibration on this machine of the very model at the stage's
  resolution, batch, device and dtype (:func:`calibrate_generate`, :func:`calibrate_personalize`,
  :func:`calibrate_train`: a few UNet / classifier steps, a few seconds on nano), cached in
  ``<workspace>/costs/calibration.json`` under :func:`calibration_key` (machine, stage, model,
  device, dtype, resolution, batch) so it is measured once;
- **rough guess**: :data:`ROUGH` (nano-SD / small classifiers on a 2-core CPU, measured by hand
  and written down where each came from), scaled by resolution; an uncalibrated estimate says so.

The arithmetic (:func:`personalize_seconds`, :func:`generate_seconds`, :func:`train_seconds`)
is pure and unit-tested; the calibration functions are the only ones that run a model.

Over 400 lines because the rates, the pure arithmetic and the calibrations that measure the rates
are one contract: every reader and writer of ``calibration.json`` builds its key with
:func:`calibration_key` here, so an estimate cannot read rates stored under another key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Rough seconds per unit of work when nothing was measured (nano-SD at 64 px, small
#: classifiers at 64 px, on a 2-core CPU); the sources are the hand measurements once kept in
#: the single-file ``diffmix/experiment.py`` (now the package :mod:`diffmix.experiment`):
#: - ``personalize_image``: seconds per training image of a personalization step (forward +
#:   backward; 300 steps at batch 8 took 52-58 s on an idle 2-core machine: ~0.2 s a step);
#: - ``generate_image_step``: seconds per image per denoising step run, guidance included
#:   (≈ 8 images/s at 25 steps, s = 1); ``generate_image``: per image on top (VAE, scoring, files);
#: - ``train_image`` / ``eval_image``: seconds per classifier training / evaluation image
#:   (ResNet-18 at batch 16: 70 / 300 images/s on 1 thread of a busy 2-core machine; the small CNN
#:   170 / 1000 images/s on an idle one: 50 epochs of 60 shots + 5 evaluations of 360 test
#:   images took 21-24 s a run);
#: - ``*_overhead``: seconds per run on top (model load, data, files; our rough choice).
#: Other base models than nano (Stable Diffusion at 512 px): the rates are scaled by
#: :data:`SD_FACTOR` (the Generate page's old table: 25 s vs 0.4 s per image at 25 steps on a CPU).
ROUGH: dict[str, float] = {
    "personalize_image": 0.2 / 8,
    "personalize_overhead": 10.0,
    "generate_image_step": 0.005,
    "generate_image": 0.01,
    "generate_overhead": 10.0,
    "train_image": 1 / 70.0,
    "eval_image": 1 / 300.0,
    "train_epoch": 0.2,
    "train_overhead": 8.0,
    "smallcnn_train_image": 1 / 170.0,
    "smallcnn_eval_image": 1 / 1000.0,
    "smallcnn_train_epoch": 0.05,
    "smallcnn_train_overhead": 3.0,
}
#: How much slower a Stable Diffusion step is than nano's on the same device (25 / 0.4 on CPU).
SD_FACTOR = 60.0
#: On a GPU, rough rates are this many times faster than the CPU ones (the Generate page's old
#: table: nano 0.4 s vs 0.05 s per image).
GPU_SPEEDUP = 8.0
#: Seconds to fit the scoring judge once per dataset (demo: 355 s on 1 busy thread).
REFERENCE_FIT_S = 240.0
#: A sample grid costs this many guided image-steps (personalize.GRID_MAX_CLASSES x GRID_STEPS;
#: guidance, the x 2, is inside the image-step rate).
GRID_IMAGE_STEPS = 12 * 25
#: Measured estimates are expected within this factor of the real run (tested on tiny runs).
MEASURED_FACTOR = 2.0

_LOCK = threading.Lock()


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work of one stage, and where they come from.

    ``values`` holds the stage's rates (keys as in :data:`ROUGH`, without the ``smallcnn_``
    prefix); ``measured`` is True when they came from a calibration on this machine.
    """

    values: dict[str, float]
    measured: bool
    basis: str

    def __getitem__(self, key: str) -> float:
        return self.values[key]


def machine_id() -> str:
    """This machine as a calibration sees it: host name, CPU count and torch threads."""
    import torch

    return f"{platform.node() or 'host'}/{os.cpu_count()}cpu/{torch.get_num_threads()}t"


def calibration_key(
    stage: str,
    model: str,
    *,
    device: str,
    dtype: str,
    resolution: int,
    batch: int,
    machine: str | None = None,
) -> str:
    """The cache key of a calibration: ``machine|stage|model|device|dtype|resolution px|bbatch``."""
    return "|".join(
        [machine or machine_id(), stage, model, device, dtype, f"{resolution}px", f"b{batch}"]
    )


def _store_path() -> Path:
    from diffmix import workspace

    return workspace.home() / "costs" / "calibration.json"


def load_calibration(key: str) -> dict[str, Any] | None:
    """The calibration stored under ``key`` (None when never measured)."""
    try:
        data = json.loads(_store_path().read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(key) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("values"), dict) else None


def save_calibration(key: str, values: dict[str, float]) -> None:
    """Store ``values`` (seconds per unit) under ``key``, with the time it was measured."""
    path = _store_path()
    with _LOCK:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[key] = {"values": {k: float(v) for k, v in values.items()},
                     "measured_at": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _rough(prefix: str, keys: tuple[str, ...], *, scale: float, what: str) -> Rates:
    values = {}
    for k in keys:
        name = f"{prefix}{k}" if f"{prefix}{k}" in ROUGH else k
        values[k] = ROUGH[name] * (1.0 if k.endswith("overhead") else scale)
    return Rates(values, False, f"rough guess for {what}, not measured on this machine")


def _device_scale(device: str) -> float:
    return 1.0 if device == "cpu" else 1.0 / GPU_SPEEDUP


def _is_nano(model: str) -> bool:
    return model == "nano"


def _stored_rates(key: str, keys: tuple[str, ...]) -> Rates | None:
    """The rates stored under ``key`` when all of ``keys`` are there, else None."""
    found = load_calibration(key)
    if not found or not all(k in found["values"] for k in keys):
        return None
    return Rates({k: found["values"][k] for k in keys}, True,
                 f"measured on this machine ({found.get('measured_at', '?')})")  # fmt: skip


def generate_rates(model: str, *, device: str, dtype: str, resolution: int, batch: int) -> Rates:
    """Generation rates: ``generate_image_step``, ``generate_image``, ``generate_overhead``."""
    key = calibration_key("generate", model, device=device, dtype=dtype,
                          resolution=resolution, batch=batch)  # fmt: skip
    keys = ("generate_image_step", "generate_image", "generate_overhead")
    measured = _stored_rates(key, keys)
    if measured is not None:
        return measured
    scale = (1.0 if _is_nano(model) else SD_FACTOR) * _device_scale(device)
    return _rough("", keys, scale=scale, what=f"{_short(model)} on {device.upper()}")


def personalize_rates(model: str, *, device: str, dtype: str, resolution: int, batch: int) -> Rates:
    """Personalization rates: ``personalize_image`` (per training image), ``generate_image_step``
    (for sample grids) and ``personalize_overhead``."""
    key = calibration_key("personalize", model, device=device, dtype=dtype,
                          resolution=resolution, batch=batch)  # fmt: skip
    keys = ("personalize_image", "generate_image_step", "personalize_overhead")
    measured = _stored_rates(key, keys)
    if measured is not None:
        return measured
    scale = (1.0 if _is_nano(model) else SD_FACTOR) * _device_scale(device)
    if _is_nano(model):
        scale *= (resolution / 64) ** 2
    return _rough("", keys, scale=scale, what=f"{_short(model)} on {device.upper()}")


def train_rates(arch: str, *, device: str, resolution: int, batch: int) -> Rates:
    """Classifier rates: ``train_image``, ``eval_image``, ``train_epoch``, ``train_overhead``."""
    key = calibration_key("train", arch, device=device, dtype="fp32",
                          resolution=resolution, batch=batch)  # fmt: skip
    keys = ("train_image", "eval_image", "train_epoch", "train_overhead")
    measured = _stored_rates(key, keys)
    if measured is not None:
        return measured
    prefix = "smallcnn_" if arch == "smallcnn" else ""
    scale = (resolution / 64) ** 2 * _device_scale(device)
    return _rough(prefix, keys, scale=scale, what=f"{arch} on {device.upper()}")


def _short(model: str) -> str:
    return "nano-SD" if _is_nano(model) else Path(model).name or model


# --------------------------------------------------------------------------- arithmetic


def personalize_seconds(
    rates: Rates | dict[str, float],
    *,
    steps: int,
    batch: int,
    grad_accum: int = 1,
    sample_every: int = 0,
    start: int = 0,
) -> float:
    """Seconds for personalization steps ``start..steps`` at ``batch × grad_accum`` images a
    step, plus one sample grid every ``sample_every`` steps (:data:`GRID_IMAGE_STEPS` UNet image
    evaluations each) and the overhead."""
    left = max(0, steps - start)
    grids = (steps // sample_every - start // sample_every) if sample_every else 0
    return (
        left * batch * grad_accum * rates["personalize_image"]
        + grids * GRID_IMAGE_STEPS * rates["generate_image_step"]
        + rates["personalize_overhead"]
    )


def steps_run(num_inference_steps: int, strength: float) -> int:
    """Denoising steps img2img runs at ``strength``: ``int(steps · s)``, at least 1."""
    return max(1, min(int(num_inference_steps * strength), num_inference_steps))


def generate_seconds(
    rates: Rates | dict[str, float],
    *,
    images: int,
    num_inference_steps: int,
    strengths: list[float] | tuple[float, ...],
    guidance: bool = True,
) -> float:
    """Seconds to make ``images`` images: per image, the mean denoising steps run over
    ``strengths`` × the image-step rate (half without guidance) + the per-image cost; plus the
    overhead. Guidance doubles the UNet batch, which the measured rate already includes."""
    mean_run = sum(steps_run(num_inference_steps, s) for s in strengths) / len(strengths)
    step = rates["generate_image_step"] * (1.0 if guidance else 0.5)
    return images * (mean_run * step + rates["generate_image"]) + rates["generate_overhead"]


def train_seconds(
    rates: Rates | dict[str, float],
    *,
    epochs: int,
    train_images: int,
    test_images: int,
    eval_every: int = 1,
    start_epoch: int = 0,
) -> float:
    """Seconds for epochs ``start_epoch..epochs`` of ``train_images`` each, an evaluation of
    ``test_images`` every ``eval_every`` epochs (and after the last), per-epoch checkpoints and
    the overhead."""
    left = max(0, epochs - start_epoch)
    evals = sum(1 for e in range(start_epoch + 1, epochs + 1) if e % eval_every == 0 or e == epochs)
    return (
        left * (train_images * rates["train_image"] + rates["train_epoch"])
        + evals * test_images * rates["eval_image"]
        + rates["train_overhead"]
    )


def describe(seconds: float, rates: Rates) -> str:
    """``about 3 min (measured on this machine ...)`` / ``about 3 min (rough guess ...)``."""
    text = f"about {format_duration(seconds)}"
    if rates.measured:
        return f"{text} ({rates.basis}; expect within {MEASURED_FACTOR:g}x)"
    return f"{text} ({rates.basis})"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- hardware defaults

#: Target wall time of a default personalization run on a CPU (our choice: a first run should
#: finish within ~15 minutes on a laptop; on a GPU the authors'-style defaults apply).
CPU_PERSONALIZE_TARGET_S = 15 * 60
#: Bounds of a hardware-sized default step count on a CPU.
CPU_STEPS_RANGE = (200, 1500)


def sized_steps(
    full_steps: int, step_s: float, *, target_s: float = CPU_PERSONALIZE_TARGET_S
) -> int:
    """The step count that fits ``target_s`` at ``step_s`` seconds a step, rounded down to 50,
    within :data:`CPU_STEPS_RANGE` and never above ``full_steps``."""
    lo, hi = CPU_STEPS_RANGE
    fit = int(target_s / max(step_s, 1e-9)) // 50 * 50
    return int(min(full_steps, hi, max(lo, fit)))


def sized_sample_every(steps: int, grids: int = 4) -> int:
    """Steps between sample grids: about ``grids`` grids a run (never more often than every 50
    steps), so drawing them costs a small part of the training."""
    return max(50, math.ceil(steps / max(1, grids) / 50) * 50)


# --------------------------------------------------------------------------- calibration


def _timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` (one untimed warm-up call, then ``repeats`` timed ones)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _pipe_parts(model: str, device: str | None, dtype: str | None):
    from diffmix.pipeline import load_pipeline, pick_device, pick_dtype

    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    pipe = load_pipeline(model, device=str(dev), dtype=dt)
    return pipe, dev, dt


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _measured(key: str, values: dict[str, float], summary: str) -> Rates:
    """Store a calibration's ``values`` under ``key`` (:func:`calibration_key`), log
    ``summary`` (what was measured, in words) and return them as measured rates."""
    save_calibration(key, values)
    logger.info("calibrated %s: %s", key, summary)
    return Rates(values, True, "measured on this machine (just now)")


def calibrate_generate(
    model: str = "nano",
    *,
    batch: int = 16,
    device: str | None = None,
    dtype: str | None = None,
    repeats: int = 3,
) -> Rates:
    """Measure generation on this machine: ``repeats`` guided UNet steps on ``batch`` latents at
    the model's resolution, and a VAE encode + decode of the batch; store and return the rates.
    """
    import torch

    pipe, dev, dt = _pipe_parts(model, device, dtype)
    unet, vae = pipe.unet, pipe.vae
    side = unet.config.sample_size
    res = side * pipe.vae_scale_factor
    n = max(1, min(batch, 16))
    latents = torch.randn(2 * n, unet.config.in_channels, side, side, device=dev, dtype=unet.dtype)
    ctx = torch.randn(2 * n, pipe.tokenizer.model_max_length,
                      unet.config.cross_attention_dim, device=dev, dtype=unet.dtype)  # fmt: skip
    t = torch.full((2 * n,), 500, device=dev)
    images = torch.zeros(n, 3, res, res, device=dev, dtype=vae.dtype)
    with torch.no_grad():
        step_s = _timed(lambda: unet(latents, t, ctx).sample, repeats) / n
        vae_s = _timed(lambda: vae.decode(vae.encode(images).latent_dist.mean).sample, 1) / n
    values = dict(ROUGH_OVERHEADS["generate"], generate_image_step=step_s, generate_image=vae_s)
    key = calibration_key("generate", model_key(model), device=dev.type, dtype=_dtype_name(dt),
                          resolution=res, batch=batch)  # fmt: skip
    return _measured(key, values, f"{step_s:.4f} s per image-step, {vae_s:.4f} s per image")


#: Overheads a calibration keeps from :data:`ROUGH` (a short measurement cannot see them).
ROUGH_OVERHEADS = {
    "generate": {"generate_overhead": ROUGH["generate_overhead"]},
    "personalize": {"personalize_overhead": ROUGH["personalize_overhead"]},
}


def calibrate_personalize(
    model: str = "nano",
    *,
    batch: int = 8,
    resolution: int | None = None,
    device: str | None = None,
    repeats: int = 3,
) -> Rates:
    """Measure personalization on this machine: ``repeats`` training steps (text encoder +
    UNet forward, backward through the UNet, an AdamW step) at ``batch`` × ``resolution`` px in
    fp32, as :func:`diffmix.personalize.personalize` trains on a CPU; store and return the rates.
    """
    import torch
    import torch.nn.functional as F

    pipe, dev, _ = _pipe_parts(model, device, "fp32")
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    res = resolution or unet.config.sample_size * pipe.vae_scale_factor
    side = res // pipe.vae_scale_factor
    x = torch.zeros(batch, 3, res, res, device=dev)
    ids = torch.zeros(batch, pipe.tokenizer.model_max_length, dtype=torch.long, device=dev)
    t = torch.full((batch,), 500, device=dev)
    # The gradient reaches the LoRA layers and the token rows through every UNet block: the
    # inputs' gradient makes the same backward pass without touching the cached weights.

    def step() -> None:
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            ctx = te(ids)[0]
        ctx.requires_grad_(True)
        noise = torch.randn(batch, unet.config.in_channels, side, side, device=dev)
        noisy = (z + noise).requires_grad_(True)
        loss = F.mse_loss(unet(noisy, t, ctx).sample.float(), noise)
        loss.backward()

    image_s = _timed(step, repeats) / batch
    n = 8  # a grid chunk: GRID_CHUNK classes x 2 (guidance)
    with torch.no_grad():
        lat = torch.randn(n, unet.config.in_channels, side, side, device=dev)
        ctx = torch.randn(n, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim,
                          device=dev)  # fmt: skip
        tt = torch.full((n,), 500, device=dev)
        grid_step = _timed(lambda: unet(lat, tt, ctx).sample, repeats) / n * 2
    values = dict(ROUGH_OVERHEADS["personalize"], personalize_image=image_s,
                  generate_image_step=grid_step)  # fmt: skip
    key = calibration_key("personalize", model_key(model), device=dev.type, dtype="float32",
                          resolution=res, batch=batch)  # fmt: skip
    return _measured(key, values, f"{image_s * batch:.3f} s per step at batch {batch}")


def calibrate_train(
    arch: str,
    *,
    num_classes: int,
    resolution: int,
    batch: int = 32,
    eval_batch: int = 256,
    device: str | None = None,
    repeats: int = 3,
) -> Rates:
    """Measure classifier training on this machine: ``repeats`` SGD steps of ``arch`` (forward,
    backward, update) on ``batch`` images and one evaluation batch; store and return the rates.
    """
    import torch

    from diffmix.classify.models import create_classifier
    from diffmix.pipeline import pick_device

    dev = pick_device(device)
    model = create_classifier(arch, num_classes, resolution=resolution).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution, device=dev)
    y = torch.zeros(batch, dtype=torch.long, device=dev)
    n_eval = min(eval_batch, 64)
    xe = torch.randn(n_eval, 3, resolution, resolution, device=dev)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_s = _timed(step, repeats) / batch
    model.eval()
    with torch.no_grad():
        eval_s = _timed(lambda: model(xe), 1) / n_eval
    prefix = "smallcnn_" if arch == "smallcnn" else ""
    values = {
        "train_image": train_s,
        "eval_image": eval_s,
        "train_epoch": ROUGH[f"{prefix}train_epoch"],
        "train_overhead": ROUGH[f"{prefix}train_overhead"],
    }
    key = calibration_key("train", arch, device=dev.type, dtype="fp32",
                          resolution=resolution, batch=batch)  # fmt: skip
    return _measured(key, values, f"{1 / train_s:.1f} train / {1 / eval_s:.1f} eval images/s")


# --------------------------------------------------------------------------- stage estimates


@dataclass(frozen=True)
class Estimate:
    """Seconds a stage will take and the rates behind them (:meth:`text` says which)."""

    seconds: float
    rates: Rates

    def text(self) -> str:
        return describe(self.seconds, self.rates)


def model_key(model: str) -> str:
    """The model as calibrations name it: ``nano``, a local folder's full path, or a hub id."""
    if _is_nano(model):
        return "nano"
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def model_resolution(model: str) -> int:
    """A diffusers model's native side in px (UNet sample size × VAE scale), without loading it;
    512 when its config cannot be read (a hub id not yet downloaded)."""
    try:
        from diffmix.pipeline import resolve_model

        ref = resolve_model(model)
        root = Path(ref.source)
        unet = json.loads((root / "unet" / "config.json").read_text())
        vae = json.loads((root / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 512


def device_kind(device: str | None = None) -> str:
    """``cpu``, ``cuda`` or ``mps``: the device a stage will run on."""
    from diffmix.pipeline import pick_device

    return pick_device(device).type


def _personalize_setup(model: str, batch: int, resolution: int | None, device: str | None):
    dev = device_kind(device)
    res = resolution or model_resolution(model)
    return dev, res, personalize_rates(model_key(model), device=dev, dtype="float32",
                                       resolution=res, batch=batch)  # fmt: skip


def personalize_estimate(config, *, calibrate: bool = False, start: int = 0) -> Estimate:
    """The time of a :class:`~diffmix.personalize.PersonalizeConfig` run on this machine
    (``calibrate``: measure the rates first when this machine has none for the setup)."""
    cfg = config.resolved()
    dev, res, rates = _personalize_setup(cfg.model, cfg.batch_size, cfg.resolution, None)
    if calibrate and not rates.measured:
        rates = calibrate_personalize(cfg.model, batch=cfg.batch_size, resolution=res)
    secs = personalize_seconds(rates, steps=cfg.steps, batch=cfg.batch_size,
                               grad_accum=cfg.grad_accum, sample_every=cfg.sample_every,
                               start=start)  # fmt: skip
    return Estimate(secs, rates)


def personalize_defaults(
    model: str,
    *,
    batch: int = 8,
    resolution: int | None = None,
    device: str | None = None,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Hardware-sized defaults of a personalization: ``steps``, ``sample_every``, ``source``
    (a sentence saying where they come from) and ``measured`` (False while a CPU's sizing rests
    on the rough speed, so a measurement would change it; True on a GPU, which needs none).

    On a GPU: the full default (1500 nano, 5000 SD). On a CPU: the steps that fit
    :data:`CPU_PERSONALIZE_TARGET_S` at this machine's measured speed (or the rough one), within
    :data:`CPU_STEPS_RANGE`. Sample grids: about 4 a run (:func:`sized_sample_every`).
    """
    full = 1500 if _is_nano(model) else 5000
    dev, res, rates = _personalize_setup(model, batch, resolution, device)
    measured = True
    if dev != "cpu":
        steps = full
        source = f"{full} steps: the full default for {_short(model)} on a {dev.upper()}"
    else:
        if calibrate and not rates.measured:
            rates = calibrate_personalize(model, batch=batch, resolution=res)
        step_s = batch * rates["personalize_image"]
        steps = sized_steps(full, step_s)
        measured = rates.measured
        how = "measured" if measured else "rough (not measured)"
        source = (
            f"{steps} steps: sized for this CPU (~{format_duration(CPU_PERSONALIZE_TARGET_S)} at "
            f"{step_s:.2f} s a step, {how}; the full default is {full})"
        )
    every = sized_sample_every(steps)
    return {"steps": steps, "sample_every": every, "measured": measured,
            "source": f"{source}; a sample grid every {every} steps (about 4 a run)"}  # fmt: skip


def generate_estimate(config, *, images: int, calibrate: bool = False) -> Estimate:
    """The time of a :class:`~diffmix.generate.GenerateConfig` run making ``images`` images;
    mixup / cutmix run no model (per-image cost only)."""
    from diffmix.pipeline import pick_device, pick_dtype

    dev = pick_device(config.device)
    dt = _dtype_name(pick_dtype(dev, config.dtype))
    res = model_resolution(config.model)
    key_model = model_key(config.model)
    rates = generate_rates(key_model, device=dev.type, dtype=dt, resolution=res,
                           batch=config.batch_size)  # fmt: skip
    if config.strategy in ("mixup", "cutmix"):
        return Estimate(images * 0.01 + rates["generate_overhead"], rates)
    if calibrate and not rates.measured:
        rates = calibrate_generate(config.model, batch=config.batch_size, device=config.device,
                                   dtype=config.dtype)  # fmt: skip
    strengths = list(config.strengths or [1.0 if config.strategy.endswith("-gen") else 0.7])
    secs = generate_seconds(rates, images=images, num_inference_steps=config.num_inference_steps,
                            strengths=strengths, guidance=config.guidance_scale > 1)  # fmt: skip
    if getattr(config, "score", False):
        secs += images * rates["generate_image"]  # scoring: about one more VAE-sized pass
    return Estimate(secs, rates)


def train_estimate(
    config,
    *,
    train_images: int,
    test_images: int,
    num_classes: int,
    calibrate: bool = False,
    start_epoch: int = 0,
) -> Estimate:
    """The time of a :class:`~diffmix.classify.config.TrainConfig` run (resolved: arch and
    resolution set) on ``train_images`` real images a epoch and ``test_images`` test images."""
    dev = device_kind(None)
    rates = train_rates(config.arch, device=dev, resolution=config.resolution,
                        batch=config.batch_size)  # fmt: skip
    if calibrate and not rates.measured:
        rates = calibrate_train(config.arch, num_classes=num_classes,
                                resolution=config.resolution, batch=config.batch_size,
                                eval_batch=config.eval_batch_size)  # fmt: skip
    secs = train_seconds(rates, epochs=config.epochs, train_images=train_images,
                         test_images=test_images, eval_every=config.eval_every,
                         start_epoch=start_epoch)  # fmt: skip
    return Estimate(secs, rates)


# --------------------------------------------------------------------------- from configs alone


def _subset_size(
    spec: str, *, shots, imbalance, seed: int, test_fraction=None
) -> tuple[int, int, int]:
    """(subset images, test images, classes) of a dataset spec, as the stages draw the subset."""
    from diffmix.data import load_dataset, make_subset

    kw = {} if test_fraction is None else {"test_fraction": test_fraction}
    train_ds = load_dataset(spec, split="train", **kw)
    test_ds = load_dataset(spec, split="test", **kw)
    sub = make_subset(train_ds, shots=shots, imbalance=imbalance, seed=seed)
    return len(sub.indices), len(test_ds), train_ds.num_classes


def estimate_train_config(config, *, calibrate: bool = False) -> Estimate:
    """:func:`train_estimate` of a TrainConfig, with its dataset's real sizes."""
    cfg = config.resolved()
    n, tests, classes = _subset_size(cfg.dataset, shots=cfg.shots, imbalance=cfg.imbalance,
                                     seed=cfg.subset_seed, test_fraction=cfg.test_fraction)  # fmt: skip
    return train_estimate(cfg, train_images=n, test_images=tests, num_classes=classes,
                          calibrate=calibrate)  # fmt: skip


def estimate_generate_config(config, *, calibrate: bool = False) -> Estimate:
    """:func:`generate_estimate` of a GenerateConfig: ``multiplier × subset`` images (``limit``
    caps them)."""
    cfg = config.resolved() if hasattr(config, "resolved") else config
    n, _, _ = _subset_size(cfg.dataset, shots=cfg.shots, imbalance=cfg.imbalance,
                           seed=cfg.subset_seed)  # fmt: skip
    images = cfg.multiplier * n
    if cfg.limit:
        images = min(images, cfg.limit)
    return generate_estimate(cfg, images=images, calibrate=calibrate)


# --------------------------------------------------------------------------- learning from runs


def _record(key: str, keys: tuple[str, ...], updates: dict[str, float], rough: Rates) -> None:
    """Store ``updates`` under ``key``, keeping the other stored (else rough) rates."""
    found = load_calibration(key)
    values = dict(found["values"]) if found else {}
    for k in keys:
        values.setdefault(k, rough.values[k])
    values.update(updates)
    save_calibration(key, values)


def record_personalize_run(model: str, *, batch: int, resolution: int, step_s: float) -> None:
    """A finished personalization ran ``step_s`` seconds a step (its own measured rate, checkpoints
    and grids included): the next estimates of the same setup use it. Only a CPU run is recorded
    (a GPU's rate depends on its mixed precision, which the key does not name)."""
    dev = device_kind(None)
    if dev != "cpu" or step_s <= 0:
        return
    key = calibration_key("personalize", model_key(model), device=dev, dtype="float32",
                          resolution=resolution, batch=batch)  # fmt: skip
    rough = personalize_rates(model_key(model), device=dev, dtype="float32",
                              resolution=resolution, batch=batch)  # fmt: skip
    keys = ("personalize_image", "generate_image_step", "personalize_overhead")
    _record(key, keys, {"personalize_image": step_s / batch}, rough)


def record_train_run(arch: str, *, batch: int, resolution: int, train_image_s: float) -> None:
    """A finished training run trained ``train_image_s`` seconds per image: the next estimates of
    the same setup use it."""
    if train_image_s <= 0:
        return
    dev = device_kind(None)
    key = calibration_key("train", arch, device=dev, dtype="fp32", resolution=resolution,
                          batch=batch)  # fmt: skip
    rough = train_rates(arch, device=dev, resolution=resolution, batch=batch)
    keys = ("train_image", "eval_image", "train_epoch", "train_overhead")
    _record(key, keys, {"train_image": train_image_s}, rough)


def record_generate_run(config, *, images_per_s: float) -> None:
    """A finished generation made ``images_per_s`` images a second (scoring and files
    included): the image-step and per-image rates of its setup are rescaled so the next estimate
    of the same plan predicts that speed."""
    if images_per_s <= 0 or config.strategy in ("mixup", "cutmix"):
        return
    from diffmix.pipeline import pick_device, pick_dtype

    dev = pick_device(config.device)
    dt = _dtype_name(pick_dtype(dev, config.dtype))
    res = model_resolution(config.model)
    key = calibration_key("generate", model_key(config.model), device=dev.type, dtype=dt,
                          resolution=res, batch=config.batch_size)  # fmt: skip
    rates = generate_rates(model_key(config.model), device=dev.type, dtype=dt, resolution=res,
                           batch=config.batch_size)  # fmt: skip
    strengths = list(config.strengths or [0.7])
    predicted = generate_seconds({**rates.values, "generate_overhead": 0.0}, images=1,
                                 num_inference_steps=config.num_inference_steps,
                                 strengths=strengths, guidance=config.guidance_scale > 1)  # fmt: skip
    if getattr(config, "score", False):
        predicted += rates["generate_image"]
    factor = (1.0 / images_per_s) / max(predicted, 1e-9)
    keys = ("generate_image_step", "generate_image", "generate_overhead")
    _record(key, keys, {"generate_image_step": rates["generate_image_step"] * factor,
                        "generate_image": rates["generate_image"] * factor}, rates)  # fmt: skip
