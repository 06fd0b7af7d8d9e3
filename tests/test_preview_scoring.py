"""Previews never wait for scoring (issue 16, item 1).

The Translate page's image event returns the image at once with a token; scoring is a separate
event; the demo's judge ships fitted (``assets/refclf``), and any other dataset's is fitted in
the background as soon as the dataset is chosen.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffmix.settings import Settings
from pages import common, translate

logger = logging.getLogger(__name__)


# The fixtures private and fewshot are tests/pageutil.py's (registered by conftest.py).


def test_shipped_demo_judge_is_used_on_a_fresh_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh workspace scores the demo at once: the shipped judge, no fit (the fit took
    9-25 min on a busy 2-core CPU), and it still tells the demo's test images apart."""
    from diffmix import score
    from diffmix.data import load_dataset

    meta = json.loads((score.BUNDLED_DIR / "demo-smallcnn.json").read_text())
    train = load_dataset("demo", split="train")
    # the shipped file records the recipe reference_classifier("demo") uses today
    assert (meta["fingerprint"], meta["size"], meta["epochs"], meta["seed"]) == (
        train.fingerprint, 64, 30, 0,
    )  # fmt: skip
    assert meta["class_names"] == list(train.class_names)
    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path))
    score.clear_classifier_cache()

    def no_fit(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the demo's judge was fitted instead of loaded from assets/")

    monkeypatch.setattr(score, "_fit_clf", no_fit)
    try:
        t0 = time.perf_counter()
        clf = score.reference_classifier("demo")
        assert clf.path == score.BUNDLED_DIR / "demo-smallcnn.safetensors"
        assert score.judge_ready(train)
        test = load_dataset("demo", split="test")
        probs = clf.probs([test.image(i) for i in range(len(test))])
        acc = float((probs.argmax(1) == np.asarray(test.labels)).mean())
        logger.warning("shipped demo judge: test accuracy %.3f, ready in %.1f s", acc,
                       time.perf_counter() - t0)  # fmt: skip
        assert acc >= 0.95, acc  # measured 1.000 on the 360 test images
    finally:
        score.clear_classifier_cache()


def test_judge_is_warmed_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing a dataset starts its judge; a second request while it runs starts no other."""
    from diffmix import score

    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_fit(ds, **_kw):
        calls.append(ds)
        started.set()
        release.wait(10)

    monkeypatch.setattr(score, "reference_classifier", slow_fit)
    first = score.warm_reference_classifier("some-spec")
    assert started.wait(10)
    assert score.warm_reference_classifier("some-spec") is first  # one fit per dataset
    release.set()
    first.join(10)
    assert calls == ["some-spec"] and not first.is_alive()


def test_preview_store_keeps_only_the_latest_per_slot() -> None:
    store = translate.PreviewStore(capacity=3)
    a, b = object(), object()
    ta = store.put(a, "s1:one")  # type: ignore[arg-type]
    assert store.latest(ta) is a
    tb = store.put(b, "s1:one")  # type: ignore[arg-type]
    assert store.latest(ta) is None and store.latest(tb) is b  # replaced: never scored
    other = store.put(a, "s2:one")  # type: ignore[arg-type]
    assert store.latest(other) is a and store.latest(tb) is b  # sessions are independent
    for k in range(4):
        store.put(a, f"x{k}")  # type: ignore[arg-type]
    assert store.latest(tb) is None  # bounded: the oldest are dropped
    assert store.latest(None) is None and store.latest("nope") is None


def test_image_event_does_not_wait_for_the_judge(
    fewshot: dict, private: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image comes back while the judge is still being fitted; the scoring event then
    fills the scores in, unless a newer image replaced it (its scores would be wrong)."""
    import torch

    from diffmix import score
    from diffmix.refclf import SmallCNN

    release = threading.Event()
    fits: list[float] = []

    def slow_judge(ds, **_kw):
        fits.append(time.perf_counter())
        assert release.wait(60), "the test never released the judge"
        torch.manual_seed(0)
        net = SmallCNN(ds.num_classes).eval()
        return score.ReferenceClassifier(net, list(ds.class_names), 32, ds.fingerprint)

    monkeypatch.setattr(score, "reference_classifier", slow_judge)
    monkeypatch.setattr(score, "judge_ready", lambda *_a, **_k: False)
    image = translate._translate_image(private)
    ds, _ = common.open_selection(fewshot, private)
    args = (fewshot, None, None, "Dataset image", fewshot["indices"][0], None, None,
            ds.class_names[3], "real-mix", 0, 4)  # fmt: skip
    request = type("R", (), {"session_hash": "sess-a"})()
    t0 = time.perf_counter()
    pair, label, scores, info, token = image(*args, 0.5, request)
    assert time.perf_counter() - t0 < 30  # returned although the judge is blocked
    assert isinstance(pair[1], Image.Image) and token
    assert "Scoring" in scores and "background" in scores  # says scores follow
    assert "dm-info" in info
    # a second slider move of the same session replaces the first: the first is not scored
    *_, token2 = image(*args, 0.8, request)
    release.set()
    stale = translate._score_one(token)  # gr.skip() updates: nothing shown is overwritten
    assert not any(isinstance(x, str) for x in stale), stale
    fresh_scores, fresh_info = translate._score_one(token2)
    assert "Faithfulness" in fresh_scores and "scores" in fresh_info
    again = translate._score_one(token2)  # scored once, then forgotten
    assert not any(isinstance(x, str) for x in again), again
