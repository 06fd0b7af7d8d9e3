"""Personalization: textual inversion (one token per class) + DreamBooth-style LoRA on the UNet.

The paper's first operation: adapt a text-to-image model to a dataset's fine-grained classes
so that ``"a photo of a <class_3> bird"`` draws class 3 faithfully. One new token per class is
added to the CLIP tokenizer, initialised from a word embedding (the super-class word, or the
class name), and trained jointly with a LoRA on the UNet attention projections (rank 10 by
default, as the authors' scripts: 4aa0ec8:scripts/finetune.sh ``--rank=10``). On a long-tail
subset classes are drawn uniformly (``class_balanced``), as the authors' released trainer does.
Differences from the authors' training (steps, resolution, token initialisation, captions):
docs/fidelity.md. ``ti_only`` trains the tokens alone (the DA-Fusion-style baseline).

Output (the *adapter directory* of DESIGN.md §3)::

    pytorch_lora_weights.safetensors   diffusers LoRA (pipe.load_lora_weights(DIR)); absent if ti_only
    embeddings/<token>.safetensors     one {token: vector} file per class (pipe.load_textual_inversion)
    adapter.json                       base model, class_tokens, prompt_template, subset, config
    checkpoints/step-XXXXXX.pt         resumable training state (weights_only-loadable)

It works on any SD 1.x / 2.x diffusers model, through the same code as the embedded nano-SD,
and data-parallel under ``accelerate launch`` with no code change.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from diffmix import costs
from diffmix.config import StageConfig
from diffmix.progress import LossEMA, ProgressReporter
from diffmix.runs import (
    Cancelled,
    RunDir,
    atomic_target,
    atomic_write,
    load_newest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
TEMPLATES = (
    "a photo of a {token} {superclass}",
    "a close-up photo of a {token} {superclass}",
    "a picture of a {token} {superclass}",
    "a photo of the {token} {superclass}",
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
#: Fields that do not change the trained weights: a resume may change them.
RUN_ONLY_FIELDS = ("checkpoint_every", "checkpoint_minutes")
#: Default checkpoint spacing: about ten checkpoints per run, never more than this many steps
#: apart (the former fixed interval). Our choice, so a kill loses at most ~a tenth of a run.
MAX_CHECKPOINT_EVERY = 250
#: Sample grids show at most this many classes (evenly spread over the class list, the same
#: ones at every step) and sample them this many per UNet call: a grid of CUB's 200 classes at
#: 512 px was one UNet batch of 400 (with guidance), and a grid every 50 steps cost more than
#: the training. Capped, a grid costs GRID_MAX_CLASSES x GRID_STEPS x 2 UNet image evaluations
#: (12 x 25 x 2 = 600), about as much as 50 training steps at batch 8 (forward + backward).
GRID_MAX_CLASSES = 12
GRID_CHUNK = 4
GRID_STEPS = 25


class AdapterError(ValueError):
    """An adapter that cannot be used with this model or dataset (message says why)."""


class PersonalizeConfig(StageConfig):
    """Everything a personalization run needs; saved as ``config.json`` and in adapter.json."""

    dataset: str = Field("demo", description="dataset spec (demo, folder, .zip, hub:owner/name)")
    shots: int | None = Field(None, ge=1, description="few-shot: images per class")
    imbalance: float | None = Field(None, gt=0, le=1, description="long-tail factor F in (0, 1]")
    seed: int = Field(0, description="subset and training seed")
    model: str = Field("nano", description="base model: nano, a diffusers folder or a hub id")
    steps: int | None = Field(
        None, ge=1, description="optimiser steps (default: 1500 nano, 5000 SD)"
    )
    rank: int = Field(
        10,
        ge=1,
        description="LoRA rank; 10 = the authors' scripts (4aa0ec8:scripts/finetune.sh:35)",
    )
    lr: float | None = Field(None, gt=0, description="LoRA lr (default: 1e-3 nano, 5e-5 SD)")
    ti_lr: float | None = Field(None, gt=0, description="token lr (default: 5e-3 nano, 5e-5 SD)")
    resolution: int | None = Field(
        None, ge=16, description="training side in px (default: model's)"
    )
    batch_size: int = Field(8, ge=1, description="images per step per process")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    ti_only: bool = Field(False, description="train the class tokens alone (no LoRA)")
    class_balanced: bool | None = Field(
        None,
        description="draw each class equally often; default: on for a long-tail subset "
        "(imbalance set), as the authors always do (a81337b:train_lora.py:825-826), else off",
    )
    superclass: str | None = Field(
        None, description="word after the token (default: dataset's, else 'object')"
    )
    init_from: Literal["superclass", "classname"] = "superclass"
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="steps between resumable checkpoints (default: steps/10, at most 250)",
    )
    checkpoint_minutes: float = Field(
        10.0,
        gt=0,
        description="also checkpoint when this many minutes passed since the last one "
        "(our choice: a kill loses at most ~10 min of work)",
    )
    sample_every: int = Field(
        0, ge=0, description="steps between per-class sample grids (0: never)"
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = Field(None, description="default: on for GPU, off on CPU")

    @model_validator(mode="after")
    def _one_subset_kind(self) -> PersonalizeConfig:
        if self.shots is not None and self.imbalance is not None:
            raise ValueError("choose either shots (few-shot) or imbalance (long-tail), not both")
        return self

    def resolved(self) -> PersonalizeConfig:
        """A copy with model-dependent defaults filled in."""
        nano = self.model == "nano"
        steps = self.steps or (1500 if nano else 5000)
        return self.model_copy(
            update={
                "steps": steps,
                "lr": self.lr or (1e-3 if nano else 5e-5),
                "ti_lr": self.ti_lr or (5e-3 if nano else 5e-5),
                "class_balanced": (
                    self.imbalance is not None
                    if self.class_balanced is None
                    else self.class_balanced
                ),
                "checkpoint_every": self.checkpoint_every
                or max(1, min(MAX_CHECKPOINT_EVERY, steps // 10)),
            }
        )


# --------------------------------------------------------------------------- tokens


def class_token(index: int) -> str:
    """The placeholder token of class ``index`` (``<class_0>``, ``<class_1>``, ...)."""
    return f"<class_{index}>"


def add_class_tokens(
    tokenizer, text_encoder, class_names: list[str], init_words: list[str]
) -> list[int]:
    """Add one token per class, initialised to the mean embedding of its init word's tokens.

    Returns the new token ids. Raises :class:`AdapterError` when a token already exists.
    """
    tokens = [class_token(i) for i in range(len(class_names))]
    clash = [t for t in tokens if t in tokenizer.get_vocab()]
    if clash:
        raise AdapterError(
            f"tokens {clash} already exist in the tokenizer; load a fresh base model"
        )
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for tid, word in zip(ids, init_words, strict=True):
            word_ids = (
                tokenizer(word, add_special_tokens=False).input_ids
                or tokenizer("object", add_special_tokens=False).input_ids
            )
            emb[tid] = emb[word_ids].mean(0)
    return ids


# --------------------------------------------------------------------------- adapter io


#: Fields a prompt template may name (``str.format`` keys, nothing else).
TEMPLATE_FIELDS = frozenset({"token", "superclass"})
#: Longest prompt template accepted, in characters (CLIP reads 77 tokens anyway).
MAX_TEMPLATE_CHARS = 300


def check_prompt_template(template: object, *, require_token: bool = True) -> str:
    """An adapter's ``prompt_template``, checked before it reaches ``str.format``.

    Only the fields ``{token}`` and ``{superclass}`` are allowed, with no format spec, conversion,
    attribute or index (``{token:>30000000}`` would build a 30 MB prompt, ``{token.__class__}``
    reads attributes), and ``{token}`` must appear; at most :data:`MAX_TEMPLATE_CHARS`
    characters. Raises :class:`AdapterError` naming the problem. A prompt a user typed
    (``require_token=False``) may leave ``{token}`` out.
    """
    import string

    if not isinstance(template, str):
        raise AdapterError(f"prompt_template must be a string, got {type(template).__name__}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise AdapterError(
            f"prompt_template is {len(template)} characters long, more than {MAX_TEMPLATE_CHARS}"
        )
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise AdapterError(f"prompt_template {template!r} is not a valid template: {e}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise AdapterError(
                f"prompt_template {template!r} may only use {{token}} and {{superclass}} "
                f"(no format spec, conversion or attribute), found {{{name}"
                f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            )
        names.append(name)
    if require_token and "token" not in names:
        raise AdapterError(f"prompt_template {template!r} must contain {{token}}")
    return template


def read_adapter(adapter_dir: str | os.PathLike) -> dict:
    """The adapter.json of an adapter folder (clear error when it is not one).

    Its ``prompt_template`` is checked (:func:`check_prompt_template`).
    """
    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file():
        raise AdapterError(f"{adapter_dir} is not an adapter folder (no {ADAPTER_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} cannot be read: {e}") from None
    if not isinstance(meta, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    if "prompt_template" in meta:
        check_prompt_template(meta["prompt_template"])
    return meta


def check_adapter(
    meta: dict, *, model: str | None = None, class_names: list[str] | None = None
) -> None:
    """Refuse an adapter made for another base model or another class list."""
    if model is not None and meta.get("base_model") != model:
        raise AdapterError(
            f"adapter was trained on base model {meta.get('base_model')!r}, not {model!r}; "
            "use the same model or personalize again"
        )
    if class_names is not None and list(meta.get("class_tokens", {})) != list(class_names):
        raise AdapterError(
            "adapter classes do not match the dataset: adapter has "
            f"{list(meta.get('class_tokens', {}))}, dataset has {list(class_names)}"
        )


def attach_adapter(pipe, adapter_dir: str | os.PathLike) -> dict:
    """Load an adapter into ``pipe`` in place (tokens, then LoRA); returns its adapter.json.

    Raises :class:`AdapterError` when the adapter claims a LoRA (its file exists) but loading
    it attaches fewer LoRA layers than the file holds: diffusers only *warns* about keys it
    does not recognise, which would silently turn a "diff-mix" adapter into a token-only one.
    """
    adapter_dir = Path(adapter_dir)
    meta = read_adapter(adapter_dir)
    tokens = list(meta["class_tokens"].values())
    files = [str(adapter_dir / "embeddings" / f"{_token_file(t)}.safetensors") for t in tokens]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise AdapterError(f"adapter {adapter_dir} lacks token embedding files: {missing[:3]}")
    # A truncated or corrupt file raises all sorts of errors deep in diffusers / safetensors
    # (SafetensorError, OSError, ValueError, RuntimeError): one AdapterError names the folder.
    try:
        pipe.load_textual_inversion(files)
    except Exception as e:
        raise AdapterError(
            f"adapter {adapter_dir}: its token embeddings cannot be loaded "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); personalize again"
        ) from None
    lora = adapter_dir / LORA_FILE
    if lora.is_file():
        expected = len(lora_layers(_read_lora_file(lora)))
        before = _attached_lora_layers(pipe.unet)
        try:
            pipe.load_lora_weights(str(adapter_dir))
        except Exception as e:
            raise AdapterError(
                f"adapter {adapter_dir}: {LORA_FILE} cannot be loaded "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); personalize again"
            ) from None
        attached = _attached_lora_layers(pipe.unet) - before
        if expected == 0 or attached != expected:
            raise AdapterError(
                f"adapter {adapter_dir} claims a LoRA ({LORA_FILE}, {expected} layer(s)) but "
                f"loading it attached {attached}: its keys are not in the diffusers layout; "
                "re-import it with diffmix.personalize.import_authors_checkpoint, or remove the "
                "file to use the adapter as token-only"
            )
    elif not meta.get("ti_only", False):
        raise AdapterError(
            f"adapter {adapter_dir} is not token-only (ti_only false) but has no {LORA_FILE}"
        )
    return meta


def _attached_lora_layers(unet) -> int:
    """How many (module, adapter) LoRA pairs peft has attached to ``unet``."""
    n = 0
    for module in unet.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict):
            n += len(lora_a)
    return n


# --------------------------------------------------------------------------- LoRA layouts

#: The authors' (diffusers' old ``LoRAAttnProcessor`` / ``save_attn_procs``) key:
#: ``<block path>.processor.to_{q,k,v,out}_lora.{down,up}.weight``, optionally ``unet.``-prefixed.
_AUTHORS_KEY = re.compile(
    r"^(?:unet\.)?(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\."
    r"(?P<part>down|up)\.weight$"
)
#: The diffusers layout our adapters use (``save_lora_weights`` of a peft state dict), and the
#: peft one (``lora_A``/``lora_B``): ``unet.<module path>.lora.{down,up}.weight``.
_DIFFUSERS_KEY = re.compile(r"^unet\.(?P<module>.+)\.lora\.(?P<part>down|up)\.weight$")
_PEFT_KEY = re.compile(r"^unet\.(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


def convert_lora_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UNet LoRA state dict in the diffusers layout (``unet.<module>.lora.{down,up}.weight``).

    Accepts the authors' layout (old ``LoRAAttnProcessor`` keys, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``
    -> ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight``;
    ``to_out_lora`` -> ``to_out.0``), the diffusers layout (kept) and peft's ``lora_A/lora_B``.
    Raises :class:`AdapterError` naming the keys it cannot map (any at all: a partly loaded
    LoRA is not the one trained), or a layer whose down/up pair is incomplete or mis-shaped.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        m = _AUTHORS_KEY.match(key)
        if m:
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            new = f"unet.{m['block']}.{proj}.lora.{m['part']}.weight"
        elif _DIFFUSERS_KEY.match(key):
            new = key
        elif (m := _PEFT_KEY.match(key)) is not None:
            new = f"unet.{m['module']}.lora.{'down' if m['part'] == 'A' else 'up'}.weight"
        else:
            unmapped.append(key)
            continue
        if new in out:
            raise AdapterError(f"LoRA key {key!r} maps onto {new!r} twice")
        out[new] = value
    if unmapped:
        raise AdapterError(
            f"{len(unmapped)} LoRA key(s) in no known layout (the authors' "
            f"'...processor.to_q_lora.down.weight', diffusers' '...to_q.lora.down.weight'): "
            f"{unmapped[:5]}"
        )
    lora_layers(out)  # checks pairs and shapes
    return out


def lora_layers(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module path: (down, up)}`` of a diffusers-layout UNet LoRA; ``{}`` for another layout.

    Raises :class:`AdapterError` for a module with only one of down/up, or shapes that do not
    chain (``down`` (r, in), ``up`` (out, r)).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _DIFFUSERS_KEY.match(key)
        if m:
            parts.setdefault(m["module"], {})[m["part"]] = value
    layers = {}
    for module, p in parts.items():
        if set(p) != {"down", "up"}:
            raise AdapterError(
                f"LoRA layer {module!r} lacks its {'up' if 'down' in p else 'down'} matrix"
            )
        down, up = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise AdapterError(
                f"LoRA layer {module!r}: down {tuple(down.shape)} and up {tuple(up.shape)} do "
                "not chain (expected (r, in) and (out, r))"
            )
        layers[module] = (down, up)
    return layers


def _read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA state dict from safetensors, or a plain tensor ``.bin`` (no code unpickled)."""
    try:
        if path.suffix == ".bin":
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
    except FileNotFoundError:
        raise AdapterError(f"LoRA file not found: {path}") from None
    except Exception as e:
        raise AdapterError(
            f"{path} is not a readable LoRA file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterError(f"{path} does not hold a plain dict of tensors")
    return state


def _token_file(token: str) -> str:
    return token.strip("<>").replace("/", "_")


def _save_embeddings(out: Path, tokens: list[str], vectors: torch.Tensor) -> None:
    from safetensors.torch import save_file

    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    for tok, vec in zip(tokens, vectors, strict=True):
        save_file(
            {tok: vec.detach().float().cpu().contiguous()},
            out / "embeddings" / f"{_token_file(tok)}.safetensors",
        )


def _save_lora(out: Path, unet) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)


