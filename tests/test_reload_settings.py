"""A reload of Generate, Personalize or Train shows the watched run's settings (issue 16 item 5):
the page's values -> the run's config.json -> the page's values give the same command line, and
each page refills its widgets from the watched run when it loads or another run is picked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from diffmix.settings import Settings
from pages import dataset, generate, personalize, train


@pytest.fixture
def private(workspace_home: Path, tiny_sd_dir: Path) -> Settings:
    return Settings.from_env(
        {"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": str(tiny_sd_dir)}
    )


@pytest.fixture(scope="module")
def fewshot() -> dict[str, Any]:
    return dataset.load_selection("demo", subset="few-shot", shots=5, seed=0).selection


def test_generate_settings_round_trip(fewshot, private) -> None:
    values = {"strategy": "real-mix", "multiplier": 3, "strengths": "0.3, 0.5", "targets": "tail",
              "confusion_run": None, "filter_bottom": 0.0, "limit": 7, "steps": 12, "seed": 4,
              "score": False}  # fmt: skip
    cfg = generate.generate_config(fewshot, None, **values, settings=private)
    restored = dict(zip(generate.RESTORED_PARAMS, generate.settings_from_config(
        cfg.model_dump()), strict=True))  # fmt: skip
    assert restored["strengths"] == "0.3, 0.5" and restored["steps"] == 12  # not the defaults
    again = generate.generate_config(fewshot, None, **{**values, **restored}, settings=private)
    assert generate.generate_args(again) == generate.generate_args(cfg)


def test_personalize_settings_round_trip(fewshot, private) -> None:
    from diffmix.personalize import PersonalizeConfig

    names = ("model", "steps", "rank", "lr", "seed", "sample_every", "batch_size", "ti_only",
             "class_balanced")  # fmt: skip
    page = dict(zip(names, ("nano", 120, 4, 2e-3, 0, 40, 4, True, "on"), strict=True))
    args = personalize.personalize_args(fewshot, **page, settings=private)
    cfg = PersonalizeConfig(model="nano", steps=120, rank=4, lr=2e-3, sample_every=40,
                            batch_size=4, ti_only=True, class_balanced=True, shots=5).resolved()  # fmt: skip
    restored = dict(zip(names, personalize.settings_from_config(cfg.model_dump()), strict=True))
    assert restored["steps"] == 120 and restored["class_balanced"] == "on"
    assert personalize.personalize_args(fewshot, **restored, settings=private) == args
    # the resolved default (off on a few-shot subset) shows as "auto", not a forced "off"
    auto = PersonalizeConfig(model="nano", shots=5).resolved().model_dump()
    assert personalize.settings_from_config(auto)[-1] == next(iter(personalize.BALANCED_CHOICES))


def test_train_settings_round_trip(fewshot, private) -> None:
    from diffmix.classify import TrainConfig

    names = ("synthetic", "p", "gamma", "arch", "epochs", "resolution", "batch_size", "lr", "seed",
             "threads", "mix", "balanced_sampling", "loss")  # fmt: skip
    page = dict(zip(names, ([], 0.0, 0.5, "smallcnn", 7, 48, 16, 0.02, 3, 1, "mixup", True,
                            "drw"), strict=True))  # fmt: skip
    args = train.train_args(fewshot, **page, settings=private)
    cfg = TrainConfig(dataset="demo", shots=5, arch="smallcnn", epochs=7, resolution=48,
                      batch_size=16, lr=0.02, seed=3, num_threads=1, mix="mixup",
                      balanced_sampling=True, loss="drw").resolved()  # fmt: skip
    restored = dict(zip(names, train.settings_from_config(cfg.model_dump()), strict=True))
    assert restored["epochs"] == 7 and restored["mix"] == "mixup"
    assert train.train_args(fewshot, **restored, settings=private) == args


@pytest.mark.parametrize("page", [generate, personalize, train])
def test_pages_refill_settings_on_load_and_pick(page, private) -> None:
    """Each page's load chain and run picker end with the listener that refills the settings."""
    blocks = page.build(private)
    restore = [fn for fn in blocks.fns.values() if fn.name == "restore_settings"]
    assert len(restore) == 2  # after the page opens, and after another run is picked
    ids = {getattr(o, "elem_id", None) for o in restore[0].outputs}
    prefix = {"generate": "gen", "personalize": "pz", "train": "tn"}[page.STAGE]
    assert f"{prefix}-seed" in ids
