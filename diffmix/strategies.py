"""The translation strategies as data: one :class:`Strategy` row per method of the paper.

Diff-Mix (Wang et al., CVPR 2024, arXiv 2403.19600) and its baselines (Diff-Aug, Diff-Gen,
Real-*, TI-*, Mixup, CutMix) differ only in the model, prompt and target rule they use, so each is
one row of :data:`STRATEGIES` (see :mod:`diffmix.translate` for the table in words). This module
imports neither torch nor diffusers: configs, the CLI parser and pages that only need the names
or the rules import it cheaply. :mod:`diffmix.translate` re-exports every name (same objects).

Public API: :class:`Strategy`, :data:`STRATEGIES`, :func:`get_strategy`, :data:`StrategyName`
(a pydantic field type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator

__all__ = ["STRATEGIES", "Strategy", "StrategyName", "get_strategy"]


@dataclass(frozen=True)
class Strategy:
    """One translation method, as data.

    Attributes:
        name: the strategy's name (``diff-mix``, ``real-aug``, ...).
        uses_adapter: whether a personalized adapter folder is required.
        adapter_kind: ``"full"`` (tokens + LoRA), ``"ti"`` (tokens only, ``ti_only: true``),
            or ``"none"`` (base model / no model).
        target: ``"other"`` (target class must differ from the source class), ``"same"``
            (target must be the source class) or ``"any"``.
        generative: ``"img2img"`` (source pixels + strength), ``"txt2img"`` (pure noise,
            strength 1, no source pixels) or ``"none"`` (classic pixel mixing, no model).
        prompt: ``"adapter"`` (the adapter's template with the target's token),
            ``"class-name"`` (``"a photo of a {class name} {superclass}"``) or ``"none"``.
        summary: one line for menus and tables.
    """

    name: str
    uses_adapter: bool
    adapter_kind: Literal["full", "ti", "none"]
    target: Literal["same", "other", "any"]
    generative: Literal["img2img", "txt2img", "none"]
    prompt: Literal["adapter", "class-name", "none"]
    summary: str

    def __post_init__(self) -> None:
        if self.uses_adapter != (self.adapter_kind != "none"):
            raise ValueError(f"strategy {self.name!r}: uses_adapter contradicts adapter_kind")
        if (self.prompt == "adapter") != self.uses_adapter:
            raise ValueError(f"strategy {self.name!r}: adapter prompts need an adapter")
        if (self.generative == "none") != (self.prompt == "none"):
            raise ValueError(f"strategy {self.name!r}: only generative strategies have prompts")


_TABLE = (
    Strategy("diff-mix", True, "full", "other", "img2img", "adapter",
             "personalized translation to another class (Diff-Mix)"),
    Strategy("diff-aug", True, "full", "same", "img2img", "adapter",
             "personalized translation within the source class (Diff-Aug)"),
    Strategy("diff-gen", True, "full", "any", "txt2img", "adapter",
             "personalized text-to-image of the target class (Diff-Gen)"),
    Strategy("real-mix", False, "none", "other", "img2img", "class-name",
             "base model translation to another class, class-name prompt (Real-Mix)"),
    Strategy("real-aug", False, "none", "same", "img2img", "class-name",
             "base model translation within the class, class-name prompt (Real-Aug)"),
    Strategy("real-gen", False, "none", "any", "txt2img", "class-name",
             "base model text-to-image, class-name prompt (Real-Gen)"),
    Strategy("ti-mix", True, "ti", "other", "img2img", "adapter",
             "token-only adapter translation to another class (TI-Mix)"),
    Strategy("ti-aug", True, "ti", "same", "img2img", "adapter",
             "token-only adapter translation within the class (TI-Aug, DA-Fusion-like)"),
    Strategy("mixup", False, "none", "any", "none", "none",
             "pixel blend with a real image of the target class (Mixup)"),
    Strategy("cutmix", False, "none", "any", "none", "none",
             "box pasted from a real image of the target class (CutMix)"),
)  # fmt: skip

#: Every strategy by name, in table order.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _TABLE}


def get_strategy(name: str | Strategy) -> Strategy:
    """The :class:`Strategy` called ``name``; ``ValueError`` naming the known ones otherwise."""
    if isinstance(name, Strategy):
        return name
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


def _strategy_name(name: str) -> str:
    return get_strategy(name).name


#: A config's strategy field: a name :func:`get_strategy` knows, kept as the strategy's own
#: spelling (``ValueError`` naming the choices otherwise).
StrategyName = Annotated[str, AfterValidator(_strategy_name)]