# --------------------------------------------------------------------------- training


def _images_tensor(ds, indices: list[int], size: int) -> torch.Tensor:
    """Decode the chosen images once: uint8 tensor (n, 3, size, size), center-crop resized."""
    from PIL import Image, ImageOps

    arr = np.empty((len(indices), size, size, 3), np.uint8)
    for k, i in enumerate(indices):
        im = ImageOps.fit(ds.image(i), (size, size), Image.BICUBIC)
        arr[k] = np.asarray(im)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _phase(run: RunDir, what: str, step: int) -> None:
    """Say in the status what the run does between training steps (drawing a sample grid,
    saving): the status showed "training 100 % · ETA 0 s" for minutes otherwise. The ETA of
    the training steps is dropped meanwhile; the next progress update brings it back."""
    run.set_status(message=f"{what} (step {step})", phase=what, eta_s=None)


def _checkpoints(out: Path) -> list[Path]:
    """The resumable checkpoints in ``out``, oldest first."""
    return sorted((out / "checkpoints").glob("step-*.pt"))


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = _checkpoints(out)
    return ckpts[-1] if ckpts else None


def _check_state(state: dict) -> None:
    """Refuse a loadable file that is not one of our checkpoints (missing keys)."""
    missing = [k for k in ("step", "embeddings", "optimizer") if k not in state]
    if missing:
        raise ValueError(f"not a personalization checkpoint (no {missing})")


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
    from accelerate import Accelerator
    from diffusers import StableDiffusionPipeline

    from diffmix.data import load_dataset, make_subset
    from diffmix.pipeline import pick_device, resolve_model, vae_dtype

    cfg = config.resolved()
    out = Path(out)
    run = RunDir(out)
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
    with run.lifecycle("personalize", progress=0.0, step=0, total=cfg.steps, message="loading"):
        run.write_config(cfg_json)
        run.clear_stale_cancel()
        # 1. Data: exactly the subset the data layer chooses for (spec, shots/imbalance, seed).
        ds = load_dataset(cfg.dataset, split="train")
        subset = make_subset(ds, shots=cfg.shots, imbalance=cfg.imbalance, seed=cfg.seed)
        empty = [n for n, c in subset.counts.items() if c == 0]
        if empty:
            raise ValueError(
                f"classes with no training images: {empty}; add images or drop those folders"
            )
        ref = resolve_model(cfg.model)

        # 2. Model: a fresh copy (never the shared cached pipeline), fp32 master weights.
        device = pick_device()
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = auto_mixed_precision(device)
        accel = Accelerator(
            mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=device.type == "cpu"
        )
        pipe = StableDiffusionPipeline.from_pretrained(
            ref.source, dtype=torch.float32, safety_checker=None
        )
        tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        noise_sched = pipe.scheduler
        superclass = cfg.superclass or ds.superclass or "object"
        init_words = [
            superclass if cfg.init_from == "superclass" else n.replace("_", " ")
            for n in ds.class_names
        ]
        token_ids = add_class_tokens(tokenizer, text_encoder, ds.class_names, init_words)
        tokens = [class_token(i) for i in range(ds.num_classes)]
        for m in (vae, unet, text_encoder):
            m.requires_grad_(False)
        emb = text_encoder.get_input_embeddings()
        emb.weight.requires_grad_(True)
        frozen_rows = emb.weight.detach().clone()
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[token_ids] = False
        # Gradients reach only the new rows (so clipping and Adam see only them); the rows are
        # also restored after each step, making "only the new tokens move" exact.
        grad_mask = (~keep).float().unsqueeze(1)
        emb.weight.register_hook(lambda g: g * grad_mask.to(g))
        params = [{"params": [emb.weight], "lr": cfg.ti_lr, "weight_decay": 0.0}]
        torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG: same seed, same run
        if not cfg.ti_only:
            from peft import LoraConfig

            unet.add_adapter(
                LoraConfig(
                    r=cfg.rank,
                    lora_alpha=cfg.rank,
                    init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS,
                )
            )
            lora_params = [p for p in unet.parameters() if p.requires_grad]
            params.append({"params": lora_params, "lr": cfg.lr, "weight_decay": 1e-2})
        use_gc = (
            cfg.gradient_checkpointing
            if cfg.gradient_checkpointing is not None
            else device.type == "cuda"
        )
        if use_gc:
            unet.enable_gradient_checkpointing()
            text_encoder.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(params)
        size = cfg.resolution or unet.config.sample_size * pipe.vae_scale_factor
        images = _images_tensor(ds, subset.indices, size)
        labels = torch.tensor([ds.items[i].label for i in subset.indices])
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
        vae.to(accel.device, dtype=vae_dtype(vae.config, weight_dtype))  # fp16: SD VAE in fp32
        unet, text_encoder, optimizer = accel.prepare(unet, text_encoder, optimizer)
        frozen_rows = frozen_rows.to(accel.device)

        # 3. Resume: the newest checkpoint that loads; say where from (warn when from 0).
        start = 0
        found = load_newest_checkpoint(_checkpoints(out), check=_check_state) if resume else None
        if found is not None:
            ckpt, state = found
            _load_trainable(
                accel.unwrap_model(unet),
                accel.unwrap_model(text_encoder),
                state,
                token_ids,
                cfg.ti_only,
            )
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            logger.info("resuming from step %d of %d (%s)", start, cfg.steps, ckpt.relative_to(out))
            run.event("resume", step=start, checkpoint=ckpt.name)
        elif resume:
            logger.warning(
                "--resume: no checkpoint in %s; starting from step 0 of %d",
                out / "checkpoints", cfg.steps,
            )  # fmt: skip
            run.event("resume", step=0, checkpoint=None)
        if resume:  # progress logged after the checkpoint resumed from is made again
            run.drop_events("progress", lambda ev: (ev.get("step") or 0) <= start)

        # 4. Train.
        class_weights = None
        if cfg.class_balanced:
            counts = torch.bincount(labels, minlength=ds.num_classes).float()
            class_weights = (1.0 / counts[labels]).double()
        alphas = noise_sched.alphas_cumprod.to(accel.device)
        prediction_type = noise_sched.config.prediction_type
        scaling = vae.config.scaling_factor
        unet.train()
        text_encoder.train()
        t0, losses = time.time(), []
        last_ckpt = time.time()
        run.set_status(
            message=f"training (resumed at step {start})" if resume else "training",
            step=start, progress=start / cfg.steps,
        )  # fmt: skip
        bar = ProgressReporter(cfg.steps, initial=start, desc="personalize", unit="step")
        ema = LossEMA()
        for step in range(start, cfg.steps):
            if _any_process(accel, run.cancel_requested()):  # all stop at the same step
                if accel.is_main_process and step > start:  # a clean step boundary: keep the work
                    _checkpoint(out, step, accel.unwrap_model(unet), accel.unwrap_model(text_encoder),
                                optimizer, token_ids, cfg.ti_only)  # fmt: skip
                raise Cancelled(f"cancelled at step {step}")
            gen = torch.Generator().manual_seed(
                (cfg.seed * 1_000_003 + step) * 64 + accel.process_index
            )
            rnd = random.Random(f"{cfg.seed}-{step}-{accel.process_index}")
            for _ in range(cfg.grad_accum):
                with accel.accumulate(unet, text_encoder):
                    if class_weights is not None:
                        idx = torch.multinomial(
                            class_weights, cfg.batch_size, replacement=True, generator=gen
                        )
                    else:
                        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
                    x = images[idx].float().div(127.5).sub(1.0)
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(
                        accel.device, vae.dtype
                    )
                    prompts = [
                        rnd.choice(TEMPLATES).format(
                            token=tokens[int(labels[i])], superclass=superclass
                        )
                        for i in idx
                    ]
                    ids = tokenizer(
                        prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt",
                    ).input_ids.to(accel.device)  # fmt: skip
                    with torch.no_grad():
                        dist = vae.encode(x).latent_dist
                        z = (
                            dist.mean
                            + dist.std * torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
                        ) * scaling
                    z = z.float()
                    noise = torch.randn(z.shape, generator=gen).to(z)
                    t = torch.randint(
                        0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen
                    ).to(accel.device)
                    ac = alphas[t].view(-1, 1, 1, 1).float()
                    noisy = ac.sqrt() * z + (1 - ac).sqrt() * noise
                    target = (
                        noise
                        if prediction_type == "epsilon"
                        else ac.sqrt() * noise - (1 - ac).sqrt() * z
                    )
                    with accel.autocast():
                        ctx = text_encoder(ids)[0]
                        pred = unet(noisy, t, ctx).sample
                    loss = F.mse_loss(pred.float(), target.float())
                    accel.backward(loss)
                    if accel.sync_gradients:
                        accel.clip_grad_norm_(
                            [p for g in params for p in g["params"]], cfg.max_grad_norm
                        )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():  # only the new token rows may move
                        w = accel.unwrap_model(text_encoder).get_input_embeddings().weight
                        w[keep] = frozen_rows[keep]
            losses.append(float(loss.detach()))
            loss_avg = ema.update(losses[-1])  # the one loss figure: status, events, table, CLI
            done = step + 1
            bar.update(1, loss=loss_avg)
            if done % 10 == 0 or done == cfg.steps:
                rate = (done - start) / max(time.time() - t0, 1e-9)
                run.event("progress", step=done, total=cfg.steps, loss=loss_avg, steps_per_s=rate)
                run.set_status(step=done, progress=done / cfg.steps, loss=loss_avg,
                               eta_s=(cfg.steps - done) / max(rate, 1e-9),
                               message="training", phase="training")  # fmt: skip
            due = (
                done % cfg.checkpoint_every == 0
                or time.time() - last_ckpt >= 60 * cfg.checkpoint_minutes
            )
            if accel.is_main_process and due and done < cfg.steps:
                last_ckpt = time.time()
                _phase(run, "saving a checkpoint", done)
                _checkpoint(
                    out,
                    done,
                    accel.unwrap_model(unet),
                    accel.unwrap_model(text_encoder),
                    optimizer,
                    token_ids,
                    cfg.ti_only,
                )
            if accel.is_main_process and cfg.sample_every and done % cfg.sample_every == 0:
                # The other processes wait in their next step's gradient all-reduce meanwhile;
                # the grid's cost is capped (GRID_*), far below the collectives' timeout.
                _phase(run, "drawing samples", done)
                _sample_grid(
                    pipe,
                    accel,
                    unet,
                    text_encoder,
                    tokens,
                    superclass,
                    out / "samples" / f"step-{done:06d}.png",
                )

        bar.close()

        # 5. Save the adapter.
        _phase(run, "saving the adapter", cfg.steps)
        accel.wait_for_everyone()
        if accel.is_main_process:
            te = accel.unwrap_model(text_encoder)
            vectors = te.get_input_embeddings().weight[token_ids]
            _save_embeddings(out, tokens, vectors)
            if not cfg.ti_only:
                _save_lora(out, accel.unwrap_model(unet))
            meta = {
                "format": "diffmix-adapter/1",
                "base_model": cfg.model,
                "base_model_source": ref.source,
                "class_tokens": dict(zip(ds.class_names, tokens, strict=True)),
                "prompt_template": TEMPLATES[0].replace("{superclass}", superclass),
                "superclass": superclass,
                "ti_only": cfg.ti_only,
                "dataset": {
                    "spec": cfg.dataset,
                    "fingerprint": ds.fingerprint,
                    "class_names": ds.class_names,
                },
                "subset": subset.to_dict(),
                "resolution": size,
                "config": json.loads(cfg.model_dump_json()),
                "final_loss": ema.value,  # the same figure as the status and the CLI lines
            }
            # adapter.json marks a finished adapter: atomic, and the rename made durable
            atomic_write(out / ADAPTER_FILE, json.dumps(meta, indent=2) + "\n", sync_dir=True)
            prune_checkpoints(_checkpoints(out), keep=1)  # resume needs only the newest
            if cfg.steps > start:  # this machine's measured speed feeds the next estimates
                step_s = (time.time() - t0) / (cfg.steps - start) / cfg.grad_accum
                costs.record_personalize_run(cfg.model, batch=cfg.batch_size, resolution=size,
                                             step_s=step_s)  # fmt: skip
        run.set_status("done", progress=1.0, step=cfg.steps, message="finished")
        run.event("done", step=cfg.steps)
        if return_pipeline:
            pipe.unet, pipe.text_encoder = (
                accel.unwrap_model(unet).eval(),
                accel.unwrap_model(text_encoder).eval(),
            )
            return out, pipe
        return out


