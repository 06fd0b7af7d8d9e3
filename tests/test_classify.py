"""Classifier math and data: soft labels, losses, p-mixing, batch mixing, long-tail figures,
synthetic folders, augmentation (fast, no training)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffmix.classify import TrainConfig, plan_epoch, read_synthetic
from diffmix.classify.data import augment_batch
from diffmix.classify.losses import (
    balanced_softmax_logits,
    class_balanced_weights,
    drw_start_epoch,
    lr_factor,
    smooth_one_hot,
    soft_cross_entropy,
)
from diffmix.classify.metrics import (
    accuracy,
    class_groups,
    confusion_matrix,
    group_accuracies,
    per_class_accuracy,
)
from diffmix.labels import soft_label
from diffmix.mixing import cutmix_batch, cutmix_box, mix_batch, mixup_batch

CLASSES = ["ant", "bee", "cat", "dog"]


def write_synthetic(
    root: Path, rows: list[dict], class_names: list[str] = CLASSES, size: int = 16
) -> Path:
    """A synthetic dataset folder in the generate-stage format, with tiny solid images."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, row in enumerate(rows):
        file_name = row.get("file_name") or f"{row['target_class']}/syn_{k:04d}.png"
        if row.get("_write", True):
            (root / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), (10 * k % 255, 80, 160)).save(root / file_name)
        full = {
            "file_name": file_name,
            "source_id": row.get("source_id", f"train/{row['source_class']}/x_{k}.png"),
            "source_class": row["source_class"],
            "target_class": row["target_class"],
            "strength": row["strength"],
            "seed": k,
            "strategy": "diff-mix",
            "prompt": f"a photo of a {row['target_class']}",
            "soft_label": {row["target_class"]: 1.0},  # deliberately stale: must be recomputed
            "faithfulness": 0.9,
            "diversity": 0.5,
            "kept": row.get("kept", True),
        }
        lines.append(json.dumps(full))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (root / "config.json").write_text(json.dumps({"class_names": class_names, "dataset": "demo"}))
    return root


# --------------------------------------------------------------------------- losses


def test_soft_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([[0.7, 0.3, 0.0]])
    logz = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    expected = -(0.7 * (2.0 - logz) + 0.3 * (0.0 - logz))
    assert soft_cross_entropy(logits, y).item() == pytest.approx(expected, abs=1e-6)


