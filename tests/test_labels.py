"""Labels training reads from synthetic folders follow each row's rule; batch mixing probability."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix.classify import TrainConfig, read_synthetic
from diffmix.classify.losses import synthetic_targets
from diffmix.data import load_dataset
from diffmix.generate import GenerateConfig, generate, read_rows
from diffmix.labels import row_label, soft_label
from diffmix.mixing import mix_batch

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return write_color_folder(tmp_path_factory.mktemp("colors") / "colors")


def _float(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def _measured_share(row, ds, img: np.ndarray) -> float:
    """The partner's share of ``img``, measured from the pixels of its source and partner."""
    src = np.asarray(ds.image(row["source_index"]).convert("RGB"), dtype=np.float64)
    par = np.asarray(ds.image(row["partner_index"]).convert("RGB"), dtype=np.float64)
    if row["strategy"] == "mixup":  # least squares of img - src = lam (par - src)
        d = par - src
        return float(((img - src) * d).sum() / (d * d).sum())
    mask = (img != src).any(-1)  # the pasted box: where the image left its source
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    area = (cols[-1] - cols[0] + 1) * (rows[-1] - rows[0] + 1)
    assert np.array_equal(img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
                          par[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])  # fmt: skip
    return area / float(img.shape[0] * img.shape[1])


def test_mixup_and_cutmix_folders_train_on_their_pixel_share(colors, tiny_sd_dir, tmp_path):
    ds = load_dataset(str(colors), split="train")
    for strategy, strength in (("mixup", 0.3), ("cutmix", 0.3)):
        out = tmp_path / strategy
        generate(GenerateConfig(dataset=str(colors), model=str(tiny_sd_dir), strategy=strategy,
                                multiplier=2, strengths=[strength], score=False), out)  # fmt: skip
        rows = {str(out / r["file_name"]): r for r in read_rows(out / "metadata.jsonl")}
        assert {r["label_rule"] for r in rows.values()} == {"pixel-share"}
        syn = read_synthetic([out], NAMES, gamma=0.5)  # the run's γ must not touch these rows
        assert len(syn) == len(rows) == 24
        mixed = 0
        for path, target in zip(syn.paths, syn.targets, strict=True):
            row = rows[path]
            share = _measured_share(row, ds, _float(path))
            src, tgt = NAMES.index(row["source_class"]), NAMES.index(row["target_class"])
            expected = np.zeros(3)
            expected[src] += 1 - share
            expected[tgt] += share
            np.testing.assert_allclose(target.numpy(), expected, atol=0.01)
            mixed += src != tgt
        assert mixed >= 6  # some rows really mix two classes


def test_diffmix_rows_follow_the_gamma_rule(colors, tiny_sd_dir, tmp_path):
    from diffmix.personalize import PersonalizeConfig, personalize

    adapter = personalize(PersonalizeConfig(dataset=str(colors), shots=2, model=str(tiny_sd_dir),
                                            steps=2, batch_size=2, rank=4), tmp_path / "adapter")  # fmt: skip
    out = tmp_path / "diffmix"
    generate(GenerateConfig(dataset=str(colors), model=str(tiny_sd_dir), strategy="diff-mix",
                            adapter=str(adapter), shots=2, multiplier=2, strengths=[0.5, 0.9],
                            num_inference_steps=2, score=False), out)  # fmt: skip
    rows = read_rows(out / "metadata.jsonl")
    assert {r["label_rule"] for r in rows} == {"diffmix-gamma"}
    for gamma in (0.5, 1.0):
        syn = read_synthetic([out], NAMES, gamma=gamma)
        by_path = {str(out / r["file_name"]): r for r in rows}
        for path, target in zip(syn.paths, syn.targets, strict=True):
            r = by_path[path]
            s, a, b = r["strength"], NAMES.index(r["source_class"]), NAMES.index(r["target_class"])
            assert a != b
            assert target[a].item() == pytest.approx(1 - s**gamma)
            assert target[b].item() == pytest.approx(s**gamma)


def test_old_folders_without_label_rule_are_inferred_and_said(
    colors, tiny_sd_dir, tmp_path, caplog
):
    out = tmp_path / "old"
    generate(GenerateConfig(dataset=str(colors), model=str(tiny_sd_dir), strategy="cutmix",
                            multiplier=1, strengths=[0.3], score=False), out)  # fmt: skip
    new = read_synthetic([out], NAMES, gamma=0.5)
    meta = out / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label_rule"}) + "\n"
                            for r in rows))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="diffmix.classify.data"):
        old = read_synthetic([out], NAMES, gamma=0.5)
    assert torch.equal(old.targets, new.targets)
    assert "inferred from each row's strategy" in caplog.text


def test_row_label_rules_and_errors():
    label_of = {n: i for i, n in enumerate(NAMES)}
    row = {"source_class": "red", "target_class": "blue", "strength": 0.64}
    np.testing.assert_allclose(row_label({**row, "strategy": "diff-mix"}, label_of, 0.5),
                               soft_label(0, 2, 0.64, 0.5, num_classes=3))  # fmt: skip
    np.testing.assert_allclose(row_label({**row, "label_rule": "hard"}, label_of, 0.5), [0, 0, 1])
    stored = {**row, "label_rule": "pixel-share", "soft_label": {"red": 0.75, "blue": 0.25}}
    np.testing.assert_allclose(row_label(stored, label_of, 0.5), [0.75, 0, 0.25])
    with pytest.raises(ValueError, match="label_rule 'magic'"):
        row_label({**row, "label_rule": "magic"}, label_of, 0.5)
    with pytest.raises(ValueError, match="sum to"):
        row_label({**stored, "soft_label": {"red": 0.5}}, label_of, 0.5)


def test_batch_mixing_probability_defaults_to_the_authors_half():
    assert TrainConfig().mix_prob == 0.5
    x = torch.rand(4, 3, 8, 8)
    y = torch.eye(4)
    mixed = 0
    for seed in range(200):
        xm, ym = mix_batch(x, y, "mixup", 1.0, torch.Generator().manual_seed(seed), prob=0.5)
        mixed += not torch.equal(ym, y)
    assert 70 < mixed < 130  # Binomial(200, 0.5): 100 ± 7
    for kind in ("mixup", "cutmix"):
        g = torch.Generator().manual_seed(0)
        assert mix_batch(x, y, kind, 1.0, g, prob=0.0)[1] is y
    with pytest.raises(ValueError, match="1.5"):
        mix_batch(x, y, "mixup", 1.0, torch.Generator(), prob=1.5)


def test_authors_synthetic_label_options():
    y = torch.tensor([[0.3, 0.7, 0.0]])
    assert synthetic_targets(y) is y  # default: as written
    np.testing.assert_allclose(synthetic_targets(y, 0.9).numpy(), [[0.27, 0.63, 0.0]], atol=1e-6)
    np.testing.assert_allclose(synthetic_targets(y, 1.0, 0.1).numpy(),
                               [[0.3 * 0.9 + 0.1 / 3, 0.7 * 0.9 + 0.1 / 3, 0.1 / 3]], atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="scale"):
        synthetic_targets(y, 1.2)