def _trainable_state(unet, text_encoder, token_ids: list[int], ti_only: bool) -> dict:
    state = {
        "embeddings": text_encoder.get_input_embeddings().weight[token_ids].detach().cpu().clone()
    }
    if not ti_only:
        from peft.utils import get_peft_model_state_dict

        state["lora"] = {
            k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()
        }
    return state


def _load_trainable(unet, text_encoder, state: dict, token_ids: list[int], ti_only: bool) -> None:
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[token_ids] = state["embeddings"].to(
            text_encoder.get_input_embeddings().weight
        )
    if not ti_only:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(unet, state["lora"])


def _checkpoint(
    out: Path, step: int, unet, text_encoder, optimizer, token_ids: list[int], ti_only: bool
) -> None:
    """Write ``checkpoints/step-XXXXXX.pt`` (complete and loadable, or absent: a full disk
    leaves the older ones intact) and keep the two newest."""
    state = _trainable_state(unet, text_encoder, token_ids, ti_only)
    state["optimizer"] = optimizer.state_dict()
    state["step"] = step
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, folder / f"step-{step:06d}.pt", keep=2)


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


def grid_classes(num_classes: int, limit: int | None = None) -> list[int]:
    """The classes a sample grid shows: all when ``num_classes <= limit`` (default
    :data:`GRID_MAX_CLASSES`), else ``limit`` indices spread evenly over
    ``0 .. num_classes - 1`` (first and last included)."""
    limit = GRID_MAX_CLASSES if limit is None else limit
    if num_classes <= limit:
        return list(range(num_classes))
    if limit == 1:
        return [0]
    return sorted({round(i * (num_classes - 1) / (limit - 1)) for i in range(limit)})