def test_soft_cross_entropy_equals_standard_ce_for_one_hot_and_smoothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    one_hot = smooth_one_hot(labels, 5)
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    smoothed = smooth_one_hot(labels, 5, 0.1)
    assert torch.allclose(smoothed.sum(-1), torch.ones(8))
    assert torch.allclose(
        soft_cross_entropy(logits, smoothed), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    assert torch.allclose(
        soft_cross_entropy(logits, one_hot, w), F.cross_entropy(logits, labels, weight=w)
    )


def test_diffmix_soft_label_and_gamma():
    y = soft_label(0, 2, 0.81, 0.5, num_classes=4)  # 0.81 ** 0.5 = 0.9
    assert np.allclose(y, [0.1, 0.0, 0.9, 0.0])
    assert np.allclose(soft_label(1, 1, 0.3, 0.5, num_classes=3), [0.0, 1.0, 0.0])
    assert soft_label(0, 1, 0.0, 1.0, num_classes=2).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="1.5"):
        soft_label(0, 1, 1.5, 0.5, num_classes=2)
    with pytest.raises(ValueError, match="gamma"):
        soft_label(0, 1, 0.5, 0.0, num_classes=2)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    factors = [lr_factor(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert lr_factor(0, 10, 0) == 1.0


# --------------------------------------------------------------------------- p-mixing sampler


def test_plan_epoch_replaces_about_p_with_synthetic_labels():
    labels = torch.arange(2000) % 10
    plan = plan_epoch(labels, num_synthetic=50, p=0.3, seed=1, epoch=0)
    assert sorted(plan.real.tolist()) == list(range(2000))  # a permutation of the real set
    frac = plan.replaced.float().mean().item()
    assert abs(frac - 0.3) < 0.035  # 3.5 sigma for n = 2000
    assert plan.synthetic[plan.replaced].min() >= 0
    assert plan.synthetic[plan.replaced].max() < 50
    assert (plan.synthetic[~plan.replaced] == -1).all()
    none = plan_epoch(labels, num_synthetic=50, p=0.0, seed=1, epoch=0)
    assert not none.replaced.any()
    assert plan_epoch(labels, num_synthetic=5, p=1.0, seed=1, epoch=0).replaced.all()


def test_plan_epoch_is_deterministic_per_seed_and_epoch():
    labels = torch.arange(200) % 4
    a = plan_epoch(labels, num_synthetic=20, p=0.5, seed=3, epoch=2)
    b = plan_epoch(labels, num_synthetic=20, p=0.5, seed=3, epoch=2)
    c = plan_epoch(labels, num_synthetic=20, p=0.5, seed=3, epoch=3)
    d = plan_epoch(labels, num_synthetic=20, p=0.5, seed=4, epoch=2)
    assert torch.equal(a.real, b.real) and torch.equal(a.synthetic, b.synthetic)
    assert not torch.equal(a.real, c.real)
    assert not torch.equal(a.synthetic, d.synthetic)


def test_plan_epoch_same_source_and_balanced_sampling():
    labels = torch.tensor([0] * 90 + [1] * 10)
    sources = torch.tensor([5, 5, 7, -1])  # synthetic 0, 1 from real 5; 2 from real 7
    plan = plan_epoch(
        labels, num_synthetic=4, p=1.0, seed=0, epoch=0, synthetic_sources=sources,
        pick="same_source",
    )  # fmt: skip
    for real, syn in zip(plan.real.tolist(), plan.synthetic.tolist(), strict=True):
        if real == 5:
            assert syn in (0, 1)
        elif real == 7:
            assert syn == 2
    bal = plan_epoch(labels, seed=0, epoch=0, balanced=True)
    minority = (labels[bal.real] == 1).float().mean().item()
    assert 0.35 < minority < 0.65  # 10 % of the data, drawn about half of the time
    with pytest.raises(ValueError, match="1.2"):
        plan_epoch(labels, num_synthetic=3, p=1.2)


# --------------------------------------------------------------------------- batch mixing


def test_mixup_and_cutmix_mix_labels_by_the_mixed_share():
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    y = torch.eye(2)
    perm = torch.tensor([1, 0])
    # one convention (diffmix.mixing): lam is the partner's share
    xm, ym = mixup_batch(x, y, 0.3, perm)
    assert torch.allclose(xm[0], torch.full((3, 8, 8), 0.3))
    assert torch.allclose(ym[0], torch.tensor([0.7, 0.3]))
    box = cutmix_box(8, 8, 0.25, torch.Generator().manual_seed(0))  # a 4x4 box inside
    assert (box.bottom - box.top, box.right - box.left) == (4, 4)
    xc, yc, share = cutmix_batch(x, y, box, perm)
    assert share == pytest.approx(0.25)
    assert xc[0].mean().item() == pytest.approx(0.25)  # 16 of 64 pixels pasted from image 1
    assert torch.allclose(yc[0], torch.tensor([0.75, 0.25]))
    # The batch-level call: labels still distributions, same generator -> same batch.
    g = torch.Generator().manual_seed(0)
    xb = torch.rand(6, 3, 8, 8, generator=g)
    yb = smooth_one_hot(torch.arange(6) % 3, 3, 0.1)
    for kind in ("mixup", "cutmix"):
        x1, y1 = mix_batch(xb, yb, kind, 1.0, torch.Generator().manual_seed(5))
        x2, y2 = mix_batch(xb, yb, kind, 1.0, torch.Generator().manual_seed(5))
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.allclose(y1.sum(-1), torch.ones(6))
        assert not torch.equal(y1, yb)
    assert mix_batch(xb, yb, "none", 1.0, g)[1] is yb


# --------------------------------------------------------------------------- long tail


def test_balanced_softmax_and_drw_weights():
    counts = torch.tensor([100, 10, 1])
    logits = torch.zeros(2, 3)
    shifted = balanced_softmax_logits(logits, counts)
    assert torch.allclose(shifted.softmax(-1)[0], counts.float() / counts.sum())
    w = class_balanced_weights(counts, beta=0.999)
    assert w.sum().item() == pytest.approx(3.0)
    assert w[0] < w[1] < w[2]
    assert torch.allclose(class_balanced_weights(counts, beta=0.0), torch.ones(3))
    assert drw_start_epoch(30) == 20 and drw_start_epoch(3) == 2


def test_head_medium_tail_groups_and_accuracies():
    counts = [50, 5, 30, 1, 20, 10]  # sorted: 0, 2, 4 | 5, 1 | 3 -> thirds of 6 = 2 each
    groups = class_groups(counts, "thirds")
    assert groups == {"head": [0, 2], "medium": [4, 5], "tail": [1, 3]}
    assert class_groups([150, 50, 5], "counts") == {"head": [0], "medium": [1], "tail": [2]}
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5])
    preds = torch.tensor([0, 1, 1, 1, 2, 0, 0, 5])
    conf = confusion_matrix(preds, labels, 6)
    assert conf.tolist()[0] == [1, 1, 0, 0, 0, 0]
    assert accuracy(conf) == pytest.approx(5 / 8)
    per = per_class_accuracy(conf)
    assert per == [0.5, 1.0, 1.0, 0.0, 0.0, 1.0]
    acc = group_accuracies(per, groups)
    assert acc == {"head": 0.75, "medium": 0.5, "tail": 0.5}
    assert group_accuracies([None, 1.0], {"head": [0], "medium": [], "tail": [1]})["head"] is None


