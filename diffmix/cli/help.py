"""``--help`` of the stage commands: every option's default, read from the stage's config."""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any

from diffmix.cli.flags import FROM_CONFIG


def config_field(action: argparse.Action) -> Any:
    """The stage config's pydantic field that ``action`` sets, or None."""
    path = getattr(action, "config_class", None)
    if not path:
        return None
    module, cls_name = path.split(":")
    return getattr(importlib.import_module(module), cls_name).model_fields.get(
        getattr(action, "config_key", action.dest)
    )


def config_default(action: argparse.Action) -> Any:
    """The stage config's default for the field ``action`` sets (None when it has none)."""
    field = config_field(action)
    if field is None or field.is_required():
        return None
    default = field.get_default(call_default_factory=True)
    if default is None:  # resolved at run time: the field's description says how
        desc = field.description or ""
        at = desc.lower().find("default")
        if at < 0:
            return None
        rule = desc[at:].split(":", 1)[-1].strip().rstrip(")").strip()
        return _Rule(rule) if rule else None
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default)) or None
    return default


class _Rule(str):
    """A default that depends on other settings, as its description words it."""


#: Options whose help needs no default: --help and on/off switches.
_NO_DEFAULT_SHOWN = (
    argparse._HelpAction,  # noqa: SLF001
    argparse._StoreTrueAction,  # noqa: SLF001
    argparse._StoreFalseAction,  # noqa: SLF001
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` names every option's default: ``(default: X)`` is appended to a help text
    that does not already say it -- the flag's own default, or, for a flag left unset, the
    stage config's (flags that are off by default, and options whose help says what happens
    without them, excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = (action.help or "").strip()
        if text == FROM_CONFIG:  # no help of its own: the config field's description
            field = config_field(action)
            desc = (field.description or "") if field is not None else ""
            text = desc.split("(default", 1)[0].split("; default", 1)[0].strip(" ;,")
            default = config_default(action)
            if default is None and re.search(r"default|unset:", desc, re.I):
                text = desc.replace("Unset:", "default:")  # the rule that resolves it
            elif default is not None and not isinstance(default, _Rule):
                if isinstance(action, _NO_DEFAULT_SHOWN) or default is False:
                    return text.replace("%", "%%")
                shown = f"default: {default}"  # the field's value, whatever its words say
                return f"{text} ({shown})".replace("%", "%%") if text else shown
        if (
            not action.option_strings
            or "default" in text.lower()
            or isinstance(action, _NO_DEFAULT_SHOWN)
            or action.default is argparse.SUPPRESS
        ):
            return text.replace("%", "%%") if text != action.help else action.help
        default = action.default if action.default is not None else config_default(action)
        said = re.search(r"\([-+.\w]+\)$", text)  # "... (25)": the default, said already
        if default is None or default is False or said:
            return text.replace("%", "%%") if text != action.help else action.help
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"
