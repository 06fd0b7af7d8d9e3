"""One config -> command-line path: a stage's flags are generated from its pydantic config.

A stage lists the config fields it exposes in a small table of :class:`Flag` rows (only what
cannot be derived: a flag name that is not ``--field-name`` such as ``--steps`` for
``num_inference_steps``, a metavar, an on/off switch, a list type, a few help words); the
type, the choices (``Literal`` fields) and the description come from the config field, and
``--help`` shows the field's default (:class:`diffmix.cli.help.DefaultsHelpFormatter`). Every generated flag
defaults to None, so a flag the user did not give never hides a ``--config`` YAML key; the
config applies its own default. :func:`fields_from_args` turns parsed flags into config
fields, :func:`to_argv` is its inverse (config fields -> the shortest command line).

Some config classes import torch (personalize, train, translate), so a stage's flags are added
the first time that stage's parser is used (parsed, or asked for --help): ``diffmix data`` and
``diffmix status`` stay light.

A little over 400 lines: the flag table, its reader (:func:`fields_from_args`) and its inverse
(:func:`to_argv`) stay together so they remain inverses.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The config class behind each stage's flags (``module:Class``, imported on first use).
STAGE_CONFIGS = {
    "personalize": "diffmix.personalize:PersonalizeConfig",
    "train": "diffmix.classify.config:TrainConfig",
    "generate": "diffmix.generate:GenerateConfig",
    "experiment": "diffmix.experiment:ExperimentConfig",
    "translate": "diffmix.translate:TranslateConfig",
}

#: Help placeholder of a flag documented by its config field (not whitespace: argparse skips
#: blank help texts before the formatter sees them).
FROM_CONFIG = "\x00"


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a stage: a config field and what cannot be derived from it.

    ``dest`` is the config field (or, with ``field=False``, a setting that is not one, e.g.
    ``--strength`` of generate, which the stage turns into a field itself). ``flag`` defaults
    to ``--dest-with-dashes``; ``type``/``choices`` to the field's annotation; ``help`` to
    the field's description (its default is appended by --help); ``action`` is
    ``store_true`` / ``store_false`` for switches (default for a bool field: store_true);
    ``group`` names a mutually exclusive group.
    """

    dest: str
    flag: str | None = None
    metavar: str | None = None
    help: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    group: str | None = None
    field: bool = True
    #: the config field when it is not ``dest`` (``--steps`` of translate: ``args.steps``)
    key: str | None = None
    #: turns the flag's text into the field's value after parsing (a ``ValueError`` becomes
    #: the CLI's one-line error), where an argparse ``type`` would print a usage error
    convert: Callable[[str], Any] | None = None

    @property
    def target(self) -> str:
        """The config field this flag sets."""
        return self.key or self.dest

    @property
    def name(self) -> str:
        return self.flag or "--" + self.dest.replace("_", "-")


#: Each stage's flag table (filled by the stage modules when they are imported).
STAGE_FLAGS: dict[str, tuple[Flag, ...]] = {}
#: Each stage's settings that are not config-field flags (see :func:`add_config_flags`).
STAGE_EXTRAS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}
STAGE_EXTRA_KEYS: dict[str, tuple[str, ...]] = {}


def config_class(stage: str) -> type:
    """The pydantic config class of ``stage`` (imports its module)."""
    module, name = STAGE_CONFIGS[stage].split(":")
    return getattr(importlib.import_module(module), name)


def _scalar(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``(python type, choices)`` of a field annotation (``X | None`` unwrapped)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _scalar(inner[0]) if len(inner) == 1 else (str, None)
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), tuple(args)
    return annotation, None


def _add_flag(target: Any, row: Flag, field: Any) -> None:
    """Add ``row`` to a parser (or group), typed from the config ``field`` where it has one."""
    kw: dict[str, Any] = {"dest": row.dest, "default": None, "help": row.help or FROM_CONFIG}
    py_type, choices = _scalar(field.annotation) if field is not None else (None, None)
    action = row.action or ("store_true" if py_type is bool else None)
    if action:
        kw["action"] = action
    else:
        kw["type"] = row.type or (py_type if py_type in (int, float) else str)
        if row.choices or choices:
            kw["choices"] = row.choices or choices
        if row.metavar:
            kw["metavar"] = row.metavar
    action = target.add_argument(row.name, **kw)
    action.config_key = row.target  # type: ignore[attr-defined]