def test_long_tail_subset_counts_feed_the_groups(workspace_home):
    from diffmix.data import load_dataset, make_subset

    ds = load_dataset("demo")
    sub = make_subset(ds, imbalance=0.1, seed=0)
    counts = list(sub.counts.values())
    assert counts[0] == 60 and counts[-1] == 6
    groups = class_groups(counts)
    assert groups["head"] == [0, 1, 2, 3] and groups["tail"] == [8, 9, 10, 11]


# --------------------------------------------------------------------------- synthetic folders


def test_read_synthetic_filters_and_recomputes_soft_labels(tmp_path, caplog):
    root = write_synthetic(
        tmp_path / "syn",
        [
            {"source_class": "ant", "target_class": "bee", "strength": 0.25},
            {"source_class": "cat", "target_class": "cat", "strength": 0.7},
            {"source_class": "dog", "target_class": "ant", "strength": 0.9, "kept": False},
            {"source_class": "ant", "target_class": "dog", "strength": 0.5, "_write": False},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="diffmix"):
        syn = read_synthetic([root], CLASSES, gamma=0.5)
    assert len(syn) == 2 and syn.excluded == 1 and syn.missing == 1
    assert any("not found" in r.message for r in caplog.records)
    assert torch.allclose(syn.targets[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # 0.25 ** 0.5
    assert torch.allclose(syn.targets[1], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert syn.target_labels.tolist() == [1, 2] and syn.source_labels.tolist() == [0, 2]
    # Another gamma, other labels from the same rows; folders concatenate.
    syn1 = read_synthetic([root, root], CLASSES, gamma=1.0)
    assert len(syn1) == 4
    assert torch.allclose(syn1.targets[0], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    # Same classes in another order are matched by name.
    assert len(read_synthetic([root], CLASSES[::-1], gamma=0.5)) == 2


def test_read_synthetic_refuses_other_classes_and_bad_folders(tmp_path):
    root = write_synthetic(
        tmp_path / "syn",
        [{"source_class": "ant", "target_class": "bee", "strength": 0.5}],
        class_names=["ant", "bee", "eel"],
    )
    with pytest.raises(ValueError) as err:
        read_synthetic([root], CLASSES, gamma=0.5)
    msg = str(err.value)
    assert "eel" in msg and "cat" in msg and "dog" in msg
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        read_synthetic([tmp_path], CLASSES, gamma=0.5)
    with pytest.raises(ValueError, match="not found"):
        read_synthetic([tmp_path / "nope"], CLASSES, gamma=0.5)
    bad = write_synthetic(
        tmp_path / "bad", [{"source_class": "ant", "target_class": "bee", "strength": 1.5}]
    )
    with pytest.raises(ValueError, match="1.5"):
        read_synthetic([bad], CLASSES, gamma=0.5)


# --------------------------------------------------------------------------- config, augmentation


def test_config_validation():
    cfg = TrainConfig(synthetic="a, b")
    assert cfg.synthetic == ["a", "b"] and cfg.resolved().p == 0.1
    assert TrainConfig().resolved().p == 0.0
    assert TrainConfig(seed=4).resolved().subset_seed == 4
    with pytest.raises(ValueError, match="synthetic"):
        TrainConfig(p=0.3)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(shots=2, imbalance=0.1)
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(epoch=3)
    with pytest.raises(ValueError, match=r"resnet5O.*timm.list_models"):
        TrainConfig(arch="resnet5O")
    with pytest.raises(ValueError, match="no such file"):
        TrainConfig(pretrained="missing.pt")
    assert TrainConfig(pretrained="timm/resnet18.a1_in1k").pretrained == "timm/resnet18.a1_in1k"


def test_local_pretrained_checkpoints(tmp_path):
    from diffmix.classify import create_classifier

    torch.manual_seed(0)
    src = create_classifier("smallcnn", 3, resolution=32)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "ckpt.pt")  # fmt: skip
    model = create_classifier("smallcnn", 7, resolution=32, pretrained=str(tmp_path / "ckpt.pt"))
    assert torch.equal(model.features[0].weight, src.features[0].weight)
    assert model.head.weight.shape == (7, 128)  # another head: left at its fresh init
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="fits only"):
        create_classifier("smallcnn", 3, resolution=32, pretrained=str(tmp_path / "other.pt"))
    (tmp_path / "evil.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="plain tensor checkpoint"):
        create_classifier("smallcnn", 3, resolution=32, pretrained=str(tmp_path / "evil.pt"))


def test_augment_batch_is_seeded_and_flip_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    out = augment_batch(x, "flip", torch.Generator().manual_seed(1))
    for a, b in zip(x, out, strict=True):
        assert torch.allclose(b, a, atol=1e-5) or torch.allclose(b, a.flip(-1), atol=1e-5)
    for kind in ("resized_crop", "crop"):
        a = augment_batch(x, kind, torch.Generator().manual_seed(2))
        b = augment_batch(x, kind, torch.Generator().manual_seed(2))
        assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    with pytest.raises(ValueError, match="rotate"):
        augment_batch(x, "rotate", g)
