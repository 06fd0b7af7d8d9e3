"""The adapter folder (personalize's output, DESIGN.md §3): read, check, attach, fingerprint, import.

One folder contract, its reader and its writers together::

    pytorch_lora_weights.safetensors   diffusers LoRA (pipe.load_lora_weights(DIR)); absent if ti_only
    embeddings/<token>.safetensors     one {token: vector} file per class (pipe.load_textual_inversion)
    adapter.json                       base model, class_tokens, prompt_template, subset, config

- read: :func:`read_adapter` (adapter.json, its ``prompt_template`` checked by
  :func:`check_prompt_template`);
- check: :func:`require_adapter` (a personalized strategy given no adapter),
  :func:`check_adapter` (base model, class list), :func:`check_adapter_for` (also the kind a
  strategy needs: full or token-only);
- attach: :func:`attach_adapter` loads the tokens and the LoRA into a pipeline (a LoRA that
  attaches fewer layers than its file holds is refused);
- write: :func:`save_embeddings`, :func:`save_lora`, :func:`write_adapter_json`
  (used by :mod:`diffmix.personalize` and the importer);
- fingerprint: :func:`adapter_fingerprint` (recorded by generation);
- import: :func:`import_authors_checkpoint` converts the Diff-Mix authors' released checkpoint
  (:func:`convert_lora_layout` maps their LoRA keys onto the diffusers layout).

Over 400 lines because the folder's reader, writers and the importer of the authors' layout
are one contract: split apart, the checks that keep them in agreement would drift.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffmix.runs import atomic_target, atomic_write

if TYPE_CHECKING:  # torch is imported where tensors are read: reading adapter.json needs none
    import torch

    from diffmix.strategies import Strategy

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDDINGS_DIR = "embeddings"
#: The ``format`` field of adapter.json.
ADAPTER_FORMAT = "diffmix-adapter/1"


class AdapterError(ValueError):
    """An adapter that cannot be used with this model or dataset (message says why)."""


# --------------------------------------------------------------------------- read and check


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


def base_alternative(strategy: Strategy) -> str:
    """The base-model strategy doing what a personalized ``strategy`` does (``diff-mix`` ->
    ``real-mix``): named in the errors that refuse a missing adapter."""
    return strategy.name.replace("diff-", "real-").replace("ti-", "real-")


def require_adapter(strategy: Strategy, adapter: object, *, how: str) -> None:
    """Refuse a personalized ``strategy`` given no adapter (``AdapterError``, a ``ValueError``).

    ``how`` says how to pass one where the error is read (``"pass --adapter DIR"`` on the
    command line, ``"pass adapter=DIR"`` in Python).
    """
    if strategy.uses_adapter and not adapter:
        raise AdapterError(
            f"strategy {strategy.name!r} needs a personalized adapter folder (made by "
            f"`diffmix personalize`): {how}, or use {base_alternative(strategy)!r} for the "
            "base model"
        )


def check_adapter_for(
    meta: dict, strategy: Strategy, model: str, class_names: Sequence[str]
) -> None:
    """Refuse an adapter of the wrong kind, base model or class list (``AdapterError``)."""
    from diffmix.pipeline import ModelError, resolve_model

    ti_only = bool(meta.get("ti_only", False))
    if strategy.adapter_kind == "ti" and not ti_only:
        raise AdapterError(
            f"strategy {strategy.name!r} is the token-only baseline and needs an adapter trained "
            "with ti_only (diffmix personalize --ti-only); this adapter also holds a LoRA whose "
            f"tokens were trained with it -- use {strategy.name.replace('ti-', 'diff-')!r} instead"
        )
    if strategy.adapter_kind == "full" and ti_only:
        raise AdapterError(
            f"strategy {strategy.name!r} needs a full (tokens + LoRA) adapter; this one is "
            f"token-only (ti_only) -- use {strategy.name.replace('diff-', 'ti-')!r} instead"
        )
    base = meta.get("base_model")
    same_model = base == model
    if not same_model:
        try:
            src = resolve_model(model).source
            same_model = src == meta.get("base_model_source") or (
                base is not None and src == resolve_model(str(base)).source
            )
        except ModelError:
            same_model = False
    check_adapter(meta, model=None if same_model else model, class_names=list(class_names))


def attach_adapter(pipe, adapter_dir: str | os.PathLike) -> dict:
    """Load an adapter into ``pipe`` in place (tokens, then LoRA); returns its adapter.json.

    Raises :class:`AdapterError` when the adapter claims a LoRA (its file exists) but loading
    it attaches fewer LoRA layers than the file holds: diffusers only *warns* about keys it
    does not recognise, which would silently turn a "diff-mix" adapter into a token-only one.
    """
    adapter_dir = Path(adapter_dir)
    meta = read_adapter(adapter_dir)
    tokens = list(meta["class_tokens"].values())
    files = [str(embedding_file(adapter_dir, t)) for t in tokens]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise AdapterError(f"adapter {adapter_dir} lacks token embedding files: {missing[:3]}")
    # A truncated or corrupt file raises all sorts of errors deep in diffusers / safetensors
    # (SafetensorError, OSError, ValueError, RuntimeError): one AdapterError names the folder.
    from diffmix.pipeline import BUILD_LOCK  # LoRA layers built while no other load runs

    try:
        with BUILD_LOCK:
            pipe.load_textual_inversion(files)
    except Exception as e:
        raise AdapterError(
            f"adapter {adapter_dir}: its token embeddings cannot be loaded "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); personalize again"
        ) from None
    lora = adapter_dir / LORA_FILE
    if lora.is_file():
        expected = len(lora_layers(read_lora_file(lora)))
        before = _attached_lora_layers(pipe.unet)
        try:
            with BUILD_LOCK:
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
    import torch

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


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA state dict from safetensors, or a plain tensor ``.bin`` (no code unpickled)."""
    import torch

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


