"""Load a Stable Diffusion base model -- ``nano``, a local diffusers folder or a hub id.

One loader for every stage, so nano-SD on a CPU and SD 1.5 / 2.1 on a GPU take the same code
path. Pipelines are cached per (model, device, dtype), so the app does not reload on every
click; the img2img pipeline is made with ``from_pipe`` and shares the text-to-image weights.

    >>> pipe = load_pipeline("nano")                      # StableDiffusionPipeline (bf16 or fp32 on CPU)
    >>> i2i = load_pipeline("nano", kind="img2img")       # same UNet/VAE/text encoder objects
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: ``0``/``1``: force the CPU bf16 choice of :func:`pick_dtype` off or on.
ENV_CPU_BF16 = "DIFFMIX_CPU_BF16"
#: The shipped nano-SD folder (see ``diffmix/nano``).
NANO_DIR = Path(__file__).resolve().parent.parent / "assets" / "nano-sd"
#: Pipeline classes whose folders this loader accepts (SD 1.x / 2.x text-to-image layouts).
#: Inpainting checkpoints are refused: their UNet takes 9 input channels (latents + mask +
#: masked image), which the batched sampler of ``translate.py`` does not feed.
SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
#: What to say a refused model could be replaced with.
WORKS_WITH = (
    "use a Stable Diffusion 1.x/2.x text-to-image model (e.g. "
    "'stable-diffusion-v1-5/stable-diffusion-v1-5', 'stabilityai/stable-diffusion-2-1'), "
    "a local diffusers folder of one, or 'nano'"
)
_REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelError(ValueError):
    """A base model that cannot be used: missing, not Stable Diffusion, or not downloadable."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved base model: ``source`` is a local folder path or a hub repo id."""

    name: str  # what the user typed ("nano", a path, a hub id)
    source: str
    local: bool


def resolve_model(model: str) -> ModelRef:
    """Turn ``nano`` / a local folder / a hub id into a :class:`ModelRef`, checking local folders.

    Raises :class:`ModelError` for a missing path or a folder that is not an SD 1.x/2.x
    diffusers pipeline (the message names the path and what was expected).
    """
    if not model or not str(model).strip():
        raise ModelError("no base model given; use 'nano', a diffusers folder or a hub id")
    model = str(model).strip()
    if model == "nano":
        path = NANO_DIR
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"the embedded nano-SD is missing at {path}; restore assets/nano-sd from git "
                "or rebuild it with `python -m diffmix.nano.train --out assets/nano-sd`"
            )
        return ModelRef("nano", str(path), True)
    path = Path(model).expanduser()
    looks_like_path = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise ModelError(f"model folder {model!r} does not exist")
        _check_sd_folder(path)
        return ModelRef(model, str(path.resolve()), True)
    if model.count("/") != 1:
        raise ModelError(
            f"model {model!r} is neither 'nano', an existing folder, nor a hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    return ModelRef(model, model, False)


def _check_sd_folder(path: Path) -> None:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); "
            "save one with pipe.save_pretrained(...)"
        )
    try:
        meta = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{index} is not valid JSON: {e}") from None
    check_model_index(meta, str(path))
    missing = [c for c in _REQUIRED if c not in meta or not (path / c).is_dir()]
    if missing:
        raise ModelError(f"{path} lacks the Stable Diffusion component(s) {missing}")


def check_model_index(meta: dict, where: str) -> None:
    """Refuse a ``model_index.json`` whose pipeline this studio cannot run (SDXL, inpainting, ...).

    The message names the model's pipeline class and what works instead.
    """
    cls = meta.get("_class_name")
    if cls in SD_CLASSES:
        return
    kind = ""
    if isinstance(cls, str):
        if "XL" in cls or "text_encoder_2" in meta:
            kind = " (Stable Diffusion XL: two text encoders and size conditioning)"
        elif "Inpaint" in cls:
            kind = " (inpainting: its UNet expects a mask and a masked image)"
    raise ModelError(
        f"{where} is a {cls!r}{kind}, which this studio cannot run; {WORKS_WITH} "
        f"(accepted pipeline classes: {', '.join(sorted(SD_CLASSES))})"
    )


