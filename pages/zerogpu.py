"""Hugging Face ZeroGPU support: a GPU exists only inside calls decorated with ``spaces.GPU``.

On a ZeroGPU Space (``SPACES_ZERO_GPU`` set by the platform, the ``spaces`` package installed
by it) the preview calls of the Translate page are wrapped with ``spaces.GPU(duration=...)``;
everywhere else :func:`gpu_call` returns the function unchanged, so nothing here imports
``spaces`` on a laptop or on CI.

Long jobs (personalize, generate, the few-shot experiment) run in child processes, which a
ZeroGPU slot never reaches: with a non-nano model they are refused with a message that says
they need dedicated GPU hardware (:func:`check_job_hardware`). Nano-SD jobs still run on the
Space's CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

#: Set by Hugging Face on ZeroGPU hardware.
ENV_ZERO_GPU = "SPACES_ZERO_GPU"
#: Stages whose jobs run a diffusion model (and so need a GPU for anything but nano-SD).
DIFFUSION_STAGES = frozenset({"personalize", "generate", "experiment"})
#: Longest preview a ZeroGPU slot is asked for, seconds (the platform's default limit is 60).
MAX_PREVIEW_SECONDS = 120

F = TypeVar("F", bound=Callable[..., Any])


def zero_gpu_active(env: Mapping[str, str] | None = None) -> bool:
    """True on a ZeroGPU Space: ``SPACES_ZERO_GPU`` is set and ``spaces`` is importable."""
    env = os.environ if env is None else env
    flag = env.get(ENV_ZERO_GPU, "").strip().lower()
    if flag in ("", "0", "false", "no"):
        return False
    return importlib.util.find_spec("spaces") is not None


def gpu_call(duration: int | Callable[..., int], *, env: Mapping[str, str] | None = None):
    """Decorator: ``spaces.GPU(duration=duration)`` on ZeroGPU, the identity elsewhere.

    Args:
        duration: seconds of GPU the call may hold (1-``MAX_PREVIEW_SECONDS``), or a
            function of the call's arguments returning that number (ZeroGPU's dynamic
            duration).
        env: the environment to read (default ``os.environ``; tests pass their own).
    """

    def wrap(fn: F) -> F:
        if not zero_gpu_active(env):
            return fn
        spaces = importlib.import_module("spaces")
        logger.info("ZeroGPU: %s runs on a GPU slot", getattr(fn, "__name__", fn))
        return spaces.GPU(duration=duration)(fn)

    return wrap


def preview_seconds(n_images: int, steps: int, *, per_step_s: float = 0.08) -> int:
    """A ZeroGPU duration for ``n_images`` translations of ``steps`` steps on SD 1.5 / 2.1.

    ``per_step_s`` is one batched UNet step on a ZeroGPU slice (about 0.08 s at 512 px in
    fp16, generous for batch <= 9); model loading and scoring add a fixed 20 s. The result
    is clamped to 10-``MAX_PREVIEW_SECONDS``.
    """
    est = 20.0 + per_step_s * max(1, steps) * max(1, (n_images + 7) // 8)
    return int(min(MAX_PREVIEW_SECONDS, max(10.0, est)))


def _flag(args: Sequence[str], name: str) -> str | None:
    args = list(args)
    if name in args and args.index(name) + 1 < len(args):
        return args[args.index(name) + 1]
    return None


def job_model(args: Sequence[str]) -> str:
    """The base model a ``diffmix`` job's arguments select: ``--model``, else the adapter's
    base model (``--adapter``), else the CLI default ``nano``."""
    model = _flag(args, "--model")
    if model:
        return model
    adapter = _flag(args, "--adapter")
    if adapter:
        from diffmix.adapter import AdapterError, read_adapter

        try:
            return str(read_adapter(adapter).get("base_model") or "nano")
        except AdapterError:
            return "nano"  # the job itself reports the bad adapter
    return "nano"


def check_job_hardware(
    stage: str, args: Sequence[str], env: Mapping[str, str] | None = None
) -> None:
    """Refuse a diffusion job with a non-nano model on ZeroGPU (it would never get a GPU).

    Raises:
        ValueError: naming the model and what to do instead.
    """
    if stage not in DIFFUSION_STAGES or not zero_gpu_active(env):
        return
    model = job_model(args)
    if model != "nano":
        raise ValueError(
            f"{stage} with model {model!r} needs dedicated GPU hardware: on ZeroGPU only the "
            "Translate previews get a GPU, and long jobs run in background processes. "
            "Duplicate this Space on a GPU (e.g. T4 or A10G), run the CLI on your own GPU, "
            "or use model 'nano' here (CPU)."
        )
