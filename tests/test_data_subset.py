"""Few-shot and long-tail subsets: counts, exact profiles, determinism, saving, checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from diffmix.data import (
    ImageDataset,
    Item,
    Subset,
    SubsetMismatchError,
    load_dataset,
    load_subset,
    make_subset,
    summarize,
)
from diffmix.data.subset import long_tail_counts


def _dataset(sizes: list[int], split: str = "train", fingerprint: str = "f" * 16) -> ImageDataset:
    """An in-memory dataset with ``sizes[c]`` items of class ``c`` (interleaved order)."""
    items = []
    remaining = list(sizes)
    while any(remaining):
        for c, left in enumerate(remaining):
            if left:
                items.append(Item(id=f"c{c}/{sizes[c] - left}", label=c))
                remaining[c] -= 1
    return ImageDataset(
        spec="memory",
        split=split,
        class_names=[f"c{c}" for c in range(len(sizes))],
        items=items,
        loader=lambda item: Image.new("RGB", (4, 4)),
        fingerprint=fingerprint,
    )


def _labels(ds: ImageDataset, subset: Subset) -> list[int]:
    return [ds.items[i].label for i in subset.indices]


def test_few_shot_counts_sorted_indices_and_short_class_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = _dataset([10, 8, 3, 12])
    with caplog.at_level(logging.WARNING):
        sub = make_subset(ds, shots=5, seed=0)
    assert sub.counts == {"c0": 5, "c1": 5, "c2": 3, "c3": 5}
    assert [_labels(ds, sub).count(c) for c in range(4)] == [5, 5, 3, 5]
    assert list(sub.indices) == sorted(set(sub.indices))
    assert "'c2' has 3 images, fewer than 5 shots" in caplog.text
    assert sub.fingerprint == ds.fingerprint and sub.shots == 5 and sub.imbalance is None


def test_determinism_per_seed() -> None:
    ds = _dataset([30] * 6)
    a, b = make_subset(ds, shots=4, seed=7), make_subset(ds, shots=4, seed=7)
    assert a.indices == b.indices
    others = {make_subset(ds, shots=4, seed=s).indices for s in range(8, 12)}
    assert a.indices not in others and len(others) == 4


def test_long_tail_profile_exact() -> None:
    # n_i = floor(20 * 0.1 ** (i / 4)): 20, 11.2, 6.3, 3.6, 2.0
    assert long_tail_counts([20] * 5, 0.1) == [20, 11, 6, 3, 2]
    assert long_tail_counts([20, 5, 20, 20, 20], 0.1) == [20, 5, 6, 3, 2]  # capped by class
    assert long_tail_counts([100] * 2, 0.29) == [100, 29]  # 100 * 0.29 is 28.999999999999996
    assert long_tail_counts([4] * 3, 0.01) == [4, 1, 1]  # never below 1
    assert long_tail_counts([7, 9], 1.0) == [7, 9]
    ds = _dataset([20] * 5)
    sub = make_subset(ds, imbalance=0.1, seed=3)
    assert list(sub.counts.values()) == [20, 11, 6, 3, 2]
    assert [_labels(ds, sub).count(c) for c in range(5)] == [20, 11, 6, 3, 2]
    assert sub.imbalance == 0.1 and sub.shots is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shots": 2, "imbalance": 0.5}, "not both"),
        ({"shots": 0}, "shots must be an integer >= 1, got 0"),
        ({"shots": 2.5}, "got 2.5"),
        ({"imbalance": 0.0}, r"imbalance must be in \(0, 1\], got 0.0"),
        ({"imbalance": 1.5}, "got 1.5"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_subset(_dataset([5, 5]), **kwargs)


def test_test_split_is_refused() -> None:
    with pytest.raises(ValueError, match="train split only, got split 'test'"):
        make_subset(_dataset([5, 5], split="test"), shots=1)


def test_no_subset_means_whole_train_split() -> None:
    ds = _dataset([3, 4])
    sub = make_subset(ds)
    assert sub.indices == tuple(range(7)) and sub.counts == {"c0": 3, "c1": 4}


def test_save_load_and_check(tmp_path: Path) -> None:
    ds = _dataset([6, 6, 6])
    sub = make_subset(ds, shots=2, seed=5)
    path = sub.save(tmp_path / "run" / "subset.json")
    loaded = Subset.load(path)
    assert loaded == sub
    loaded.check(ds)
    assert len(loaded.apply(ds)) == 6
    other = _dataset([6, 6, 6], fingerprint="0" * 16)
    with pytest.raises(SubsetMismatchError, match="fingerprint ffffffffffffffff.*0000000000000000"):
        loaded.check(other)
    data = json.loads(path.read_text())
    data["surprise"] = 1
    with pytest.raises(ValueError, match="unknown keys \\['surprise'\\]"):
        Subset.from_dict(data)


def test_train_subset_never_contains_test_images(flowers17: Path) -> None:
    ds, sub = load_subset(str(flowers17), shots=5, seed=0)
    test = load_dataset(str(flowers17), split="test")
    assert set(sub.counts.values()) == {5}
    chosen = {ds.items[i].id for i in sub.indices}
    assert not chosen & {it.id for it in test.items}
    assert len(ds) + len(test) == 360 and len(test) == 12 * 6
    summary = summarize(ds, sub)
    assert summary["num_images"] == 60 and summary["indices"] == list(sub.indices)
    assert summary["image_sizes"]["max_width"] > 0
    with pytest.raises(ValueError, match="train split only"):
        make_subset(test, shots=5)
