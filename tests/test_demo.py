"""The demo generator: deterministic, masked, class-independent backgrounds, captioned corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffmix.data.demo import (
    BODY_COLORS,
    COLORS,
    DEMO_CLASSES,
    DemoConfig,
    all_attribute_combinations,
    class_prompt,
    render_caption_sample,
    render_demo_image,
    write_demo,
)


def test_rendering_is_a_pure_function_of_its_arguments():
    a, ma = render_demo_image("quellan", 3, split="train", seed=0)
    b, mb = render_demo_image("quellan", 3, split="train", seed=0)
    assert a.tobytes() == b.tobytes() and ma.tobytes() == mb.tobytes()
    c, _ = render_demo_image("quellan", 3, split="train", seed=1)
    d, _ = render_demo_image("quellan", 3, split="test", seed=0)
    assert a.tobytes() != c.tobytes() and a.tobytes() != d.tobytes()


@pytest.mark.parametrize("name", list(DEMO_CLASSES))
def test_mask_covers_a_bird_of_the_class_body_colour(name):
    image, mask = render_demo_image(name, 0, size=64)
    assert image.mode == "RGB" and image.size == (64, 64)
    m = np.asarray(mask)
    assert set(np.unique(m)) <= {0, 255}
    frac = (m > 0).mean()
    assert 0.04 < frac < 0.6, frac
    # Of the body colours, the class's own is the one most pixels inside the mask are near.
    px = np.asarray(image)[m > 0].astype(float)

    def near(color: str) -> float:
        return float((np.abs(px - np.array(COLORS[color], float)).sum(axis=1) < 90).mean())

    assert max(BODY_COLORS, key=near) == DEMO_CLASSES[name].body


def test_classes_differ_only_by_attributes_and_names_say_nothing():
    combos = {(a.body, a.head, a.pattern) for a in DEMO_CLASSES.values()}
    assert len(combos) == len(DEMO_CLASSES) >= 10
    words = set(COLORS) | {"plain", "striped", "spotted", "bird"}
    for name in DEMO_CLASSES:
        assert not any(w in name for w in words)
        assert name not in class_prompt(name)


def test_backgrounds_vary_independently_of_class():
    # Same index, different classes -> different backgrounds (rng is keyed per class),
    # and within a class the background differs image to image.
    bgs = []
    for name in list(DEMO_CLASSES)[:3]:
        for i in range(3):
            im, m = render_demo_image(name, i)
            arr = np.asarray(im).astype(float)
            bgs.append(arr[np.asarray(m) == 0].mean(axis=0))
    bgs = np.array(bgs)
    assert np.linalg.norm(bgs - bgs.mean(0), axis=1).mean() > 10


def test_caption_corpus_uses_plain_words_and_covers_the_combinations():
    caps = [render_caption_sample(i, seed=0)[2] for i in range(300)]
    assert all("bird" in c for c in caps)
    for name in DEMO_CLASSES:
        assert not any(name in c for c in caps)
    assert all(any(color in c for color in BODY_COLORS) for c in caps)
    assert len(set(caps)) > 100
    assert len(all_attribute_combinations()) == 96
    im, mask, cap = render_caption_sample(7, seed=0)
    again = render_caption_sample(7, seed=0)
    assert im.tobytes() == again[0].tobytes() and cap == again[2]


def test_write_demo_layout_counts_and_cache(tmp_path):
    cfg = DemoConfig(seed=3, train_per_class=2, test_per_class=1, size=48)
    root = write_demo(tmp_path, cfg)
    assert root.name == cfg.key()
    for split, n in (("train", 2), ("test", 1)):
        for name in DEMO_CLASSES:
            files = sorted((root / split / name).glob("*.png"))
            masks = sorted((root / "masks" / split / name).glob("*.png"))
            assert len(files) == n and [f.name for f in files] == [m.name for m in masks]
    prompts = json.loads((root / "classes.json").read_text())
    assert prompts == {n: class_prompt(n) for n in DEMO_CLASSES}
    meta = json.loads((root / "demo.json").read_text())
    assert meta["superclass"] == "bird" and meta["seed"] == 3
    stamp = (root / "demo.json").stat().st_mtime_ns
    assert write_demo(tmp_path, cfg) == root
    assert (root / "demo.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_bad_demo_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo class 'nope'"):
        render_demo_image("nope", 0)
    with pytest.raises(ValueError, match="split"):
        render_demo_image("quellan", 0, split="val")
    with pytest.raises(ValueError, match="size"):
        write_demo(tmp_path, DemoConfig(size=8))
