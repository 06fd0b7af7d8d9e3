"""Scores: pure functions, the cached reference classifier, diversity, the filter, CLIP detection."""

from __future__ import annotations

import numpy as np
import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix import score
from diffmix.score import (
    feature_distance,
    filter_least_faithful,
    pairwise_spread,
    target_probability,
)

COLORS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    """Three colour classes x 6 noisy 20-px images (a classifier learns it in seconds)."""
    root = tmp_path_factory.mktemp("score-colors") / "colors"
    return write_color_folder(root, per_class=6, size=20, noise=15, seed=1, colors=COLORS)


@pytest.fixture(scope="module")
def clf(colors):
    return score.reference_classifier(str(colors), judge="smallcnn", epochs=20)


def _solid(rgb, size=20) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


# --------------------------------------------------------------------------- pure functions


def test_feature_distance_and_spread():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(feature_distance(a, b), [0.0, 1 - 1 / np.sqrt(2), 0.0])
    assert feature_distance(np.array([[1.0, 0]]), np.array([[0, 1.0]]))[0] == pytest.approx(1.0)
    assert pairwise_spread(np.ones((4, 3))) == pytest.approx(0.0)
    assert pairwise_spread(np.eye(3)) == pytest.approx(1.0)
    assert pairwise_spread(np.ones((1, 3))) == 0.0
    rnd = np.random.default_rng(0).random((10, 8))
    assert 0.0 <= pairwise_spread(rnd) <= 1.0
    np.testing.assert_allclose(target_probability(np.array([[0.2, 0.8], [0.6, 0.4]]), [1, 1]),
                               [0.8, 0.4])  # fmt: skip
    with pytest.raises(ValueError, match="targets"):
        target_probability(np.ones((2, 2)), [0])


def test_filter_least_faithful():
    s = np.linspace(0.05, 0.95, 10)[::-1]  # descending: the last one is the least faithful
    keep = filter_least_faithful(s, 0.1)  # the paper's 10%
    assert keep.sum() == 9 and not keep[-1]
    keep = filter_least_faithful([0.5, 0.1, 0.9, 0.2, 0.3, 0.8, 0.7, 0.4], 0.25)
    assert keep.tolist() == [True, False, True, False, True, True, True, True]
    assert filter_least_faithful([0.3, 0.3, 0.3], 0.34).tolist() == [False, True, True]  # ties
    assert filter_least_faithful([0.1] * 5, 0.0).all()
    assert filter_least_faithful([0.1] * 9, 0.1).all()  # floor(0.9) = 0 dropped
    assert filter_least_faithful([], 0.1).tolist() == []
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=repr(bad)):
            filter_least_faithful([0.1, 0.2], bad)


def test_pixel_distance():
    black, white = _solid((0, 0, 0)), _solid((255, 255, 255))
    np.testing.assert_allclose(
        score.pixel_distance([black, white], [black, black], size=16), [0, 1]
    )


# --------------------------------------------------------------------------- reference classifier


def test_scores_ranges_and_meaning(clf):
    assert clf.class_names == ["blue", "green", "red"] and clf.size == 20  # image side < 64
    imgs = [_solid(rgb) for rgb in COLORS.values()]
    probs = clf.probs(imgs)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    f = score.faithfulness(clf, imgs, list(COLORS))
    assert ((f >= 0) & (f <= 1)).all() and f.mean() > 1 / 3  # learned the colours
    assert (probs.argmax(1) == [0, 1, 2]).sum() >= 2
    with pytest.raises(ValueError, match="unknown class 'pink'.*blue"):
        score.faithfulness(clf, imgs[:1], ["pink"])
    div = score.diversity_from_source(clf, imgs, imgs)
    np.testing.assert_allclose(div, 0.0, atol=1e-9)  # unchanged: 0
    moved = score.diversity_from_source(clf, imgs, imgs[::-1])
    assert ((moved >= 0) & (moved <= 1)).all() and moved[0] > 1e-4
    assert score.diversity_metric() == "feature-cosine"  # no LPIPS weights here
    assert score.diversity_metric(clf) == "smallcnn-feature-cosine"
    assert (
        clf.judge == "smallcnn" and clf.fit_on == "train" and clf.train_images == 15
    )  # the train split
    assert score.spread(clf, [imgs[0]] * 3) == pytest.approx(0.0, abs=1e-9)
    assert 0 < score.spread(clf, imgs) <= 1


def test_reference_classifier_is_cached_on_disk(clf, colors, monkeypatch, workspace_home):
    files = sorted((workspace_home / "refclf").glob(f"*{clf.fingerprint}*"))
    files = [p for p in files if p.suffix != ".lock"]  # the fit's inter-process lock, no data
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    assert not list((workspace_home / "refclf").glob("*.pt")) and clf.path.suffix == ".safetensors"
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert score.reference_classifier(str(colors), judge="smallcnn", epochs=20) is clf  # in memory

    def no_fit(*a, **k):
        raise AssertionError("refitted instead of reading the cache")

    monkeypatch.setattr(score, "fit_judge", no_fit)
    score.clear_classifier_cache()  # a new process: only the workspace files remain
    again = score.reference_classifier(str(colors), judge="smallcnn", epochs=20)
    assert again is not clf
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    imgs = [_solid(rgb) for rgb in COLORS.values()]
    np.testing.assert_allclose(again.probs(imgs), clf.probs(imgs), atol=1e-6)
    with pytest.raises(AssertionError, match="refitted"):  # another setting is another model
        score.reference_classifier(str(colors), judge="smallcnn", epochs=21)


# --------------------------------------------------------------------------- optional models


def test_clip_is_optional_and_never_downloads():
    if score.find_local_clip() is not None:
        pytest.skip("a CLIP checkpoint is in the local cache")
    with pytest.raises(ValueError, match="not available"):
        score.clip_probs([_solid((0, 0, 0))], ["a", "b"])
    assert score.lpips_available() is False
