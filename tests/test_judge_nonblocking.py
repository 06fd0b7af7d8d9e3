"""A judge being fitted blocks nobody but the callers that need that very judge (issue 16 item 1).

With 200 classes the Lite0 fit started by the Dataset page took minutes on a busy CPU, and the
Translate page stayed "processing" for all of it: the fit ran under the module lock that the
page's warm-up (and any other judge lookup) also took. These tests hold a fit open and check
that opening Translate, starting another warm-up, asking whether a judge is ready and loading
another judge all return while it runs, and that the same judge is still fitted only once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from datautil import write_color_folder

from diffmix.settings import Settings
from pages import dataset, translate

#: Seconds a call may take while the fit is held open (generous: a busy 2-core machine).
PROMPT_S = 30.0


def _within(fn: Any, seconds: float = PROMPT_S) -> Any:
    """``fn()`` run in a thread; its result, or a failure when it is still waiting after
    ``seconds`` (the old code waited for the whole fit)."""
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn} still waiting after {seconds} s: blocked by the fit"
    return out.get("v")


@pytest.fixture
def held_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh workspace whose judge fits of folders named ``slow*`` block until released;
    yields (release, started, fits)."""
    import torch

    from diffmix import score
    from diffmix.refclf import SmallCNN

    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path / "home"))
    score.clear_classifier_cache()
    release, started = threading.Event(), threading.Event()
    fits: list[str] = []

    def held(ds, indices, judge, size, *_a: Any) -> score.ReferenceClassifier:
        fits.append(ds.spec)
        if Path(ds.spec).name.startswith("slow"):
            started.set()
            assert release.wait(120), "the test never released the fit"
        torch.manual_seed(0)
        net = SmallCNN(ds.num_classes).eval()
        return score.ReferenceClassifier(net, list(ds.class_names), 32, ds.fingerprint)

    monkeypatch.setattr(score, "_fit_clf", held)
    try:
        yield release, started, fits
    finally:
        release.set()
        score.clear_classifier_cache()


def test_a_running_fit_blocks_no_other_call(held_fit, tmp_path: Path) -> None:
    from diffmix import score
    from diffmix.data import load_dataset

    release, started, fits = held_fit
    folder_a = write_color_folder(tmp_path / "slow-a")
    folder_b = write_color_folder(tmp_path / "slow-b", seed=1)
    folder_c = write_color_folder(tmp_path / "c", seed=2)
    ds_a = load_dataset(str(folder_a), split="train")
    ds_c = load_dataset(str(folder_c), split="train")
    judge_c = score.reference_classifier(ds_c)  # fitted before (not held)
    fitting = score.warm_reference_classifier(str(folder_a))  # as the Dataset page does
    assert started.wait(60)
    # while A's judge is being fitted:
    assert _within(lambda: score.judge_ready(ds_a)) is False
    other = _within(lambda: score.warm_reference_classifier(str(folder_b)))
    assert other is not fitting
    assert _within(lambda: score.reference_classifier(ds_c)) is judge_c  # another, in memory
    # a second caller of A's judge waits for that one fit and gets its result
    second: list[Any] = []
    waiter = threading.Thread(target=lambda: second.append(score.reference_classifier(ds_a)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not second  # it waits on A's fit, not elsewhere
    release.set()
    fitting.join(60)
    waiter.join(60)
    other.join(60)
    assert second and score.judge_ready(ds_a)
    assert sorted(fits) == sorted(map(str, (folder_a, folder_b, folder_c)))  # each once


def test_translate_opens_while_the_judge_is_fitted(held_fit, tmp_path: Path) -> None:
    """The Translate page's open event returns its gallery and class pickers at once."""
    release, started, _ = held_fit
    home = tmp_path / "home"
    settings = Settings.from_env({"DIFFMIX_HOME": str(home)})
    folder = write_color_folder(tmp_path / "slow-c")
    sel = dataset.load_selection(str(folder), settings=settings).selection
    from diffmix import score

    score.warm_reference_classifier(sel["spec"])  # what the Dataset page's load starts
    assert started.wait(60)
    out = _within(lambda: translate._open_action(settings)(sel, None, None))
    assert out[1] and out[3] is not None  # the source gallery and the first source
    assert "red" in out[6]["choices"] and out[8] == ""  # the target picker, no error
