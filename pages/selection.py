"""The hand-off between pages: the dataset selection and the adapter the later pages use.

The Dataset page's selection and the Personalize page's chosen adapter live in the browser
(:func:`pages.common.selection_state`, :func:`pages.common.adapter_state`); the Personalize,
Translate, Generate and Train pages read them through these functions, so no page imports
another. Also the few value helpers those pages share (whole-number boxes, the default
strategy, a default target class).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmix import registry
from diffmix.settings import Settings
from pages import common

#: The stage whose runs are adapters.
ADAPTER_STAGE = "personalize"
#: Errors shown as a message in the page (anything else is a bug and is logged).
USER_ERRORS = (ValueError, PermissionError, OSError, KeyError)


# --------------------------------------------------------------------------- the selection


def selection_subset(
    selection: dict[str, Any] | None, settings: Settings | None = None
) -> dict[str, Any]:
    """Spec, shots / imbalance and subset seed of a Dataset-page selection (train split only).

    The spec is the one on this server: an upload token is mapped back to the staged file
    (:func:`pages.common.selection_spec`; ``settings`` defaults to this process's).
    """
    if not selection or not selection.get("spec"):
        raise ValueError("no dataset selected: load one on the Dataset page first")
    if selection.get("split", "train") != "train":
        raise ValueError(
            "the selection is the test split; load the train split on the Dataset page "
            "(models and classifiers learn from train images only)"
        )
    kind = selection.get("subset", "full")
    return {
        "spec": common.selection_spec(str(selection["spec"]), settings or common.get_settings()),
        "shots": int(selection["shots"]) if kind == "few-shot" else None,
        "imbalance": float(selection["imbalance"]) if kind == "long-tail" else None,
        "seed": int(selection.get("seed") or 0),
        "subset": kind,
    }


def selection_line(selection: dict[str, Any] | None) -> str:
    """One line naming the Dataset page's selection."""
    if not selection:
        return "No dataset loaded: choose one on the **Dataset** page first."
    kind = selection.get("subset", "full")
    label = {"few-shot": f"{selection.get('shots')}-shot",
             "long-tail": f"long-tail {selection.get('imbalance')}"}.get(kind, "full")  # fmt: skip
    return (
        f"Dataset: `{selection.get('name') or selection.get('spec')}` ({selection.get('split')}), "
        f"{label}, {selection.get('num_images')} images, seed {selection.get('seed')}."
    )


# --------------------------------------------------------------------------- the adapter


def adapter_meta(run_dir: Path) -> dict[str, Any] | None:
    """The adapter.json of a finished run (None while training or when unreadable)."""
    try:
        return json.loads((run_dir / "adapter.json").read_text())
    except (OSError, ValueError):
        return None


def choose_adapter(name: str | None, *, owner: str | None, settings: Settings) -> dict[str, Any]:
    """The adapter-state value for adapter run ``name`` (checked: visible and finished)."""
    if not name:
        raise ValueError("choose a finished adapter in the list first")
    path = registry.open_run(ADAPTER_STAGE, name, owner=owner, settings=settings)
    meta = adapter_meta(path)
    if meta is None:
        raise ValueError(f"run {name!r} has no adapter yet (it has not finished)")
    # Shown only (pages read the adapter.json again): no server paths on public deployments.
    base, spec = meta.get("base_model"), (meta.get("dataset") or {}).get("spec")
    if settings.public and base:
        base = _short_model(str(base))
    return {
        "name": path.name,
        "base_model": base,
        "ti_only": bool(meta.get("ti_only")),
        "classes": len(meta.get("class_tokens") or {}),
        "dataset": common.display_spec(str(spec), settings) if spec else spec,
        "fingerprint": (meta.get("dataset") or {}).get("fingerprint"),
    }


def resolve_adapter(
    state: dict[str, Any] | None, *, owner: str | None, settings: Settings
) -> tuple[Path, dict[str, Any]] | None:
    """The folder and adapter.json of the chosen adapter (None when none is chosen).

    The name is checked again (a value from the browser or an API client is never a path).
    """
    if not state or not state.get("name"):
        return None
    path = registry.open_run(ADAPTER_STAGE, str(state["name"]), owner=owner, settings=settings)
    meta = adapter_meta(path)
    if meta is None:
        raise ValueError(f"adapter {path.name!r} is not finished (no adapter.json)")
    return path, meta


def carry_adapter(
    state: dict[str, Any] | None,
    selection: dict[str, Any] | None,
    *,
    owner: str | None,
    settings: Settings,
) -> dict[str, Any] | None:
    """The adapter the later pages use, carried forward from the Personalize page.

    An adapter chosen with "Use for later pages" (or "Use none") stays. Otherwise -- nothing
    chosen yet, or the last one was carried rather than chosen -- the newest finished adapter
    trained on the selected dataset (same fingerprint) is used, marked ``carried``, so a
    newcomer who just trained one does not quietly translate with the base model.
    """
    if state and (state.get("none") or (state.get("name") and not state.get("carried"))):
        return state
    fingerprint = (selection or {}).get("fingerprint")
    if not fingerprint:
        return state
    for run in registry.list_runs(ADAPTER_STAGE, owner=owner, settings=settings):  # newest first
        meta = adapter_meta(Path(run["path"])) if run["state"] == "done" else None
        if meta and (meta.get("dataset") or {}).get("fingerprint") == fingerprint:
            try:
                return {**choose_adapter(run["name"], owner=owner, settings=settings),
                        "carried": True}  # fmt: skip
            except USER_ERRORS:
                continue
    return None if state and state.get("carried") else state


def adapter_line(state: dict[str, Any] | None) -> str:
    """What the later pages will use."""
    if state and state.get("none"):
        return "No adapter (you chose the base model on the Personalize page: real-* strategies)."
    if not state or not state.get("name"):
        return (
            "No adapter chosen: later pages use the newest adapter trained on this dataset once "
            "one has finished, the base model (real-* strategies) until then."
        )
    if state.get("carried"):
        kind = "token-only" if state.get("ti_only") else "tokens + LoRA"
        return (
            f"Adapter: `{state['name']}` ({kind}), the newest one trained on this dataset "
            "(choose another on the Personalize page)."
        )
    kind = "token-only" if state.get("ti_only") else "tokens + LoRA"
    return (
        f"Adapter for later pages: `{state['name']}` ({kind}, {state.get('classes')} classes, "
        f"base `{_short_model(str(state.get('base_model') or ''))}`)."
    )


def _short_model(model: str) -> str:
    return Path(model).name if model.startswith(("/", ".", "~")) else model


# --------------------------------------------------------------------------- shared values


def strategy_names() -> list[str]:
    """Every translation strategy, in the core's table order."""
    from diffmix.strategies import STRATEGIES

    return list(STRATEGIES)


def default_strategy(adapter: dict[str, Any] | None) -> str:
    """``diff-mix`` when an adapter is chosen (``ti-mix`` for a token-only one), else ``real-mix``."""
    if adapter and adapter.get("name"):
        return "ti-mix" if adapter.get("ti_only") else "diff-mix"
    return "real-mix"


def other_class(class_names: Sequence[str], source_class: str | None) -> str:
    """A default target: the class after the source class (wrapping)."""
    if not class_names:
        raise ValueError("the dataset has no classes")
    if source_class not in class_names:
        return class_names[0]
    return class_names[(list(class_names).index(source_class) + 1) % len(class_names)]


def whole_number(
    value: Any, name: str, default: int | None = None, *, minimum: int = 0
) -> int | None:
    """A whole-number box's value (``default`` when empty); ``ValueError`` naming ``name``."""
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number != int(number) or number < minimum:
        bound = f" >= {minimum}" if minimum > -(2**31) else ""  # no bound named for "any"
        raise ValueError(f"{name} must be a whole number{bound}, got {value!r}")
    return int(number)
