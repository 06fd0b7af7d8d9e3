"""The CLI in its own words (issue 16, item 8): --help shows every default, and bad values are
one line naming the flag (not the config field, not pydantic's layout)."""

from __future__ import annotations

import argparse
import re

import pytest

from diffmix import cli

#: Options whose unset value means "none of it" (their help says what they add when given).
UNSET_MEANS_NONE = {
    "--out", "--config", "--recipe", "--shots", "--imbalance", "--synthetic", "--adapter",
    "--source", "--target", "--confusion", "--limit", "--strength", "--strengths",
    "--pretrained", "--export", "--class-balanced", "--no-class-balanced", "--mix-prob",
    "--model", "--superclass", "--dtype", "--threads",
}  # fmt: skip


def _stage_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("stage", ["personalize", "train", "generate", "experiment"])
def test_help_shows_every_default(stage: str) -> None:
    sp = _stage_parsers()[stage]
    text = " ".join(sp.format_help().split("options:", 1)[1].split())
    missing = []
    for action in sp._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or flag == "--help" or flag in UNSET_MEANS_NONE:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        # the help of this flag: from its name to the next option
        m = re.search(re.escape(flag) + r"\b(.*?)(?= --[a-z]|$)", text)
        if not m or not re.search(r"default|\(\d", m.group(1)):
            missing.append(flag)
    assert not missing, f"{stage} --help says no default for {missing}"


def test_unset_flags_show_the_config_default(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_stage_parsers()["personalize"].format_help().split())
    assert "--steps N optimiser steps (default: 1500 nano, 5000 SD on a GPU; on a CPU" in text
    assert "--batch-size B images per step per process (default: 8)" in text


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["train", "demo", "--epochs", "0"], "error: --epochs must be >= 1, got 0"),
        (["personalize", "demo", "--steps", "0"], "error: --steps must be >= 1, got 0"),
        (["generate", "demo", "--steps", "0"], "error: --steps must be >= 1, got 0"),
        (["generate", "demo", "--strategy", "diff-mix"], "pass --adapter DIR"),
    ],
)
def test_bad_values_are_one_line_in_flag_words(
    argv: list[str], line: str, tmp_path, capsys: pytest.CaptureFixture[str], workspace_home
) -> None:
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err
    assert "validation error" not in err[0] and "pydantic" not in err[0]
