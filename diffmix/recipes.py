"""The Diff-Mix authors' settings as named recipes (``--recipe``, YAML ``recipe:``, the app).

Every value is data with the line of the authors' code it comes from. The authors' repository
is Zhicaiwww/Diff-Mix; the paper-time ``run.sh`` (and its ``scripts/*.sh``) were removed in
commit 217492a, so they are cited at its parent ``4aa0ec8`` (``git show 4aa0ec8:run.sh``).
The released code (HEAD ``a81337b``) is cited for what run.sh does not set.

A recipe fills only the fields of the config it is applied to (``strengths`` for generate,
``strength`` for the experiment, ``class_balanced`` for personalize, ...); values the user gives
explicitly (YAML keys next to ``recipe:``, command-line flags, the app's widgets) win.
The classifier itself (ResNet-50 at 448 px, 120 epochs) is *not* part of a recipe: it is a GPU
setting, chosen with ``--arch/--resolution/--epochs`` (see ``docs/fidelity.md``).

Importable without torch (the app and the CLI's parser use it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One value of a recipe and where the authors' code sets it."""

    value: Any
    source: str


_RUN = "Zhicaiwww/Diff-Mix 4aa0ec8:run.sh"
_MULT = Setting(
    5,
    "4aa0ec8:scripts/sample.sh:16 (few-shot) and :34 (conventional), --syn_dataset_mulitiplier 5; "
    "the long-tail sampler's own default is 10 (scripts/imb_script.sh:33)",
)

#: The three recipes: name -> {setting name -> Setting}. Setting names are the experiment's
#: (``strength`` is one fixed img2img strength; generate receives it as ``strengths=[s]``).
RECIPES: dict[str, dict[str, Setting]] = {
    "fewshot": {
        "shots": Setting(5, f"{_RUN}:44 (shot=5)"),
        "strength": Setting(0.7, f"{_RUN}:46 (strength=0.7, 5-shot)"),
        "gamma": Setting(0.5, f"{_RUN}:45 (gamma=0.5, 5-shot)"),
        "p": Setting(0.3, f"{_RUN}:47 (synthetic_prob=0.3, 5-shot)"),
        "multiplier": _MULT,
    },
    "conventional": {
        "strength": Setting(0.7, f"{_RUN}:24 (strength=0.7, conventional)"),
        "gamma": Setting(0.5, f"{_RUN}:23 (gamma=0.5, conventional)"),
        "p": Setting(0.1, f"{_RUN}:25 (synthetic_prob=0.1, conventional)"),
        "multiplier": _MULT,
    },
    "longtail": {
        "imbalance": Setting(0.01, f"{_RUN}:62 (imb_factor=0.01)"),
        "strength": Setting(0.7, f"{_RUN}:64 (strength=0.7, long-tail)"),
        "gamma": Setting(0.5, f"{_RUN}:63 (gamma=0.5, long-tail)"),
        "p": Setting(
            0.3,
            f"{_RUN}:65 (synthetic_prob=0.3, long-tail; their trainer reads another keyword "
            "and silently used 0.5, see docs/fidelity.md)",
        ),
        "multiplier": _MULT,
        "class_balanced": Setting(
            True,
            "Zhicaiwww/Diff-Mix a81337b:train_lora.py:825-826 (task 'imbalanced': "
            "get_weighted_sampler)",
        ),
    },
}

#: Which config field each setting fills, per stage (absent: the stage has no such field).
_FIELD = {
    "experiment": {"shots": "shots", "strength": "strength", "gamma": "gamma", "p": "p",
                   "multiplier": "multiplier"},
    "generate": {"shots": "shots", "imbalance": "imbalance", "strength": "strengths",
                 "gamma": "gamma", "multiplier": "multiplier"},
    "train": {"shots": "shots", "imbalance": "imbalance", "gamma": "gamma", "p": "p"},
    "personalize": {"shots": "shots", "imbalance": "imbalance",
                    "class_balanced": "class_balanced"},
}  # fmt: skip

STAGES = tuple(_FIELD)


def recipe_names() -> list[str]:
    """The recipe names, in menu order."""
    return list(RECIPES)


def get_recipe(name: str) -> dict[str, Setting]:
    """The recipe called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return RECIPES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def recipe_fields(name: str, stage: str) -> dict[str, Any]:
    """The config fields recipe ``name`` sets for ``stage`` (experiment, generate, train,
    personalize), e.g. ``{"strengths": [0.7], "gamma": 0.5, ...}`` for generate."""
    if stage not in _FIELD:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(_FIELD)}")
    out: dict[str, Any] = {}
    for key, setting in get_recipe(name).items():
        field = _FIELD[stage].get(key)
        if field is None:
            continue
        out[field] = [setting.value] if field == "strengths" else setting.value
    return out


def apply_recipe(
    name: str | None, stage: str, fields: dict[str, Any], explicit: Iterable[str] = ()
) -> dict[str, Any]:
    """``fields`` with recipe ``name``'s values filled in where the user set nothing.

    ``explicit`` names the fields the user set (they win even when they equal the recipe's).
    A recipe's ``shots``/``imbalance`` is skipped when the user chose the other subset kind.
    ``name=None`` returns ``fields`` unchanged. Logs each value used and its source.
    """
    if not name:
        return dict(fields)
    explicit = set(explicit) | set(fields)
    out = dict(fields)
    sources = {(_FIELD[stage].get(k)): s.source for k, s in get_recipe(name).items()}
    for field, value in recipe_fields(name, stage).items():
        if field in explicit:
            continue
        if field in ("shots", "imbalance") and ({"shots", "imbalance"} & explicit):
            continue
        out[field] = value
        logger.info("recipe %s: %s = %s (%s)", name, field, value, sources[field])
    return out


def describe(name: str) -> str:
    """A Markdown list of recipe ``name``: each value and its source (for the app and docs)."""
    return "\n".join(f"- `{k}` = {s.value} -- {s.source}" for k, s in get_recipe(name).items())
