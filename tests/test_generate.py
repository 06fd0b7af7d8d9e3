"""Generation planning as pure data: counts, target rules, strengths, batches, determinism."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest

from diffmix.generate import (
    GenerateConfig,
    assign_batches,
    bottom_fraction_mask,
    command_for,
    make_plan,
    plan_tasks,
    read_confusion,
    target_weights,
    task_seed,
)

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # 10 sources over 4 classes


def _plan(labels=LABELS, **kw):
    args = dict(num_classes=4, multiplier=3, strengths=[0.7], target_rule="other", seed=0,
                batch_size=4)  # fmt: skip
    return plan_tasks(labels, **{**args, **kw})


@pytest.fixture(scope="module")
def tiny_colors(tmp_path_factory):
    """Three colour classes x 5 images of 24 px (12 train images after the test hold-out)."""
    root = tmp_path_factory.mktemp("colors") / "colors"
    return write_color_folder(root)


# --------------------------------------------------------------------------- counts & rules


def test_counts_sources_and_task_ids():
    rows = _plan()
    assert len(rows) == 3 * len(LABELS)
    assert [r["task"] for r in rows] == list(range(30))
    # every source exactly M times, task t -> source t mod n
    assert Counter(r["source_pos"] for r in rows) == dict.fromkeys(range(10), 3)
    assert all(r["source_pos"] == r["task"] % 10 for r in rows)
    assert all(r["source_label"] == LABELS[r["source_pos"]] for r in rows)
    assert len(_plan(limit=7)) == 7 and len(_plan(limit=100)) == 30


def test_mix_target_never_the_source_and_roughly_uniform():
    rows = _plan(labels=[0] * 50 + [1] * 50, num_classes=5, multiplier=20)
    assert all(r["target_label"] != r["source_label"] for r in rows)
    freq = Counter(r["target_label"] for r in rows if r["source_label"] == 0)
    assert set(freq) == {1, 2, 3, 4}
    assert all(abs(freq[c] / 1000 - 0.25) < 0.05 for c in freq)  # 1000 draws, 4 classes


def test_same_and_any_target_rules():
    same = _plan(target_rule="same")
    assert all(r["target_label"] == r["source_label"] for r in same)
    anyr = _plan(target_rule="any", multiplier=40)
    assert any(r["target_label"] == r["source_label"] for r in anyr)
    assert set(r["target_label"] for r in anyr) == {0, 1, 2, 3}


def test_fixed_and_uniform_strengths():
    assert {r["strength"] for r in _plan(strengths=[0.9])} == {0.9}
    rows = _plan(strengths=[0.3, 0.5, 0.9], multiplier=60)
    freq = Counter(r["strength"] for r in rows)
    assert set(freq) == {0.3, 0.5, 0.9}
    assert all(abs(n / 600 - 1 / 3) < 0.06 for n in freq.values())
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            _plan(strengths=[0.5, bad])


def test_confusion_targets_follow_the_matrix_off_diagonal():
    conf = np.array([[50, 30, 10, 0], [0, 9, 0, 0], [5, 5, 5, 5], [1, 1, 1, 1]], float)
    w = target_weights("confusion", 0, 4, exclude_source=True, confusion=conf)
    np.testing.assert_allclose(w, [0, 0.75, 0.25, 0])  # diagonal dropped, row renormalized
    w1 = target_weights("confusion", 1, 4, exclude_source=True, confusion=conf)
    np.testing.assert_allclose(w1, [1 / 3, 0, 1 / 3, 1 / 3])  # no confusion: uniform fallback
    rows = _plan(labels=[0] * 100 + [1] * 100, multiplier=10, targets="confusion", confusion=conf)
    t0 = Counter(r["target_label"] for r in rows if r["source_label"] == 0)
    assert set(t0) == {1, 2} and abs(t0[1] / 1000 - 0.75) < 0.05
    t1 = Counter(r["target_label"] for r in rows if r["source_label"] == 1)
    assert set(t1) == {0, 2, 3}


def test_tail_targets_weighted_toward_rare_classes():
    labels = [0] * 100 + [1] * 10 + [2] * 1
    w = target_weights("tail", 0, 3, exclude_source=True, counts=[100, 10, 1])
    np.testing.assert_allclose(w, [0, 1 / 11, 10 / 11])
    rows = _plan(labels=labels, num_classes=3, multiplier=10, targets="tail")
    # sources keep their (head-heavy) distribution; targets go mostly to the tail class
    assert Counter(r["source_label"] for r in rows) == {0: 1000, 1: 100, 2: 10}
    head = Counter(r["target_label"] for r in rows if r["source_label"] == 0)
    assert abs(head[2] / 1000 - 10 / 11) < 0.04
    assert Counter(r["target_label"] for r in rows)[2] > 800


def test_partners_for_mixup_are_of_the_target_class():
    rows = _plan(target_rule="any", needs_partner=True, multiplier=5)
    for r in rows:
        assert LABELS[r["partner_pos"]] == r["target_label"]
        if r["target_label"] == r["source_label"] and LABELS.count(r["source_label"]) > 1:
            assert r["partner_pos"] != r["source_pos"]  # not mixed with itself


def test_determinism_and_seeds():
    a = _plan(strengths=[0.3, 0.9], targets="uniform")
    assert a == _plan(strengths=[0.3, 0.9], targets="uniform")
    b = _plan(strengths=[0.3, 0.9], seed=1)
    assert a != b
    assert [r["seed"] for r in a] == [task_seed(0, t) for t in range(30)]
    assert len({r["seed"] for r in a}) == 30 and all(0 <= r["seed"] < 2**32 for r in a)
    assert task_seed(0, 5) != task_seed(1, 5)
    # a task's draws do not depend on how many tasks there are
    strip = lambda rows: [{k: v for k, v in r.items() if k != "batch"} for r in rows]  # noqa: E731
    assert strip(_plan(limit=5)) == strip(_plan()[:5])


def test_errors_in_planning():
    with pytest.raises(ValueError, match="subset is empty"):
        plan_tasks([], num_classes=3, multiplier=2, strengths=[0.5], target_rule="other")
    with pytest.raises(ValueError, match="at least two classes"):
        plan_tasks([0, 0], num_classes=1, multiplier=1, strengths=[0.5], target_rule="other")
    with pytest.raises(ValueError, match="unknown target rule 'best'"):
        target_weights("best", 0, 3, exclude_source=True)


# --------------------------------------------------------------------------- batches


def test_assign_batches():
    order = assign_batches([0.5] * 10, 4, "order")
    assert order == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    strengths = [0.9, 0.5, 0.5, 0.9, 0.5, 0.9, 0.9, 0.5, 0.5, 0.5, 0.9]
    b = assign_batches(strengths, 2, "strength")
    sizes = Counter(b)
    assert max(sizes.values()) <= 2 and sorted(sizes) == list(range(len(sizes)))
    homogeneous = sum(len({strengths[i] for i in range(11) if b[i] == k}) == 1 for k in sizes)
    assert homogeneous >= len(sizes) - 2  # at most one mixed batch per window
    # windows keep the plan order: batch ids never go back by more than a window
    assert b[:4] != b[-4:]
    assert assign_batches([0.5] * 5, 2, "strength") == assign_batches([0.5] * 5, 2, "order")
    with pytest.raises(ValueError, match="grouping 'x'"):
        assign_batches([0.5], 2, "x")


def test_bottom_fraction_mask_is_round_of_fraction():
    rng = np.random.default_rng(0)
    for n, f in ((24, 0.25), (10, 0.17), (7, 0.5), (3, 0.1), (0, 0.3)):
        s = rng.random(n)
        keep = bottom_fraction_mask(s, f)
        drop = int(np.floor(f * n + 0.5))
        assert (~keep).sum() == drop
        if drop:
            assert s[~keep].max() <= s[keep].min()
    assert bottom_fraction_mask([0.5, 0.5, 0.5], 0.34).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="1.0"):
        bottom_fraction_mask([0.1], 1.0)


# --------------------------------------------------------------------------- files & config


def test_read_confusion(tmp_path):
    p = tmp_path / "confusion.json"
    p.write_text(json.dumps({"class_names": ["b", "a"], "matrix": [[1, 2], [3, 4]]}))
    np.testing.assert_array_equal(read_confusion(p, ["a", "b"]), [[4, 3], [2, 1]])
    with pytest.raises(ValueError, match="only in the dataset: \\['c'\\]"):
        read_confusion(p, ["a", "b", "c"])
    p.write_text(json.dumps({"class_names": ["a"], "matrix": [[1, 2]]}))
    with pytest.raises(ValueError, match="shape"):
        read_confusion(p, ["a"])
    with pytest.raises(ValueError, match="not found"):
        read_confusion(tmp_path / "nope.json", ["a"])


def test_config_validation_errors():
    with pytest.raises(ValueError, match="unknown strategy 'bogus'.*diff-mix"):
        GenerateConfig(strategy="bogus")
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=f"strength must be in \\(0, 1\\], got {bad!r}"):
            GenerateConfig(strategy="real-mix", strengths=[bad])
    with pytest.raises(ValueError, match="needs a personalized adapter.*--adapter.*real-mix"):
        GenerateConfig(strategy="diff-mix")
    with pytest.raises(ValueError, match="not both"):
        GenerateConfig(strategy="real-mix", shots=2, imbalance=0.1)
    with pytest.raises(ValueError, match="strength must be 1"):
        GenerateConfig(strategy="real-gen", strengths=[0.5])
    with pytest.raises(ValueError, match="--confusion FILE"):
        GenerateConfig(strategy="real-mix", targets="confusion")
    with pytest.raises(ValueError, match="keeps the source class"):
        GenerateConfig(strategy="real-aug", targets="tail")
    with pytest.raises(ValueError, match="extra"):
        GenerateConfig(strategy="real-mix", multiplyer=3)
    assert GenerateConfig(strategy="real-gen").resolved().strengths == [1.0]
    assert GenerateConfig(strategy="real-mix").resolved().strengths == [0.7]


def test_command_for_round_trips_through_the_cli_parser():
    from diffmix.cli import build_parser

    cfg = GenerateConfig(dataset="demo", strategy="real-mix", multiplier=3, strengths=[0.5, 0.9],
                         shots=5, targets="tail", num_inference_steps=10, filter_bottom=0.1)  # fmt: skip
    cmd = command_for(cfg, "out dir")
    assert "--strengths 0.5,0.9" in cmd and "'out dir'" in cmd
    import shlex

    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert (args.multiplier, args.strengths, args.shots, args.targets) == (3, [0.5, 0.9], 5, "tail")
    assert (args.num_inference_steps, args.filter_bottom, args.out) == (10, 0.1, "out dir")


def test_make_plan_on_a_dataset(tiny_colors):
    from diffmix.data import load_dataset, make_subset

    ds = load_dataset(str(tiny_colors), split="train")
    sub = make_subset(ds, shots=2, seed=0)
    cfg = GenerateConfig(dataset=str(tiny_colors), shots=2, strategy="cutmix", multiplier=2,
                         strengths=[0.3])  # fmt: skip
    plan = make_plan(cfg, ds, sub)
    assert len(plan) == 2 * len(sub) == 12
    for t in plan:
        assert t.source_index in sub.indices and ds.items[t.source_index].id == t.source_id
        assert ds.class_names[ds.items[t.source_index].label] == t.source_class
        assert t.partner_index in sub.indices
        assert ds.class_names[ds.items[t.partner_index].label] == t.target_class
    assert make_plan(cfg, ds, sub) == plan
