"""The judges of generated images: the Lite0 probe on real photos, fitted on the run's subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest

from diffmix import score
from diffmix.data import load_dataset, make_subset


def test_default_judge_by_dataset():
    assert score.default_judge("demo") == score.default_judge("demo:3") == "smallcnn"
    assert score.default_judge("../shared/data/flowers17") == "lite0"
    with pytest.raises(ValueError, match="unknown judge 'clip'"):
        score.reference_classifier("demo", judge="clip")


def test_lite0_judge_fitted_on_the_subset_only(flowers17, workspace_home):
    """Fitted on 2 shots per class, it names held-out photos; it saw only those 24 labels."""
    ds = load_dataset(str(flowers17), split="train")
    sub = make_subset(ds, shots=2, seed=0)
    clf = score.reference_classifier(ds, indices=sub.indices, size=128)  # 224 by default; CPU
    assert (clf.judge, clf.fit_on, clf.train_images, clf.size) == ("lite0", "subset", 24, 128)
    meta = json.loads(clf.path.with_suffix(".json").read_text())
    assert meta["indices"] == list(sub.indices) and meta["judge"] == "lite0"
    # held-out photos (test split: never seen), 1 per class
    test = load_dataset(str(flowers17), split="test")
    per_class = {}
    for i, y in enumerate(test.labels):
        per_class.setdefault(y, i)
    images = [test.image(i) for i in per_class.values()]
    names = [test.class_names[y] for y in per_class]
    faith = score.faithfulness(clf, images, names)
    assert faith.mean() > 0.3  # chance: 1/12
    assert (clf.probs(images).argmax(1) == list(per_class)).mean() >= 0.75
    # diversity: its ImageNet features, named as such
    assert score.diversity_metric(clf) == "lite0-imagenet-feature-cosine"
    div = score.diversity_from_source(clf, images[:2], images[:2])
    np.testing.assert_allclose(div, 0.0, atol=1e-9)
    assert score.diversity_from_source(clf, images[:2], images[2:4]).min() > 0.01
    assert score.reference_classifier(ds, indices=sub.indices, size=128) is clf
    with pytest.raises(ValueError, match="outside the train split"):
        score.reference_classifier(ds, indices=[len(ds)])


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-colors") / "colors"
    return write_color_folder(root)


def test_generate_judges_with_the_subset_and_refuses_a_leaky_filter(colors, tiny_sd_dir, tmp_path):
    from diffmix.generate import GenerateConfig, generate, read_rows

    cfg = GenerateConfig(dataset=str(colors), model=str(tiny_sd_dir), strategy="real-mix",
                         shots=2, multiplier=1, strengths=[0.5], num_inference_steps=1,
                         batch_size=6, filter_bottom=0.34)  # fmt: skip
    out = tmp_path / "gen"
    summary = generate(cfg, out)
    config = json.loads((out / "config.json").read_text())
    assert config["judge"]["fit_on"] == "subset" and config["judge"]["train_images"] == 6
    assert config["judge"]["judge"] == "lite0"
    rows = read_rows(out / "metadata.jsonl")
    assert len(rows) == 6 and summary["kept"] == 4
    assert {r["judge"] for r in rows} == {"lite0"}
    assert "fitted on 6 labelled images (this run's subset)" in (out / "README.md").read_text()
    # rows scored by an earlier version's judge (whole train split): filtering them is refused
    for r in rows:
        r.pop("judge")
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="judge fitted on the whole train split"):
        generate(cfg, out)
    assert generate(cfg.model_copy(update={"filter_bottom": 0.0}), out)["kept"] == 6
