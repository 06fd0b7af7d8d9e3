"""``plan.jsonl``'s text is what ``json.dumps`` writes, byte for byte (issue 15).

A rerun compares the saved plan with the text of the plan it makes now; on a 60,000-task plan
that text was two thirds of the resume scan. ``plan_text`` now formats the usual field types
itself: the text must stay identical, or every folder written before would read as "another
plan" and refuse to resume.
"""

from __future__ import annotations

import json

from diffmix.generate.plan import PlannedTask, plan_text


def _dumps(plan: list[PlannedTask]) -> str:
    return "".join(json.dumps(t.to_dict()) + "\n" for t in plan)


def test_plan_text_is_json_dumps_of_every_task() -> None:
    order = ("task", "batch", "source_index", "source_id", "source_class", "target_class",
             "strength", "seed", "partner_index", "partner_id")  # fmt: skip
    assert tuple(PlannedTask.__dataclass_fields__) == order  # the order plan_text writes
    plan = [
        PlannedTask(
            0,
            0,
            3,
            "train/001.Black_footed_Albatross/a.jpg",
            "001.Black_footed",
            "200.Common_Yellowthroat",
            0.7,
            4276342004,
            17,
            "train/200.x/b.jpg",
        ),
        PlannedTask(1, 0, 2, 'a"b\\c\n\t', "é ü 鸟", "\x01", 0.1 + 0.2, 2**40, None, None),
        PlannedTask(2, 1, 0, "x", "y", "z", 1e-20, 0, 0, "\ud800"),
        PlannedTask(3, 1, 0, "x", "y", "z", 1.0, 3, None, "p"),
        # types the fast path does not format: through json.dumps
        PlannedTask(4, 1, 0, "x", "y", "z", 1, 3, 4, "p"),
        PlannedTask(5, 1, 0, "x", "y", "z", True, 3, float("nan"), "p"),
        PlannedTask(6, 1, 0, "x", "y", "z", float("inf"), 3, False, None),
        PlannedTask(7, 1, 0, 5, "y", "z", 0.5, 3, None, None),
    ]
    for t in plan:
        assert plan_text([t]) == _dumps([t]), t
    assert plan_text(plan) == _dumps(plan) and plan_text([]) == ""