@torch.no_grad()
def _sample_grid(
    pipe, accel, unet, text_encoder, tokens: list[str], superclass: str, path: Path
) -> None:
    """One sample per class (fixed seeds) with the current weights, saved as a grid.

    At most :data:`GRID_MAX_CLASSES` classes (:func:`grid_classes`), :data:`GRID_CHUNK` per
    UNet call, through the studio's batched sampler under the training's autocast; latents
    are decoded in the VAE's own dtype (a bf16/fp16 VAE under mixed precision).
    """
    from PIL import Image

    from diffmix.translate import denoise_batch

    was_training = unet.training
    unet.eval()
    text_encoder.eval()
    pipe.unet, pipe.text_encoder = accel.unwrap_model(unet), accel.unwrap_model(text_encoder)
    try:
        shown = grid_classes(len(tokens))
        images = []
        for k in range(0, len(shown), GRID_CHUNK):
            chunk = shown[k : k + GRID_CHUNK]
            prompts = [TEMPLATES[0].format(token=tokens[c], superclass=superclass) for c in chunk]
            gens = [torch.Generator().manual_seed(c) for c in chunk]  # same grid on any device
            with accel.autocast():
                pix = denoise_batch(
                    pipe, prompts, [None] * len(chunk), [1.0] * len(chunk), gens,
                    num_inference_steps=GRID_STEPS, guidance_scale=7.5,
                )  # fmt: skip
            images += [
                Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                for p in pix.float().clamp(0, 1)
            ]
    finally:
        if was_training:
            unet.train()
            text_encoder.train()
    side = images[0].width
    cols = min(len(images), 12)
    grid = Image.new("RGB", (cols * side, math.ceil(len(images) / cols) * side))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * side, (i // cols) * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


# --------------------------------------------------------------------------- importer


def import_authors_checkpoint(
    embed_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base_model: str,
    lora_path: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    superclass: str = "object",
) -> Path:
    """Convert the Diff-Mix authors' released checkpoint into an adapter folder.

    ``embed_path`` is their ``learned_embeds-steps-last.bin`` (a torch pickle holding
    ``learned_embeds_dict`` {placeholder: vector} and ``name2placeholder`` {class: placeholder});
    it is read with ``torch.load(weights_only=True)``, which refuses arbitrary objects, so a
    tampered file cannot run code. ``lora_path`` is their ``pytorch_lora_weights.safetensors``
    (or ``.bin``, or its folder), saved by ``unet.save_attn_procs`` with the old
    ``LoRAAttnProcessor`` keys (a81337b:train_lora.py:675-697, 1188): converted to the diffusers
    layout by :func:`convert_lora_layout`, which fails on any key it cannot map (diffusers
    would drop them with a warning and run the adapter as token-only). ``class_names`` (the dataset's, in label order) reorders and checks the
    classes; by default the checkpoint's order is kept. Class names are normalised as the
    authors do ('/' and '_' become spaces) when matching.
    """
    out = Path(out)
    try:
        ckpt = torch.load(embed_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError and friends: not a plain tensor checkpoint
        raise AdapterError(
            f"{embed_path} is not a plain tensor checkpoint (refused to unpickle it safely: "
            f"{type(e).__name__}: {str(e)[:160]})"
        ) from None
    if (
        not isinstance(ckpt, dict)
        or "learned_embeds_dict" not in ckpt
        or "name2placeholder" not in ckpt
    ):
        raise AdapterError(
            f"{embed_path} lacks 'learned_embeds_dict' / 'name2placeholder'; is it a Diff-Mix checkpoint?"
        )
    embeds: dict = ckpt["learned_embeds_dict"]
    norm = lambda s: str(s).replace("/", " ").replace("_", " ").strip()  # noqa: E731
    name2ph = {norm(k): v for k, v in ckpt["name2placeholder"].items()}
    missing_vec = [ph for ph in name2ph.values() if ph not in embeds]
    if missing_vec:
        raise AdapterError(f"{embed_path}: no embedding for placeholders {missing_vec[:5]}")
    if class_names is None:
        order = list(name2ph)
        names = order
    else:
        unknown = [c for c in class_names if norm(c) not in name2ph]
        if unknown:
            raise AdapterError(
                f"classes {unknown[:5]} are not in the checkpoint (it has {list(name2ph)[:5]}...)"
            )
        order = [norm(c) for c in class_names]
        names = list(class_names)
    tokens = [name2ph[n] for n in order]
    vectors = torch.stack([embeds[t].reshape(-1).float() for t in tokens])
    out.mkdir(parents=True, exist_ok=True)
    _save_embeddings(out, tokens, vectors)
    has_lora = False
    if lora_path is not None:
        from safetensors.torch import save_file

        src = Path(lora_path)
        if src.is_dir():
            found = [src / LORA_FILE, src / "pytorch_lora_weights.bin"]
            src = next((f for f in found if f.is_file()), found[0])
        state = _read_lora_file(src)
        if not state:
            raise AdapterError(f"{src} holds no tensors")
        converted = convert_lora_layout(state)
        logger.info(
            "LoRA %s: %d layer(s) in the diffusers layout", src, len(lora_layers(converted))
        )
        with atomic_target(out / LORA_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp),
                      metadata={"format": "pt"})  # fmt: skip
        has_lora = True
    meta = {
        "format": "diffmix-adapter/1",
        "base_model": base_model,
        "class_tokens": dict(zip(names, tokens, strict=True)),
        "prompt_template": f"a photo of a {{token}} {superclass}",
        "superclass": superclass,
        "ti_only": not has_lora,
        "imported_from": {
            "embeddings": str(embed_path),
            "lora": str(lora_path) if lora_path else None,
        },
    }
    atomic_write(out / ADAPTER_FILE, json.dumps(meta, indent=2) + "\n", sync_dir=True)
    return out