def check_components(pipe, where: str) -> None:
    """Refuse a loaded pipeline whose UNet is not an SD 1.x/2.x text-to-image UNet.

    Catches what ``model_index.json`` hides (a folder relabelled as ``StableDiffusionPipeline``):
    an SDXL UNet (``addition_embed_type``) fails at its first call with a ``TypeError``, an
    inpainting UNet (9 input channels) with a shape error.
    """
    unet = pipe.unet.config
    if unet.get("addition_embed_type") is not None:
        raise ModelError(
            f"{where} has an SDXL-style UNet (addition_embed_type="
            f"{unet.get('addition_embed_type')!r}), which this studio cannot run; {WORKS_WITH}"
        )
    latent = pipe.vae.config.get("latent_channels", 4)
    if unet.get("in_channels") != latent:
        raise ModelError(
            f"{where} has a UNet taking {unet.get('in_channels')} input channels, not the "
            f"VAE's {latent} (an inpainting or depth model?), which this studio cannot run; "
            f"{WORKS_WITH}"
        )


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else Apple MPS, else CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_report() -> tuple[bool, str]:
    """``(on_gpu, sentence)``: which device the app computes on, and why when it is the CPU.

    The pinned torch wheel is a CUDA 13 build: with an older NVIDIA driver (or a pre-Turing GPU)
    it cannot use the GPU and silently runs everything on the CPU. The sentence says so plainly
    and points to the README's GPU section.
    """
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(0)
        half = "bf16" if cuda_half_dtype(cap) == torch.bfloat16 else "fp16"
        return True, (
            f"GPU: {torch.cuda.get_device_name(0)} (compute capability {cap[0]}.{cap[1]}), "
            f"{half} by default"
        )
    built = torch.version.cuda
    if built is None:
        return False, (
            f"running on the CPU: this torch ({torch.__version__}) has no CUDA support; "
            "nano-SD is fine, Stable Diffusion 1.5/2.1 is very slow (see the README's GPU section)"
        )
    nvidia = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()
    if nvidia:
        return False, (
            f"running on the CPU: an NVIDIA GPU is present but this torch (a CUDA {built} build) "
            f"cannot use it -- usually a driver too old for CUDA {built} or a GPU older than "
            "that CUDA supports; update the driver or install torch's CUDA 12 build "
            "(see the README's GPU section)"
        )
    return False, (
        f"running on the CPU: no CUDA GPU is visible (torch {torch.__version__}); nano-SD is "
        "fine, Stable Diffusion 1.5/2.1 is very slow (see the README's GPU section)"
    )


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (Intel AMX-BF16, Linux ``/proc/cpuinfo``).

    There a bf16 matmul runs several times faster than fp32 (measured on a Xeon core of this
    project's machines: 1.1 TFLOP/s bf16 vs 0.17 TFLOP/s fp32), and a Stable Diffusion UNet
    about twice as fast end to end. ``DIFFMIX_CPU_BF16=0`` (or ``1``) overrides the detection;
    any other non-empty value is a ``ValueError``.
    """
    from diffmix.settings import env_flag

    forced = env_flag(os.environ, ENV_CPU_BF16)
    if forced is not None:
        return forced
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def cuda_half_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on a GPU of compute capability >= 8.0 (Ampere or newer), else fp16.

    ``torch.cuda.is_bf16_supported()`` is not the test: it also answers True where bf16 is
    only emulated (T4 = 7.5, V100 = 7.0), where it runs far slower than fp16 on the tensor
    cores. bf16 tensor-core matmuls arrived with Ampere (sm_80).
    """
    return torch.bfloat16 if capability[0] >= 8 else torch.float16


def vae_dtype(config, dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype when the rest of the model runs in ``dtype``.

    fp32 when ``dtype`` is fp16 and the VAE config says ``force_upcast`` (SD 1.x/2.x VAEs
    overflow in fp16; the config default is True), as diffusers' own pipelines upcast it;
    otherwise ``dtype``.
    """
    if dtype == torch.float16 and config.get("force_upcast", True):
        return torch.float32
    return dtype


_VAE_LOCK = threading.RLock()


@contextlib.contextmanager
def vae_precision(vae):
    """Run the VAE in :func:`vae_dtype` inside the block (fp16 + ``force_upcast``: fp32).

    As diffusers' own pipelines do (``upcast_vae``): the weights are cast to fp32 for the
    block and back afterwards. A lock serialises the blocks, so threads sharing a cached
    pipeline never see a half-cast VAE. Callers cast their inputs to ``vae.dtype`` inside.
    """
    with _VAE_LOCK:
        before = vae.dtype
        want = vae_dtype(vae.config, before)
        if want != before:
            vae.to(dtype=want)
        try:
            yield vae
        finally:
            if want != before:
                vae.to(dtype=before)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The weight dtype for inference on ``device``; ``dtype`` overrides.

    ``auto`` (default): on CUDA bf16 on Ampere or newer, else fp16 (:func:`cuda_half_dtype`);
    fp16 on Apple MPS; on a CPU bf16 when it multiplies bf16 natively
    (:func:`cpu_has_native_bf16`), else fp32.
    Accepted names: ``"auto"``, ``"fp32"``/``"float32"``, ``"fp16"``/``"float16"``,
    ``"bf16"``/``"bfloat16"``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32, "float32": torch.float32,
        "fp16": torch.float16, "float16": torch.float16,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    }  # fmt: skip
    if dtype not in (None, "auto"):
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(names)}")
        return names[dtype]
    if device.type == "cuda":
        return cuda_half_dtype(torch.cuda.get_device_capability(device))
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.RLock()
#: Held while this process builds or loads a model. A diffusers ``from_pretrained`` replaces
#: ``torch.nn.Module.register_parameter`` process-wide while it runs (accelerate's empty-weights
#: loading), so a module another thread builds meanwhile (the scoring judge, LoRA layers) would
#: get meta tensors; every in-process model build in the app holds this lock.
BUILD_LOCK = threading.RLock()


def load_base(ref: ModelRef, device: torch.device, dtype: torch.dtype):
    """A fresh (uncached) ``StableDiffusionPipeline`` of ``ref`` on ``device`` in ``dtype``,
    checked (SD 1.x/2.x components) and set to DPM-Solver multistep; :class:`ModelError` when
    it cannot be loaded. Callers that attach an adapter use this, never the shared cache."""
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, StableDiffusionPipeline

    try:
        if not ref.local:  # model_index.json alone (a small file): refuse SDXL etc. up front
            check_model_index(DiffusionPipeline.load_config(ref.source), repr(ref.source))
        with BUILD_LOCK:
            pipe = StableDiffusionPipeline.from_pretrained(
                ref.source,
                dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
            )
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        if ref.local:
            raise ModelError(f"could not load the model in {ref.source}: {e}") from e
        raise ModelError(
            f"could not load hub model {ref.source!r}: it is not in the local Hugging Face cache "
            "and could not be downloaded (the network is needed the first time; or download it "
            f"beforehand and pass its folder). Cause: {type(e).__name__}: {str(e)[:200]}"
        ) from e
    check_components(pipe, ref.source if ref.local else repr(ref.source))
    if not isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
        # The paper samples with DPM-Solver multistep; keep the model's own noise schedule.
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_pipeline(
    model: str = "nano",
    *,
    kind: str = "txt2img",
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
):
    """A cached diffusers pipeline for ``model``.

    Args:
        model: ``"nano"``, a local diffusers SD 1.x/2.x folder, or a hub id.
        kind: ``"txt2img"`` (``StableDiffusionPipeline``) or ``"img2img"``
            (``StableDiffusionImg2ImgPipeline`` sharing the same weights).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (default: best available).
        dtype: see :func:`pick_dtype` (default ``auto``: bf16 on CPUs with native bf16, else
            fp32; bf16/fp16 on GPU).

    The two most recently used base models stay in memory.
    """
    if kind not in ("txt2img", "img2img"):
        raise ValueError(f"kind must be 'txt2img' or 'img2img', got {kind!r}")
    ref = resolve_model(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    key = (ref.source, str(dev), str(dt))
    with _LOCK:
        base = _CACHE.get(key)
        if base is None:
            logger.info("loading base model %s on %s (%s)", ref.name, dev, dt)
            base = load_base(ref, dev, dt)
            _CACHE[key] = base
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    if kind == "txt2img":
        return base
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline.from_pipe(base)


def clear_cache() -> None:
    """Drop every cached pipeline (frees memory; the next call reloads)."""
    with _LOCK:
        _CACHE.clear()
