"""The ``diffmix`` command line: one subcommand per stage (``diffmix data ...``).

Each stage's module has ``add_parser(subparsers)`` (its flags: generated from the stage's
config by :mod:`diffmix.cli.flags`, plus what is not a config field) and ``run(args) -> int``;
:data:`SUBCOMMANDS` lists the parser builders. Diagnostics go to the log (stderr); results go to
stdout. User errors (bad spec, bad value, missing file) and system errors the user can fix (a
full disk, an unwritable folder) exit with status 2 and a single line ``error: ...`` on stderr;
Ctrl-C and SIGTERM exit with 130 / 143. The run directory's status.json says the same.

A stage runs from flags, from a settings file (``--config FILE``, the config's keys; flags
given win), or both: the app starts a job as ``diffmix STAGE --config RUN/request.yaml --out
RUN`` (:mod:`diffmix.jobs`) and resumes it with the same file and ``--resume``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diffmix.cli import data, experiment, generate, personalize, train, translate
from diffmix.cli.data import cmd_data, cmd_status, format_summary
from diffmix.cli.flags import (
    STAGE_CONFIGS,
    STAGE_FLAGS,
    Flag,
    check_request,
    fields_from_args,
    load_yaml_config,
    stage_fields,
    to_argv,
)
from diffmix.cli.help import DefaultsHelpFormatter
from diffmix.cli.translate import TRANSLATE_STRATEGIES

logger = logging.getLogger("diffmix.cli")

#: Exit status of a run stopped by a user error.
EXIT_USER_ERROR = 2
#: Exit status of a cancelled run (as of Ctrl-C).
EXIT_CANCELLED = 130

# Names kept from the one-file cli.py (tests and pages import them).
_stage_fields = stage_fields
_check_request = check_request
_load_yaml_config = load_yaml_config
add_data_parser, add_status_parser = data.add_data_parser, data.add_status_parser
add_personalize_parser, cmd_personalize = personalize.add_parser, personalize.run
add_translate_parser, cmd_translate = translate.add_parser, translate.run
add_train_parser, cmd_train = train.add_parser, train.run
add_generate_parser, cmd_generate = generate.add_parser, generate.run
add_experiment_parser, cmd_experiment = experiment.add_parser, experiment.run

__all__ = [
    "EXIT_USER_ERROR", "STAGE_CONFIGS", "STAGE_FLAGS", "SUBCOMMANDS", "TRANSLATE_STRATEGIES",
    "DefaultsHelpFormatter", "Flag", "build_parser", "cmd_data", "cmd_status",
    "fields_from_args", "format_summary", "main", "setup_logging", "to_argv", "validation_line",
]  # fmt: skip

#: Parser builders, one per subcommand; later stages append theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_data_parser,
    add_personalize_parser,
    add_translate_parser,
    add_train_parser,
    add_generate_parser,
    add_experiment_parser,
    add_status_parser,
]


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """The ``diffmix`` argument parser with every registered subcommand.

    ``parser_class`` builds the parser and its subparsers (the job launcher passes one whose
    errors raise instead of exiting). Positional values may follow ``--`` (a dataset spec can
    never be read as an option). A stage's config flags are added when its parser is first
    used (:func:`diffmix.cli.flags.add_config_flags`).
    """
    parser = parser_class(
        prog="diffmix",
        description="Diff-Mix Studio: inter-class image mixup with Stable Diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=parser_class
    )
    for add in SUBCOMMANDS:
        add(sub)
    for stage_parser in sub.choices.values():
        stage_parser.formatter_class = DefaultsHelpFormatter
    return parser


def stage_parser(parser: argparse.ArgumentParser, stage: str) -> argparse.ArgumentParser:
    """The subparser of ``stage`` with every flag added (config flags included)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    sp = action.choices[stage]
    fill = getattr(sp, "fill_config_flags", None)
    if fill is not None:
        fill()
    return sp


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) log records to stderr, one line each.

    Handlers already on the root logger (an embedding app, pytest) are kept.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(level)


_PYDANTIC_BOUNDS = (
    ("Input should be greater than or equal to ", ">="),
    ("Input should be greater than ", ">"),
    ("Input should be less than or equal to ", "<="),
    ("Input should be less than ", "<"),
)


def validation_line(error: Any, flags: dict[str, str]) -> str:
    """A pydantic ``ValidationError`` as one line in the CLI's words: ``--epochs must be >= 1,
    got 0``. ``flags`` maps config field names to their flag (fields without one keep their
    name)."""
    parts = []
    for err in error.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = flags.get(field, field.replace("_", "-") if field else "")
        raw = str(err.get("msg", ""))
        msg = raw.removeprefix("Value error, ")
        if msg != raw:  # the config's own sentence: keep it, say which flag
            parts.append(f"{name}: {msg}" if name else msg)
            continue
        for prefix, op in _PYDANTIC_BOUNDS:
            if msg.startswith(prefix):
                msg = f"must be {op} {msg.removeprefix(prefix)}"
                break
        got = f", got {err['input']!r}" if "input" in err and not isinstance(
            err["input"], dict
        ) else ""  # fmt: skip
        parts.append(f"{name} {msg}{got}".strip() if name else msg)
    return "; ".join(" ".join(p.split()) for p in parts) or "invalid settings"


def _flag_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Config field (an option's dest) -> its long flag, for the stage ``args`` ran."""
    out: dict[str, str] = {}
    command = getattr(args, "command", None)
    if not command:
        return out
    for a in stage_parser(parser, command)._actions:  # noqa: SLF001
        longs = [o for o in a.option_strings if o.startswith("--")]
        if longs:
            out.setdefault(a.dest, longs[0])
        elif a.dest == "spec":
            out["dataset"] = "SPEC"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffmix`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    setup_logging(args.verbose)
    from pydantic import ValidationError

    from diffmix.runs import Cancelled, Terminated, describe_error

    try:
        out = getattr(args, "out", None)
        if out and Path(out).exists() and not Path(out).is_dir():  # before any work is done
            raise ValueError(f"--out {out} is a file; give a folder (or a path not taken yet)")
        return int(args.func(args))
    except Cancelled:  # from the run folder (the app's Cancel): its progress is kept
        sys.stderr.write(args.cancelled.format(out=out) + "\n")
        return EXIT_CANCELLED
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        logger.debug("user error", exc_info=True)
        if isinstance(e, ValidationError):  # a config field: say it in the CLI's flags
            message = validation_line(e, _flag_names(parser, args))
        else:
            message = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"error: {message}\n")
        return EXIT_USER_ERROR
    except OSError as e:  # a full disk, an unwritable folder: the message says what to do
        logger.debug("system error", exc_info=True)
        sys.stderr.write(f"error: {describe_error(e)}\n")
        return EXIT_USER_ERROR
    except Terminated:
        sys.stderr.write("error: stopped by SIGTERM; continue with the same command and --resume\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