def add_config_flags(
    parser: argparse.ArgumentParser,
    stage: str,
    rows: Sequence[Flag],
    extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
    extra_keys: Sequence[str] = (),
) -> None:
    """Give ``parser`` the flags of ``rows`` (typed and documented by ``stage``'s config),
    added when the parser is first used so that building the CLI imports no config.
    ``extra(args)`` returns the settings of the stage's other arguments (a positional, a flag
    that is not a field) as request keys, ``extra_keys`` names them."""
    STAGE_FLAGS[stage] = tuple(rows)
    STAGE_EXTRA_KEYS[stage] = tuple(extra_keys)
    if extra is not None:
        STAGE_EXTRAS[stage] = extra
    filled = False
    at = len(parser._actions)  # noqa: SLF001 - flags added after this call stay after the config's

    def fill() -> None:
        nonlocal filled
        if filled:
            return
        filled = True
        fields = config_class(stage).model_fields
        groups: dict[str, Any] = {}
        for row in rows:
            target = parser
            if row.group:
                if row.group not in groups:
                    groups[row.group] = parser.add_mutually_exclusive_group()
                target = groups[row.group]
            _add_flag(target, row, fields.get(row.target) if row.field else None)
        n = len(rows)
        later = parser._actions[at:-n] if n else []  # noqa: SLF001
        for action in later:  # --resume, --json, ...: back after the generated flags (--help)
            for seq in (parser._actions, *(g._group_actions for g in parser._action_groups)):  # noqa: SLF001
                if action in seq:
                    seq.remove(action)
                    seq.append(action)
        for action in parser._actions:  # noqa: SLF001
            action.config_class = STAGE_CONFIGS[stage]  # type: ignore[attr-defined]
            if action.option_strings and action.help is None:
                action.help = FROM_CONFIG

    for method in ("parse_known_args", "format_help", "format_usage"):
        bound = getattr(parser, method)

        def deferred(*a: Any, _bound: Callable = bound, **kw: Any) -> Any:
            fill()
            return _bound(*a, **kw)

        setattr(parser, method, deferred)
    parser.fill_config_flags = fill  # type: ignore[attr-defined]


def exposed_fields(stage: str) -> list[str]:
    """The config fields ``stage`` has a flag for (in table order, once each)."""
    out: list[str] = []
    for row in STAGE_FLAGS[stage]:
        if row.field and row.target not in out:
            out.append(row.target)
    return out


# --------------------------------------------------------------------------- args -> fields


