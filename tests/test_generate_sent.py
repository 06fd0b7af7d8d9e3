"""What Generate does with a plan sent from Translate (issue 16, "send to Generate").

Translate previews one source image toward one target class; Generate is a batch over every
selected image. The plan box above Estimate says which sent settings the batch applies
(strategy, strength, guidance, prompt template), that the previewed pair is not reused (and
by which rule the batch draws its targets instead), and which sent settings were changed on
Generate since.
"""

from __future__ import annotations

from typing import Any

from diffmix.settings import Settings
from pages import generate, translate


def _plan(fewshot: dict[str, Any], private: Settings, prompt: str) -> dict[str, Any]:
    names = fewshot["class_names"]
    plan, msg, _ = translate._send_action(private)(
        fewshot, None, None, "real-mix", 0.6, 4.5, prompt, fewshot["indices"][0], names[0],
        names[2],
    )  # fmt: skip
    assert msg == "", msg
    return plan


def _box(plan: dict | None, fewshot: dict, **now: Any) -> str:
    values = {"strategy": "real-mix", "strengths": "0.6", "guidance": 4.5, "targets": "uniform",
              "template": (plan or {}).get("prompt_template", ""), "multiplier": 2,
              "limit": None}  # fmt: skip
    values.update(now)
    return generate.sent_plan_box(plan, fewshot, **values)


def test_plan_box_says_what_is_applied_and_that_the_pair_is_not(
    fewshot: dict, private: Settings
) -> None:
    names = fewshot["class_names"]
    word = names[2].replace("_", " ")
    plan = _plan(fewshot, private, f"a sketch of a {word}")
    box = _box(plan, fewshot)
    applied, not_applied = box.split("Not applied")
    assert "strategy real-mix" in applied and "strength 0.6" in applied
    assert "guidance 4.5" in applied and "“a sketch of a {token}”" in applied
    assert "each target class's token goes into {token}" in applied
    src = f"source #{fewshot['indices'][0]} ({names[0]}) → {names[2]}"
    assert src in not_applied
    assert f"every selected image ({fewshot['num_images']}) 2 time(s) each" in not_applied
    assert "drawn by the **uniform** rule" in not_applied
    assert "Changed here" not in box
    # the limit under More options: only the first images
    assert "the first 24 selected images (the limit) 2 time(s) each" in _box(
        plan, fewshot, limit=24
    )
    # the rule named is the page's current one
    assert "drawn by the **tail** rule" in _box(plan, fewshot, targets="tail")
    # a within-class strategy keeps each image's class: no drawn targets
    aug = _box(plan, fewshot, strategy="real-aug")
    assert "keeping its own class" in aug and "rule" not in aug.split("Not applied")[1]
    # nothing sent (a plain visit): no note
    assert _box(None, fewshot) == ""


def test_plan_box_names_settings_changed_after_sending(fewshot: dict, private: Settings) -> None:
    word = fewshot["class_names"][2].replace("_", " ")
    plan = _plan(fewshot, private, f"a sketch of a {word}")
    box = _box(plan, fewshot, strengths="0.3, 0.5", guidance=7.5)
    applied = box.split("Not applied")[0]
    assert "strength" not in applied and "guidance" not in applied
    assert "strategy real-mix" in applied
    changed = box.split("Changed here since it was sent:")[1]
    assert "strength 0.6 → 0.3, 0.5" in changed and "guidance 4.5 → 7.5" in changed
    emptied = _box(plan, fewshot, template="")
    assert "prompt template a sketch of a {token} → (empty)" in emptied


def test_a_prompt_without_the_class_is_one_prompt_for_every_target(
    fewshot: dict, private: Settings
) -> None:
    """The typed prompt names no class: the old line said "each target's own token" anyway."""
    plan = _plan(fewshot, private, "a pencil drawing of a flower")
    assert plan["prompt_template"] == "a pencil drawing of a flower"
    box = _box(plan, fewshot)
    assert "names no class ({token} missing)" in box
    assert "every image gets this same prompt" in box
    line = generate.sent_plan_line(plan)
    assert "each target's own token" not in line and "not the pair" in line


def test_open_keeps_the_sent_plan_for_the_box_and_clears_the_browser_copy(
    fewshot: dict, private: Settings
) -> None:
    plan = _plan(fewshot, private, "")
    opened = generate._keep_sent(generate._on_open(private))(None, fewshot, None, plan)
    assert opened[6] is None  # the browser's copy is cleared (used once)
    assert opened[-1] == plan  # ... and the page keeps it for the plan box
    plain = generate._keep_sent(generate._on_open(private))(None, fewshot, None, None)
    assert plain[-1] is None
    assert "the strategy's own prompt" in _box(opened[-1], fewshot, template="")
