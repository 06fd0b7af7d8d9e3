"""A cancelled stage (the app's Cancel: :class:`diffmix.runs.Cancelled` from its run folder)
ends with status 130 and one line saying how to continue, for every long stage (one place in
:func:`diffmix.cli.main`, the hint from the stage's parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffmix import classify, cli, generate, personalize
from diffmix.runs import Cancelled


def _cancel(*_a, **_k):
    raise Cancelled("cancel requested")


@pytest.mark.parametrize(
    "module, name, argv, hint",
    [
        (classify, "train", ["train", "demo", "--arch", "smallcnn"],
         "cancelled; continue with: diffmix train ... --out {out} --resume"),
        (personalize, "personalize", ["personalize", "demo", "--steps", "2"],
         "cancelled; continue with: diffmix personalize ... --out {out} --resume"),
        (generate, "generate", ["generate", "demo", "--strategy", "mixup"],
         "cancelled; continue with the same command (--out {out})"),
    ],
)  # fmt: skip
def test_a_cancelled_stage_says_how_to_continue(
    module, name: str, argv: list[str], hint: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(module, name, _cancel)
    out = str(tmp_path / "run")
    assert cli.main([*argv, "--out", out]) == cli.EXIT_CANCELLED == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == hint.format(out=out)