def embedding_file(adapter_dir: str | os.PathLike, token: str) -> Path:
    """The file holding ``token``'s embedding: ``embeddings/<token without <>>.safetensors``."""
    name = token.strip("<>").replace("/", "_")
    return Path(adapter_dir) / EMBEDDINGS_DIR / f"{name}.safetensors"


def save_embeddings(out: Path, tokens: list[str], vectors: torch.Tensor) -> None:
    """Write one ``{token: vector}`` file per token (fp32) under ``out/embeddings``."""
    from safetensors.torch import save_file

    (out / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    for tok, vec in zip(tokens, vectors, strict=True):
        save_file({tok: vec.detach().float().cpu().contiguous()}, embedding_file(out, tok))


def save_lora(out: Path, unet) -> None:
    """Write the peft LoRA of ``unet`` as diffusers' ``pytorch_lora_weights.safetensors``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)


# --------------------------------------------------------------------------- training


def write_adapter_json(out: Path, meta: dict) -> None:
    """Write ``adapter.json`` through the one atomic write (:func:`diffmix.runs.atomic_write`),
    the rename made durable: it marks a finished adapter folder."""
    atomic_write(out / ADAPTER_FILE, json.dumps(meta, indent=2) + "\n", sync_dir=True)


def adapter_fingerprint(adapter: str | os.PathLike | None) -> str | None:
    """Fingerprint of an adapter folder: adapter.json, the LoRA and the token embeddings."""
    if not adapter:
        return None
    from diffmix.synthetic import folder_fingerprint

    root = Path(adapter).expanduser()
    files = [root / ADAPTER_FILE, root / LORA_FILE, *(root / EMBEDDINGS_DIR).glob("*.safetensors")]
    return folder_fingerprint(root, [f for f in files if f.is_file()])


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
    names, tokens, vectors = _authors_embeddings(embed_path, class_names)
    out.mkdir(parents=True, exist_ok=True)
    save_embeddings(out, tokens, vectors)
    has_lora = lora_path is not None
    if has_lora:
        _import_authors_lora(Path(lora_path), out)
    meta = {
        "format": ADAPTER_FORMAT,
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
    write_adapter_json(out, meta)
    return out


def _authors_embeddings(
    embed_path: str | os.PathLike, class_names: list[str] | None
) -> tuple[list[str], list[str], torch.Tensor]:
    """``(class names, placeholder tokens, vectors)`` of the authors' embeddings file, in
    ``class_names`` order (checked) or the file's."""
    import torch

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
    return names, tokens, torch.stack([embeds[t].reshape(-1).float() for t in tokens])


def _import_authors_lora(src: Path, out: Path) -> None:
    """Convert the authors' LoRA (file or folder) to ``out/pytorch_lora_weights.safetensors``."""
    from safetensors.torch import save_file

    if src.is_dir():
        found = [src / LORA_FILE, src / "pytorch_lora_weights.bin"]
        src = next((f for f in found if f.is_file()), found[0])
    state = read_lora_file(src)
    if not state:
        raise AdapterError(f"{src} holds no tensors")
    converted = convert_lora_layout(state)
    logger.info("LoRA %s: %d layer(s) in the diffusers layout", src, len(lora_layers(converted)))
    with atomic_target(out / LORA_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp),
                  metadata={"format": "pt"})  # fmt: skip
