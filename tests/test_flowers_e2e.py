"""Real photos end to end with the shipped nano-SD: personalize -> generate -> train on flowers17.

The flowers are 224 px JPEGs of classes nano-SD never saw; every stage must take them through
the 64-px model and back (the synthetic images keep their source's size) with the same subset.
Short settings keep it to about a minute on 2 cores; the measured 5-shot run is in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffmix import experiment as ex


def test_flowers17_personalize_generate_train_with_nano(flowers17, tmp_path):
    cfg = ex.make_config(
        dataset=str(flowers17), shots=2, seeds=[0], arms=["baseline", "diff-mix"], model="nano",
        personalize_steps=4, personalize_batch_size=4, multiplier=1, num_inference_steps=4,
        generate_batch_size=12, strength=0.7, p=0.5, epochs=1, batch_size=8, arch="smallcnn",
        resolution=32, num_threads=2, train_repeats=1, generate_overrides={"score": False},
        train_overrides={"tensorboard": False},
    )  # fmt: skip
    out = tmp_path / "exp"
    results = ex.run_experiment(cfg, out)
    assert results["complete"] is True

    adapter = json.loads((out / "adapters" / "seed0" / "adapter.json").read_text())
    n_classes = len(adapter["class_tokens"])
    assert n_classes == 12
    assert len(adapter["subset"]["indices"]) == 2 * n_classes
    assert (out / "adapters" / "seed0" / "pytorch_lora_weights.safetensors").is_file()

    syn = out / "synthetic" / "diff-mix-seed0"
    rows = [json.loads(x) for x in (syn / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * n_classes  # multiplier 1 x the 2-shot subset
    for r in rows:
        assert r["source_class"] != r["target_class"]
        assert r["strength"] == 0.7 and r["soft_label"][r["target_class"]] > 0.5
        im = Image.open(syn / r["file_name"])
        im.load()
        assert im.size == (224, 224) and im.mode == "RGB"  # back at the source's size
        assert float(np.asarray(im, dtype=np.float32).std()) > 5  # a picture, not a flat fill
    for arm in ("baseline", "diff-mix"):
        acc = results["arms"][arm]["runs"][0]["test_accuracy"]
        assert 0.0 <= acc <= 1.0
    assert results["arms"]["diff-mix"]["runs"][0]["synthetic_images"] == 2 * n_classes
    assert Path(results["out"]).resolve() == out.resolve()
