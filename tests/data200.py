"""A CUB-shaped fake dataset for the 200-class UI tests: 200 classes of small generated images.

No diffusion model is needed: the synthetic folder is made by the ``mixup`` strategy (pixel
blends of real images), with scores filled in by a seeded generator so that sorting, filters and
histograms have something to show (``score=False`` skips fitting a judge on 200 classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 200
_ADJ = ("Black_footed", "Laysan", "Sooty", "Crested", "Least", "Red_winged", "Rusty", "Yellow_headed",
        "Brewer", "Gray_crowned", "Painted", "Bronzed", "Shiny", "Indigo", "Lazuli", "Pied_billed",
        "Chestnut_sided", "Cape_May", "Western", "Eastern")  # fmt: skip
_BIRD = ("Albatross", "Auklet", "Blackbird", "Bunting", "Cowbird", "Cuckoo", "Finch", "Flycatcher",
         "Grebe", "Warbler")  # fmt: skip


def class_names(n: int = NUM_CLASSES) -> list[str]:
    """CUB-like names ``001.Black_footed_Albatross`` ... (long, with a numeric prefix)."""
    return [f"{i + 1:03d}.{_ADJ[i % len(_ADJ)]}_{_BIRD[(i // len(_ADJ)) % len(_BIRD)]}"
            for i in range(n)]  # fmt: skip


def write_dataset(root: Path, *, per_class: int = 3, size: int = 24, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` noisy images of a colour of its own per class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(class_names()):
        rgb = np.array([(37 * k) % 256, (91 * k + 60) % 256, (151 * k + 120) % 256], float)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rgb + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def write_mixup_folder(dataset: Path, out: Path, *, multiplier: int = 1, seed: int = 0) -> Path:
    """A synthetic folder made by ``diffmix generate`` with the mixup strategy (no model), its
    rows then given seeded faithfulness / diversity scores and 10 % marked ``kept: false``."""
    from diffmix.generate import GenerateConfig, generate

    cfg = GenerateConfig(dataset=str(dataset), strategy="mixup", multiplier=multiplier,
                         strengths=[0.3, 0.5, 0.7], score=False, seed=seed)  # fmt: skip
    generate(cfg, out)
    meta = out / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    for r in rows:
        r["faithfulness"] = float(rng.beta(2, 2))
        r["diversity"] = float(rng.beta(2, 5))
        r["judge"] = "smallcnn"
        r["kept"] = bool(rng.random() >= 0.1)
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
