"""Named settings presets of a stage (kohya_ss-style): saved and loaded by the app as YAML.

A preset holds some fields of a stage's config (:data:`PRESET_FIELDS`: what the stage's page
sets; never the dataset, the synthetic folders or the adapter, which are chosen on their own
pages). It is checked by the stage's config class both when saved and when loaded, so a bad
file gives one clear ``ValueError`` naming the preset and the bad field, never a traceback.

Files live only inside the workspace: ``<workspace>/presets/<stage>/<name>.yaml`` on a private
deployment, ``<workspace>/presets/visitors/<owner>/<stage>/<name>.yaml`` on a public one (each
visitor sees their own). Names are checked (letters, digits, space, ``.``, ``_``, ``-``), never
paths. The authors' recipes (:mod:`diffmix.recipes`) are listed as built-in, read-only presets
named ``recipe:<name>``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from diffmix import recipes
from diffmix.runs import atomic_write
from diffmix.workspace import check_file_name, is_inside, name_pattern

logger = logging.getLogger(__name__)

#: The config fields a preset may hold, per stage (the page's own settings).
PRESET_FIELDS: dict[str, tuple[str, ...]] = {
    "personalize": ("model", "steps", "rank", "lr", "sample_every", "batch_size", "ti_only",
                    "class_balanced"),
    "train": ("p", "gamma", "arch", "epochs", "resolution", "batch_size", "lr", "seed",
              "num_threads", "mix", "balanced_sampling", "loss"),
    "generate": ("strategy", "multiplier", "strengths", "targets", "filter_bottom", "limit",
                 "num_inference_steps", "seed", "score"),
}  # fmt: skip
#: The config class of each stage (``module:Class``, imported when a preset is checked).
CONFIG_CLASSES = {
    "personalize": "diffmix.personalize:PersonalizeConfig",
    "train": "diffmix.classify.config:TrainConfig",
    "generate": "diffmix.generate:GenerateConfig",
}
#: Prefix of the built-in presets (the authors' recipes).
BUILTIN_PREFIX = "recipe:"
#: Largest preset file read (bytes): a preset is a handful of lines.
MAX_BYTES = 64 * 1024
#: Longest preset name (characters; spaces allowed: a preset is named like a document).
MAX_NAME = 64
_NAME_RE = name_pattern(MAX_NAME, spaces=True)
_OWNER_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def _check_stage(stage: str) -> str:
    if stage not in PRESET_FIELDS:
        raise ValueError(f"no presets for stage {stage!r}; one of {', '.join(PRESET_FIELDS)}")
    return stage


def check_name(name: str | None) -> str:
    """A preset name as typed, checked: up to 64 letters, digits, spaces, ``.``, ``_``, ``-``."""
    return check_file_name(name, "preset", max_length=MAX_NAME, spaces=True)


def preset_dir(stage: str, *, home: str | os.PathLike, public: bool, owner: str | None) -> Path:
    """The folder of ``stage``'s presets for this visitor (not created)."""
    _check_stage(stage)
    root = Path(home) / "presets"
    if not public:
        return root / stage
    if not isinstance(owner, str) or not _OWNER_RE.match(owner):
        raise ValueError("this browser has no visitor token yet: reload the page, then save again")
    return root / "visitors" / owner / stage


def _config_class(stage: str) -> type:
    import importlib

    module, name = CONFIG_CLASSES[_check_stage(stage)].split(":")
    return getattr(importlib.import_module(module), name)


def check_fields(stage: str, fields: Any, *, what: str = "preset") -> dict[str, Any]:
    """``fields`` checked as settings of ``stage``: a mapping of its :data:`PRESET_FIELDS`
    that its config class accepts. Returns them (in :data:`PRESET_FIELDS` order);
    ``ValueError`` with one line naming ``what`` and the bad field otherwise."""
    from pydantic import ValidationError

    if not isinstance(fields, dict):
        raise ValueError(f"{what} must hold a mapping of settings, got {type(fields).__name__}")
    allowed = PRESET_FIELDS[_check_stage(stage)]
    unknown = [str(k) for k in fields if k not in allowed]
    if unknown:
        raise ValueError(
            f"{what}: {', '.join(unknown)} {'is not a' if len(unknown) == 1 else 'are not'} "
            f"{stage} setting{'' if len(unknown) == 1 else 's'} of a preset "
            f"(allowed: {', '.join(allowed)})"
        )
    # Fields chosen on other pages, filled so that the config's cross-checks can run.
    context: dict[str, Any] = {}
    if stage == "train":
        context["synthetic"] = ["<synthetic folder>"]
    if stage == "generate":
        context["adapter"] = "<adapter>"
        if fields.get("targets") == "confusion":
            context["confusion"] = "<confusion.json>"
    try:
        _config_class(stage)(**context, **fields)
    except ValidationError as err:
        from diffmix.cli import validation_line

        raise ValueError(f"{what}: {validation_line(err, {})}") from None
    return {k: fields[k] for k in allowed if k in fields}


