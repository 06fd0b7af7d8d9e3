"""The Train page without a browser: arguments, the comparison of seeds, live figures.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pageutil import _fake_synthetic, _name  # tests/ is on sys.path under pytest

from diffmix.settings import Settings
from pages import train


def test_train_args_follow_the_selection(fewshot: dict, private: Settings) -> None:
    syn = _fake_synthetic(_name("syn"), fewshot["class_names"], owner=None)
    args = train.train_args(fewshot, synthetic=[syn.name], p=0.2, gamma=0.5, arch="smallcnn",
                            epochs=2, resolution=32, seed=4, threads=1, settings=private)  # fmt: skip
    from diffmix import cli

    ns = cli.build_parser().parse_args(["train", "--out", "x", *args])
    assert (ns.spec, ns.arch, ns.epochs, ns.resolution, ns.seed) == ("demo", "smallcnn", 2, 32, 4)
    assert (ns.shots, ns.subset_seed, ns.p, ns.gamma, ns.num_threads) == (5, 0, 0.2, 0.5, 1)
    assert ns.synthetic == str(syn)
    # the baseline: p has nothing to replace with and is left out
    base = train.train_args(fewshot, synthetic=[], p=0.2, arch="smallcnn", settings=private)
    assert "--p" not in base and "--synthetic" not in base
    # the page's default backbone is "auto": the train command's rule by dataset decides
    auto = train.train_args(fewshot, synthetic=[], settings=private)
    assert "--arch" not in auto and "--resolution" not in auto
    assert train.run_prefix("smallcnn", [], "none") == "smallcnn-baseline"
    assert train.run_prefix("resnet18", ["s"], "none") == "resnet18-diffmix"


def test_train_args_errors(fewshot: dict, private: Settings, public: Settings) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet1'"):
        train.train_args(fewshot, arch="resnet1", settings=private)
    other = _fake_synthetic(_name("other"), ["x", "y"], owner=None, n=2)
    with pytest.raises(ValueError, match="made for other classes"):
        train.train_args(fewshot, synthetic=[other.name], arch="smallcnn", settings=private)
    with pytest.raises(PermissionError):
        train.train_args(fewshot, synthetic=[other.name], arch="smallcnn", settings=public,
                         owner="z" * 24)  # fmt: skip


def _record(name: str, seed: int, acc: float, **cfg: Any) -> dict[str, Any]:
    config = {"dataset": "demo", "shots": 5, "imbalance": None, "arch": "smallcnn", "epochs": 2,
              "resolution": 32, "synthetic": [], "p": 0.0, "gamma": 0.5, "mix": "none",
              "seed": seed, "subset_seed": 0, "num_threads": 1, **cfg}  # fmt: skip
    return {"name": name, "config": config,
            "metrics": {"test_accuracy": acc, "mean_class_accuracy": acc - 0.01}}  # fmt: skip


def test_comparison_groups_seeds_with_mean_and_std() -> None:
    records = [
        _record("b0", 0, 0.50), _record("b1", 1, 0.60, num_threads=2),
        _record("d0", 0, 0.70, synthetic=["/w/synthetic/s1"], p=0.1),
        _record("d1", 1, 0.80, synthetic=["/other/path/s1"], p=0.1),
        _record("m0", 0, 0.55, mix="mixup"),
    ]  # fmt: skip
    table = train.comparison_table(records)
    assert list(table.columns) == train.COMPARE_COLUMNS
    rows = {r["setup"]: r for r in table.to_dict("records")}
    assert set(rows) == {"baseline", "synthetic (s1) p=0.1 γ=0.5", "mixup"}
    assert rows["baseline"]["test accuracy (%)"] == "55.0 ± 7.1"
    assert rows["baseline"]["seeds"] == "0, 1" and rows["baseline"]["runs"] == "b0, b1"
    assert rows["synthetic (s1) p=0.1 γ=0.5"]["test accuracy (%)"] == "75.0 ± 7.1"
    assert rows["mixup"]["test accuracy (%)"] == "55.0"
    assert table.iloc[0]["setup"].startswith("synthetic")  # best first
    lt = train.comparison_table([_record("l", 0, 0.5, shots=None, imbalance=0.1)])
    assert lt.iloc[0]["dataset"] == "demo (long-tail 0.1)"
    assert train.comparison_table([]).empty


def test_live_figures_from_a_run_folder(tmp_path: Path) -> None:
    from diffmix.runs import RunDir

    run = RunDir(tmp_path / "r")
    names = [f"c{i}" for i in range(3)]
    run.write_config({"dataset": "demo"})
    curves, per_class, conf = train.live_figures(run.path)
    assert len(curves.data[0].x) == 0 and not conf.data
    run.event(
        "epoch", epoch=1, train_loss=2.0, test_accuracy=0.3, per_class_accuracy=[0.1, 0.2, 0.6]
    )
    run.event(
        "epoch", epoch=2, train_loss=1.5, test_accuracy=0.4, per_class_accuracy=[0.2, 0.4, 0.6]
    )
    (run.path / "confusion.json").write_text(json.dumps({"class_names": names,
                                                         "matrix": [[1, 0, 0], [0, 2, 1], [0, 0, 3]]}))  # fmt: skip
    curves, per_class, conf = train.live_figures(run.path)
    assert list(curves.data[0].y) == [2.0, 1.5] and list(curves.data[1].y) == [30.0, 40.0]
    assert list(per_class.data[0].x) == names and list(per_class.data[0].y) == [20.0, 40.0, 60.0]
    assert "epoch 2" in per_class.layout.title.text
    assert conf.data[0].type == "heatmap" and list(conf.data[0].z[1]) == [0, 2, 1]
    # a test split without images of a class: its accuracy is None (was a TypeError on every
    # poll of train_status)
    run.event("epoch", epoch=3, train_loss=1.0, test_accuracy=0.5,
              per_class_accuracy=[0.5, None, 1.0])  # fmt: skip
    _, per_class, _ = train.live_figures(run.path)
    assert list(per_class.data[0].y) == [50.0, None, 100.0]
