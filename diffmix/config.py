"""The one base of every stage's config, and the one way to read a config's defaults.

Each stage (personalize, translate, generate, train, experiment) has one pydantic config
that the CLI, a YAML file and the app all build; :class:`StageConfig` is their common base:
unknown keys are refused (a typo in a YAML file or an API call is an error, never a silent
default). The CLI's flags and the pages' widgets take their defaults from the config fields
through :func:`field_default`, so each default is written once, next to its description.

The subset seed is named ``subset_seed`` in the configs that draw a subset for another stage's
work (generate, train); personalize draws its subset with its ``seed`` (the subset and training
seed). Generate's ``subset_seed`` defaults to 0, personalize's default ``seed``, and train's to
its own ``seed``, so with the defaults one seed picks the same few-shot / long-tail subset in
every stage (:func:`diffmix.data.make_subset`); the experiment passes one seed to all three.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

#: A config's device and precision fields (``None``: the best available device / automatic).
Device = Annotated[str | None, Field(description="cpu, cuda, ... (default: best available)")]
Dtype = Annotated[str | None, Field(description="auto, fp32, fp16, bf16 (default: auto)")]


class StageConfig(BaseModel):
    """Base of the stage configs: unknown keys rejected (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


def field_default(config_cls: type[BaseModel], name: str) -> Any:
    """The default of field ``name`` of ``config_cls`` (a factory's value for list fields).

    ``KeyError`` when the config has no such field; ``ValueError`` when the field is required.
    """
    field = config_cls.model_fields[name]
    if field.is_required():
        raise ValueError(f"{config_cls.__name__}.{name} is required: it has no default")
    return field.get_default(call_default_factory=True)
