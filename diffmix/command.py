"""The ``diffmix`` command line equivalent to a stage's config (shown by the app, used by its jobs).

One generic rule for every stage whose flags set config fields (``personalize``, ``train``,
``generate``): walk the stage's own argparse flags (:func:`diffmix.cli.build_parser`), and
emit each flag whose config field was set explicitly (pydantic's ``model_fields_set``) or
differs from the field's default. Parsing the result with the CLI and building the config the
way the CLI does (:func:`diffmix.cli._stage_fields`) gives back the same config; the tests
check that round trip. A field that differs from its default but has no flag (settable only
through ``--config`` YAML) is refused with a ``ValueError`` naming it.

``diffmix translate`` says what to translate (a dataset, a source, a target and strengths)
besides its :class:`~diffmix.translate.TranslateConfig` flags, so :func:`translate_command`
writes those item flags and takes the config's flags from :func:`command_args`.

Importable without torch (the config classes are passed in).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

#: The placeholder shown for ``--out`` when the caller names no folder.
OUT_PLACEHOLDER = "OUT_DIR"
#: The placeholder shown for ``--source`` when the source was an upload (its server path is
#: not something a user can type).
UPLOAD_PLACEHOLDER = "UPLOADED_IMAGE"
#: Stages whose flags set the fields of one config class.
STAGES = ("personalize", "train", "generate", "translate")


@lru_cache(maxsize=1)
def _stage_parsers() -> dict[str, argparse.ArgumentParser]:
    from diffmix.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sp in action.choices.values():  # a stage's config flags are added on first use
                getattr(sp, "fill_config_flags", lambda: None)()
            return dict(action.choices)
    raise RuntimeError("the diffmix parser has no subcommands")


def _stage_parser(stage: str) -> argparse.ArgumentParser:
    parsers = _stage_parsers()
    if stage not in parsers:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(sorted(parsers))}")
    return parsers[stage]


def _text(value: Any) -> str:
    """A flag value as the CLI reads it back exactly (floats by ``repr``: shortest round trip)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def command_args(stage: str, config: Any) -> list[str]:
    """The flags of ``diffmix <stage>`` that reproduce ``config`` (no dataset spec, no ``--out``).

    A flag is emitted when its field was set explicitly or differs from its default; ``None``
    and empty lists are never emitted (they are the CLI's "not given"). ``ValueError`` when a
    field that differs from its default cannot be said with a flag.
    """
    if stage not in STAGES:
        raise ValueError(f"no config command for stage {stage!r}; one of {', '.join(STAGES)}")
    fields = type(config).model_fields
    explicit = set(config.model_fields_set)
    parts: list[str] = []
    said: set[str] = set()
    for action in _stage_parser(stage)._actions:  # noqa: SLF001
        key = getattr(action, "config_key", action.dest)  # --steps of translate: a field
        if not action.option_strings or key not in fields or key in said:
            continue
        value = getattr(config, key)
        default = fields[key].get_default(call_default_factory=True)
        if value is None or value == [] or (value == default and key not in explicit):
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            if value is True:
                parts.append(flag)
                said.add(key)
            continue
        if isinstance(action, argparse._StoreFalseAction):  # noqa: SLF001
            if value is False:
                parts.append(flag)
                said.add(key)
            continue
        parts += [flag, _text(value)]
        said.add(key)
    missing = []
    for key, field in fields.items():
        if key in said or key == "dataset":
            continue
        if getattr(config, key) != field.get_default(call_default_factory=True):
            missing.append(key)
    if missing:
        raise ValueError(
            f"the {stage} settings {', '.join(missing)} have no command-line flag; "
            "save them in a YAML file and pass it with --config"
        )
    return parts


def command_for(stage: str, config: Any, out: str | None = None) -> str:
    """``diffmix <stage> SPEC <flags> --out OUT`` for ``config`` (shell-quoted, one line).

    ``out`` defaults to :data:`OUT_PLACEHOLDER`. (A spec never starts with ``-``:
    :func:`diffmix.settings.check_spec` refuses it.)
    """
    flags = command_args(stage, config)
    return shlex.join(
        ["diffmix", stage, str(config.dataset), *flags, "--out", out or OUT_PLACEHOLDER]
    )


def translate_command(
    config: Any,
    *,
    dataset: str,
    target: str,
    strengths: Sequence[float],
    seed: int = 0,
    source: str | int | None = None,
    source_class: str | None = None,
    out: str | None = None,
) -> str:
    """``diffmix translate ...`` that makes the same translations as a preview with ``config``
    (a :class:`~diffmix.translate.TranslateConfig`) from train image ``source`` (an index, or an
    image file with its ``source_class``) toward ``target`` at ``strengths`` with ``seed``.

    The config's flags (strategy, model, adapter, steps, guidance, prompt template, ...) come
    from :func:`command_args`; ``ValueError`` for a setting the CLI has no flag for."""
    parts = ["diffmix", "translate", "--dataset", dataset]
    if source is not None:
        parts += ["--source", str(source)]
        if source_class is not None and not str(source).lstrip("-").isdigit():
            parts += ["--source-class", source_class]
    parts += ["--target", target, "--strength", *[_text(float(s)) for s in strengths]]
    parts += ["--seed", str(int(seed)), *command_args("translate", config)]
    parts += ["--out", out or OUT_PLACEHOLDER]
    return shlex.join(parts)