def load_yaml_config(path: str | None) -> dict[str, Any]:
    """Keys of a YAML config file (``--config``); CLI flags given explicitly override them."""
    if not path:
        return {}
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def given_fields(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    """The config fields the flags of ``args`` set (flags not given are left out); the
    positional dataset spec becomes ``dataset``."""
    fields: dict[str, Any] = {}
    if getattr(args, "spec", None) is not None:
        fields["dataset"] = args.spec
    for row in STAGE_FLAGS[stage]:
        value = getattr(args, row.dest, None)
        if row.field and value is not None:
            fields[row.target] = (
                row.convert(value) if row.convert and isinstance(value, str) else value
            )
    return fields


def fields_from_args(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """The settings a parsed command line gives, as ``--config`` YAML keys: the config fields
    of the flags given, the stage's other settings (the dataset spec, ``--strength`` of
    generate, ...) and ``recipe`` when ``--recipe`` was given. Loading them back with
    ``--config`` (and no flags) runs the same stage; a ``--config`` file the command line
    named is not read."""
    fields = given_fields(args, stage)
    extra = STAGE_EXTRAS.get(stage)
    if extra is not None:
        fields.update(extra(args))
    if getattr(args, "recipe", None):
        fields["recipe"] = args.recipe
    return fields


def request_keys(stage: str) -> set[str]:
    """The keys a settings file written from ``stage``'s command line can hold."""
    return {*exposed_fields(stage), *STAGE_EXTRA_KEYS.get(stage, ()), "dataset", "recipe"}


def check_request(stage: str, fields: dict[str, Any]) -> None:
    """The deployment's rules (``DIFFMIX_*``: paths, work limits) applied to a stage's fields.

    A job the app starts inherits the app's environment, so the rules hold here too, whatever
    reached the command line; on a private machine the limits are generous.
    """
    from diffmix.settings import Settings
    from diffmix.settings import check_request as check

    check(stage, fields, Settings.from_env())


def stage_fields(
    args: argparse.Namespace,
    config_cls: type,
    stage: str,
    extra: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """A stage's config fields: the ``--config`` YAML, the positional dataset spec, every flag
    the user gave and ``extra``; then the recipe (``--recipe``, else the YAML's ``recipe:``,
    :mod:`diffmix.recipes`) fills the fields none of those set; the result is checked against
    the deployment's settings (:func:`check_request`)."""
    from diffmix.recipes import apply_recipe

    del config_cls  # the stage's table names its config
    fields = load_yaml_config(getattr(args, "config", None))
    recipe = fields.pop("recipe", None)
    if getattr(args, "recipe", None):
        recipe = args.recipe
    given = {k: v for k, v in given_fields(args, stage).items() if k not in skip}
    fields.update(given)
    fields.update(extra or {})
    fields = apply_recipe(recipe, stage, fields)
    check_request(stage, {**fields, "config": getattr(args, "config", None)})
    return fields


# --------------------------------------------------------------------------- fields -> args


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def to_argv(stage: str, fields: Mapping[str, Any], *, positional_spec: bool = True) -> list[str]:
    """The command line (after ``diffmix STAGE``) that sets ``fields``: the inverse of the
    stage's parser. Fields equal to the config default are left out; the dataset spec goes
    after ``--`` for stages that take it as a positional. ``ValueError`` for a field the
    stage has no flag for."""
    cls = config_class(stage)
    rows = STAGE_FLAGS[stage]
    model_fields = cls.model_fields
    argv: list[str] = []
    spec = None
    for key, value in fields.items():
        field = model_fields.get(key)
        default = None if field is None or field.is_required() else field.get_default(
            call_default_factory=True
        )  # fmt: skip
        if key == "dataset" and positional_spec and not any(r.target == "dataset" for r in rows):
            spec = value if value != default else None
            continue
        if value is None or value == default:
            continue
        row = next((r for r in rows if r.field and r.target == key and (
            r.action != "store_false" or value is False) and (
            r.action != "store_true" or value is True)), None)  # fmt: skip
        if row is None:
            raise ValueError(f"diffmix {stage} has no flag for {key} = {value!r}")
        argv += [row.name] if row.action or isinstance(value, bool) else [row.name, _text(value)]
    return [*argv, "--", str(spec)] if spec is not None else argv


# --------------------------------------------------------------------------- shared flags


def add_spec(p: argparse.ArgumentParser) -> None:
    """The optional positional dataset spec of personalize / train / generate."""
    p.add_argument(
        "spec", metavar="SPEC", nargs="?", default=None, help="dataset spec (default: demo)"
    )


def add_out_config(p: argparse.ArgumentParser, what: str, config_name: str) -> None:
    """``--out DIR``, ``--config YAML`` and ``--recipe NAME``."""
    from diffmix.recipes import recipe_names

    p.add_argument("--out", required=True, metavar="DIR", help=what)
    p.add_argument(
        "--config", metavar="YAML", help=f"settings file ({config_name} keys; may set recipe:)"
    )
    p.add_argument(
        "--recipe", choices=recipe_names(),
        help="the Diff-Mix authors' settings (strength, gamma, p, multiplier, subset, balanced "
        "sampling; see docs/fidelity.md); flags and YAML keys you give override its values",
    )  # fmt: skip


def add_resume_json(p: argparse.ArgumentParser, resume_help: str) -> None:
    """The ``--resume`` and ``--json`` flags every long stage has."""
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--json", action="store_true", help="end the output with one JSON line")


def add_stage_parser(
    subparsers: argparse._SubParsersAction,
    stage: str,
    flags: Sequence[Flag],
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,  # noqa: A002 - argparse's name
    description: str,
    out: str,
    resume: str,
    cancelled: str,
    spec: bool = True,
    extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
    extra_keys: Sequence[str] = (),
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The subparser of a long stage (a run folder, resumable): ``[SPEC]`` (with ``spec``),
    ``--out`` (help ``out``) / ``--config`` / ``--recipe``, the config flags of ``flags``
    (:func:`add_config_flags` with ``extra``), the stage's own ``options(p)``, ``--resume``
    (help ``resume``) / ``--json``. ``run(args)`` runs it; a cancelled run
    (:class:`diffmix.runs.Cancelled`) ends with ``cancelled`` (``{out}``: the folder) on stderr
    and exit status 130 (:func:`diffmix.cli.main`)."""
    p = subparsers.add_parser(stage, help=help, description=description)
    if spec:
        add_spec(p)
    add_out_config(p, out, STAGE_CONFIGS[stage].split(":")[1])
    add_config_flags(p, stage, flags, extra, extra_keys)
    if options is not None:
        options(p)
    add_resume_json(p, resume)
    p.set_defaults(func=run, cancelled=cancelled)
    return p


def comma_list(
    kind: Callable[[str], Any],
    flag: str,
    example: str,
    what: str = "values",
    error: type[Exception] = argparse.ArgumentTypeError,
) -> Callable[[str], list]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``error`` names ``flag`` and the text (an argparse type
    raises ``ArgumentTypeError``; a :attr:`Flag.convert` ``ValueError``, the CLI's one line)."""

    def parse(text: str) -> list:
        try:
            return [kind(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError:
            raise error(
                f"{flag} takes comma-separated {what} like {example}, got {text!r}"
            ) from None

    return parse


def write(text: str) -> None:
    """Results go to stdout (diagnostics to the log)."""
    sys.stdout.write(text)
    sys.stdout.flush()
