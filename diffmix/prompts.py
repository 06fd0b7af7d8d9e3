"""Prompts of the translation strategies: the adapter's template, the class name, a user's prompt.

Personalized strategies (``diff-*``, ``ti-*``) fill the adapter's ``prompt_template`` with the
target class's token; base-model strategies (``real-*``) say ``"a photo of a {class name}
{superclass}"``, as the paper's Real-* baselines (Wang et al., CVPR 2024, arXiv 2403.19600);
classic mixing has no prompt. Imports no torch (pages build prompts without loading a model);
:mod:`diffmix.translate` re-exports every name (same objects).

Public API: :func:`build_prompt`, :func:`prompt_word`, :func:`template_from_prompt`.
"""

from __future__ import annotations

from diffmix.adapter import check_prompt_template, require_adapter
from diffmix.strategies import Strategy, get_strategy

__all__ = ["build_prompt", "prompt_word", "template_from_prompt"]


def prompt_word(
    strategy: str | Strategy, target_class: str, *, adapter_meta: dict | None = None
) -> str:
    """What ``{token}`` stands for in a prompt of ``target_class``: the class's token for
    personalized strategies (``<demo-3>``), its name (underscores as spaces) otherwise."""
    st = get_strategy(strategy)
    if st.prompt == "adapter":
        require_adapter(st, adapter_meta, how="pass adapter_meta (its adapter.json)")
        tokens = adapter_meta.get("class_tokens", {})
        if target_class not in tokens:
            raise ValueError(
                f"unknown class {target_class!r}; the adapter knows: {', '.join(tokens)}"
            )
        return str(tokens[target_class])
    return target_class.replace("_", " ").strip()


def template_from_prompt(prompt: str, word: str) -> str:
    """A prompt template of a typed prompt: braces escaped, ``word`` (the target's token or
    name, :func:`prompt_word`) made ``{token}``, so that ``template.format(token=word)`` gives
    ``prompt`` back and other target classes get their own token."""
    escaped = prompt.replace("{", "{{").replace("}", "}}")
    return escaped.replace(word, "{token}") if word else escaped


def build_prompt(
    strategy: str | Strategy,
    target_class: str,
    *,
    adapter_meta: dict | None = None,
    superclass: str | None = None,
    template: str | None = None,
) -> str:
    """The prompt a strategy uses for ``target_class``.

    Personalized strategies: ``adapter_meta["prompt_template"].format(token=class_tokens[target])``.
    Base-model strategies: ``"a photo of a {class name} {superclass}"`` (underscores in the name
    become spaces; no superclass word when unknown), as the paper's Real-* baselines.
    Classic mixing strategies have no prompt (``""``). ``template`` (a user's prompt, checked by
    :func:`~diffmix.adapter.check_prompt_template` with ``{token}`` optional) replaces the
    strategy's own: ``{token}`` is :func:`prompt_word`, ``{superclass}`` the superclass word.
    """
    st = get_strategy(strategy)
    if st.prompt == "none":
        return ""
    if template is not None:
        template = check_prompt_template(template, require_token=False)
        word = prompt_word(st, target_class, adapter_meta=adapter_meta)
        return template.format(token=word, superclass=superclass or "object").strip()
    if st.prompt == "adapter":
        word = prompt_word(st, target_class, adapter_meta=adapter_meta)
        template = check_prompt_template(adapter_meta.get("prompt_template"))
        return template.format(token=word, superclass=superclass or "object")
    name = target_class.replace("_", " ").strip()
    return f"a photo of a {name} {superclass}" if superclass else f"a photo of a {name}"