def list_presets(stage: str, *, home: str | os.PathLike, public: bool,
                 owner: str | None) -> list[str]:  # fmt: skip
    """This visitor's saved presets of ``stage`` (sorted), then the built-in recipes."""
    allowed = set(PRESET_FIELDS[_check_stage(stage)])
    builtin = [f"{BUILTIN_PREFIX}{n}" for n in recipes.recipe_names()
               if allowed & set(recipes.recipe_fields(n, stage))]  # fmt: skip
    try:
        folder = preset_dir(stage, home=home, public=public, owner=owner)
    except ValueError:
        return builtin
    saved = sorted(p.stem for p in folder.glob("*.yaml") if p.is_file() and _NAME_RE.match(p.stem))
    return [*saved, *builtin]


def _path(stage: str, name: str, *, home: str | os.PathLike, public: bool,
          owner: str | None) -> Path:  # fmt: skip
    folder = preset_dir(stage, home=home, public=public, owner=owner)
    path = folder / f"{check_name(name)}.yaml"
    if not is_inside(path, Path(home)):
        raise ValueError(f"preset {name!r} would be outside the workspace")
    return path


def save_preset(stage: str, name: str | None, fields: dict[str, Any], *,
                home: str | os.PathLike, public: bool, owner: str | None) -> Path:  # fmt: skip
    """Check ``fields`` and write them as preset ``name`` (an existing one is replaced)."""
    text = (name or "").strip()
    if text.startswith(BUILTIN_PREFIX):
        raise ValueError(f"{text!r} is a built-in recipe and read-only: save under another name")
    path = _path(stage, text, home=home, public=public, owner=owner)
    clean = check_fields(stage, fields, what=f"preset {text!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"# Diff-Mix Studio {stage} preset {text!r}\n" + yaml.safe_dump(clean, sort_keys=False)
    atomic_write(path, body)  # the one atomic write (temp file, fsync, os.replace)
    logger.info("saved %s preset %r to %s", stage, text, path)
    return path


def load_preset(stage: str, name: str | None, *, home: str | os.PathLike, public: bool,
                owner: str | None) -> dict[str, Any]:  # fmt: skip
    """The fields of preset ``name`` (a saved one, or a built-in ``recipe:<name>``), checked by
    the stage's config class; ``ValueError`` with one line for a missing or bad preset."""
    text = (name or "").strip()
    if not text:
        raise ValueError("choose a preset to load first")
    if text.startswith(BUILTIN_PREFIX):
        fields = recipes.recipe_fields(text[len(BUILTIN_PREFIX) :], stage)
        return {k: v for k, v in fields.items() if k in PRESET_FIELDS[_check_stage(stage)]}
    path = _path(stage, text, home=home, public=public, owner=owner)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"preset {text!r} is larger than {MAX_BYTES // 1024} KB: not a preset")
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no {stage} preset named {text!r}; save one first") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"preset {text!r} is not valid YAML{line}") from None
    return check_fields(stage, data if data is not None else {}, what=f"preset {text!r}")


def delete_preset(stage: str, name: str | None, *, home: str | os.PathLike, public: bool,
                  owner: str | None) -> None:  # fmt: skip
    """Remove saved preset ``name`` (built-ins cannot be removed)."""
    text = (name or "").strip()
    if text.startswith(BUILTIN_PREFIX):
        raise ValueError(f"{text!r} is a built-in recipe and read-only")
    path = _path(stage, text, home=home, public=public, owner=owner)
    try:
        path.unlink()
    except FileNotFoundError:
        raise ValueError(f"no {stage} preset named {text!r}") from None
